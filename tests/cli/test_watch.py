"""`edge watch` as a real process against a real ChirpStack-side broker fed by the simulator."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge.simulate import APPLICATION_ID, SentUplink, Simulator, dev_eui_of, publish

pytestmark = pytest.mark.mosquitto
REPO = Path(__file__).resolve().parents[2]


class Watch:
    """`edge watch` in a child process; waits until it has subscribed, so no event is missed."""

    def __init__(self, cfg: Path, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "edge", "watch", "--config", str(cfg), *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        self.stderr: list[str] = []
        self.ready = threading.Event()
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        if not self.ready.wait(20):
            self.proc.kill()
            raise AssertionError("edge watch did not subscribe:\n" + "".join(self.stderr))

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)
            if line.startswith("watching "):
                self.ready.set()

    def lines(self, timeout: float = 30) -> list[str]:
        """Every stdout line, after the process ended by itself (--count or --timeout)."""
        out, _ = self.proc.communicate(timeout=timeout)
        self._reader.join(5)
        assert self.proc.returncode == 0, "".join(self.stderr)
        return out.splitlines()


def _elsys_values(sent: SentUplink) -> tuple[str, str]:
    """The temperature and humidity the Elsys payload of `sent` carries, as watch prints them."""
    temperature = int.from_bytes(sent.payload[1:3], "big", signed=True) / 10
    return f"temperature={temperature:.6g} °C", f"humidity={sent.payload[4]} %RH"


def test_watch_prints_decoded_uplinks_with_units_and_radio(broker_factory, make_config):
    chirpstack, upstream = broker_factory(), broker_factory()
    watch = Watch(make_config(chirpstack.url, upstream.url), "--count", "6", "--timeout", "20")
    sent: list[SentUplink] = []
    publish(chirpstack.host, chirpstack.port, Simulator(3, seed=11), 6, None, sent.append)
    lines = watch.lines()
    assert len(lines) == 6, lines
    for s, line in zip(sent, lines, strict=True):  # one broker connection: order is kept
        temperature, humidity = _elsys_values(s)
        assert f"  {s.dev_eui}  ers-{int(s.dev_eui[-6:], 16):04d}  elsys/ers  " in line
        assert temperature in line and humidity in line
        assert " rssi=" in line and " snr=" in line and " sf=7" in line and "gw=0016c001f153a14" in line
        assert float(line.split("delay=", 1)[1].split("s", 1)[0]) < 10
        # Radio data before the values, so it keeps its columns whatever the values' width.
        assert line.index(" rssi=") < line.index("delay=") < line.index(temperature)


def test_watch_filters_by_device_case_insensitive(broker_factory, make_config):
    chirpstack, upstream = broker_factory(), broker_factory()
    wanted = dev_eui_of(1)
    watch = Watch(make_config(chirpstack.url, upstream.url), "--device", wanted.upper(), "--count", "3",
                  "--timeout", "20")
    publish(chirpstack.host, chirpstack.port, Simulator(3, seed=12), 9, None)
    lines = watch.lines()
    assert len(lines) == 3 and all(f"  {wanted}  " in line for line in lines), lines


@pytest.mark.parametrize(("application", "shown"), [("municipal-sensors", 4), (APPLICATION_ID, 4), ("other-app", 0)])
def test_watch_filters_by_application_name_or_id(broker_factory, make_config, application, shown):
    chirpstack, upstream = broker_factory(), broker_factory()
    watch = Watch(make_config(chirpstack.url, upstream.url), "--application", application, "--timeout", "4")
    publish(chirpstack.host, chirpstack.port, Simulator(2, seed=13), 4, None)
    assert len(watch.lines()) == shown


def test_watch_raw_shows_the_payload_in_hex(broker_factory, make_config):
    chirpstack, upstream = broker_factory(), broker_factory()
    watch = Watch(make_config(chirpstack.url, upstream.url), "--raw", "--count", "1", "--timeout", "20")
    sent: list[SentUplink] = []
    publish(chirpstack.host, chirpstack.port, Simulator(1, seed=14), 1, None, sent.append)
    (line,) = watch.lines()
    assert f"fport=5 fcnt=1 payload={sent[0].payload.hex()}" in line


def test_watch_shows_join_events_and_warns_on_malformed_messages(broker_factory, make_config):
    chirpstack, upstream = broker_factory(), broker_factory()
    watch = Watch(make_config(chirpstack.url, upstream.url), "--count", "2", "--timeout", "20")
    dev_eui = dev_eui_of(7)
    join = {"deviceInfo": {"devEui": dev_eui, "applicationId": APPLICATION_ID, "applicationName": "municipal-sensors",
                           "deviceName": "ers-0007"},
            "devAddr": "26000007", "time": "2026-01-01T12:00:00+00:00"}
    client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="test-watch-publisher")
    client.connect(chirpstack.host, chirpstack.port)
    client.loop_start()
    prefix = f"application/{APPLICATION_ID}/device/{dev_eui}/event"
    client.publish(f"{prefix}/join", orjson.dumps(join), qos=1).wait_for_publish(5)
    client.publish(f"{prefix}/up", b"this is not json", qos=1).wait_for_publish(5)
    client.disconnect()
    client.loop_stop()
    lines = watch.lines()
    assert f"  {dev_eui}  ers-0007  JOIN  devAddr=26000007" in lines[0]
    assert "WARN malformed message on" in lines[1] and f"{prefix}/up" in lines[1]


def test_watch_does_not_take_over_the_service_session(broker_factory, make_config, edge_process):
    chirpstack, upstream = broker_factory(), broker_factory()
    cfg = make_config(chirpstack.url, upstream.url)
    edge = edge_process(cfg)
    edge.start()
    edge.wait_connected()
    watch = Watch(cfg, "--count", "5", "--timeout", "20")
    publish(chirpstack.host, chirpstack.port, Simulator(2, seed=15), 5, None)
    assert len(watch.lines()) == 5
    time.sleep(0.5)
    # The gateway kept its connection (a client id clash would have kicked it off) and stored all five.
    assert "Lost ChirpStack broker" not in edge.log.read_text()
    assert edge.terminate() == 0
    from edge.buffer import Buffer

    buffer = Buffer(cfg.parent / "buffer.sqlite", readonly=True)
    assert buffer.counters()["received"] == 5
    buffer.close()


def test_watch_strips_terminal_control_sequences_from_device_data(broker_factory, make_config):
    """A device name or gateway id holding escape codes or a newline reaches the technician's terminal inert."""
    chirpstack, upstream = broker_factory(), broker_factory()
    watch = Watch(make_config(chirpstack.url, upstream.url), "--count", "2", "--timeout", "20")
    client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="hostile-names")
    client.connect(chirpstack.host, chirpstack.port)
    client.loop_start()
    for n, (topic, body, _) in enumerate(Simulator(1, seed=9).events(2)):
        doc = orjson.loads(body)
        doc["deviceInfo"]["deviceName"] = "\x1b]0;owned\x07\x1b[2J\x1b[31mred\nFORGED LINE" if n == 0 else "ok"
        doc["rxInfo"][0]["gatewayId"] = "\x9b2Jgw\r" if n == 0 else "0016c001f153a14c"
        client.publish(topic, orjson.dumps(doc), qos=1).wait_for_publish(5)
    client.loop_stop()
    client.disconnect()
    lines = watch.lines()
    assert len(lines) == 2, lines
    assert not any(c in "".join(lines) for c in "\x1b\x07\x9b\r")
    assert "red\\nFORGED LINE" in lines[0] and not any(line.startswith("FORGED") for line in lines)


def test_watch_marks_samples_with_their_own_time() -> None:
    from edge.cli.watch import format_readings
    from edge.model import Reading

    readings = [Reading("volume", 123.456, "m3"), Reading("volume", 123.42, "m3", "history[1].volume", 996.0)]
    assert format_readings(readings, 1000.0) == "volume=123.456 m³ volume=123.42 m³@-4s"
