"""`edge demo` and `edge simulate` as a newcomer runs them: real processes, real Mosquitto brokers."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from chirpstack_api import integration
from click.testing import CliRunner
from paho.mqtt.enums import CallbackAPIVersion

from edge.cli import main
from edge.model import Uplink
from edge.sources.chirpstack_events import parse

pytestmark = pytest.mark.mosquitto
REPO = Path(__file__).resolve().parents[2]


def test_cli_demo_shows_records_arriving_and_its_status_hint_works() -> None:
    done = subprocess.run([sys.executable, "-m", "edge", "demo", "--seconds", "2", "--devices", "2", "--rate", "5"],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "demo OK: every uplink arrived upstream as SenML." in out
    assert "sent 10  arrived upstream 10  missing 0" in out
    # One presentation everywhere: °C, and RSSI in dBm as status and watch show it (SenML sends dBW).
    assert re.search(r"upstream lorawan/a81758fffe000000 +temperature=[\d.]+ °C", out)
    assert re.search(r"upstream lorawan/a81758fffe000001/link +fcnt=.*rssi=-\d+(\.\d+)? dBm", out)
    hint = re.search(r"Inspect the buffer: (\S+) status --config (\S+)", out)
    assert hint, out
    config = hint
    try:
        # The hint works as printed, with `edge` not on PATH (a fresh `bash scripts/demo`).
        status = subprocess.run([hint.group(1), "status", "--json", "--config", hint.group(2)], capture_output=True,
                                text=True, timeout=60, env={"PATH": "/usr/bin:/bin"}, check=False)
        assert status.returncode == 0, status.stdout + status.stderr
        data = json.loads(status.stdout)
        assert data["counters"]["received"] == 10 and data["counters"]["decoded"] == 10
        assert {d["dev_eui"] for d in data["devices"]} == {"a81758fffe000000", "a81758fffe000001"}
    finally:
        shutil.rmtree(Path(config.group(2)).parent, ignore_errors=True)


def test_cli_simulate_protobuf_publishes_chirpstack_uplinks(broker_factory, tmp_path: Path) -> None:
    broker = broker_factory()
    got: list[tuple[str, bytes]] = []
    subscribed = threading.Event()
    sub = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="sim-test-viewer")
    sub.on_message = lambda c, u, m: got.append((m.topic, bytes(m.payload)))
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.on_connect = lambda c, u, f, r, p: c.subscribe("application/+/device/+/event/+", qos=1)
    sub.connect(broker.host, broker.port)
    sub.loop_start()
    try:
        assert subscribed.wait(10)
        log = tmp_path / "sent.jsonl"
        result = CliRunner().invoke(main, ["simulate", "--url", broker.url, "-n", "3", "--count", "6", "--rate", "0",
                                           "--protobuf", "--seed", "4", "--log", str(log)])
        assert result.exit_code == 0 and "sent 6 uplinks from 3 devices" in result.output, result.output
        sent = [json.loads(line) for line in log.read_text().splitlines()]
        assert len(sent) == 6
        end = time.monotonic() + 10
        while len(got) < 6 and time.monotonic() < end:
            time.sleep(0.05)
        assert len(got) == 6
        for (topic, payload), s in zip(got, sent, strict=True):
            event = integration.UplinkEvent.FromString(payload)  # the real chirpstack-api class
            assert event.deduplication_id == s["uplink_id"] and event.device_info.dev_eui == s["dev_eui"]
            parsed = parse(topic, payload, 0.0)
            assert isinstance(parsed, Uplink) and parsed.payload.hex() == s["payload"]
            assert parsed.device.tags["decoder"] == "elsys/ers"
    finally:
        sub.loop_stop()
        sub.disconnect()


@pytest.mark.parametrize(("args", "message"), [
    (["--url", "mqtts://127.0.0.1:8883"], "use mqtt://host[:port]"),
    (["--url", "mqtt://127.0.0.1:99999"], "Port out of range"),
    (["--devices", "0"], "0 is not in the range"),
    (["--rate", "-1"], "is not in the range"),
])
def test_cli_simulate_bad_arguments_are_usage_errors(args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["simulate", *args])
    assert result.exit_code == 2 and message in result.output


def test_cli_simulate_unreachable_broker_is_a_clear_error() -> None:
    from edge.broker import free_port

    result = CliRunner().invoke(main, ["simulate", "--url", f"mqtt://127.0.0.1:{free_port()}", "--count", "1"])
    assert result.exit_code == 1
    assert "error: cannot reach the MQTT broker at 127.0.0.1:" in result.output and "Traceback" not in result.output
