"""Downlink commands from a destination: off by default, limited to its allow-list and sharing rules,
enqueued in ChirpStack through its gRPC API (real Mosquitto, real gRPC server)."""

from __future__ import annotations

import threading
import time

import orjson
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge.config import load_config
from edge.pipeline import Pipeline, wait_until
from edge.simulate import dev_eui_of
from tests.grpc_server import FakeChirpStack, State

TENANT = "52f14cd4-c6f1-4fbd-8f87-4025e1d49242"

pytestmark = pytest.mark.mosquitto


def test_downlink_commands_only_for_allowed_and_covered_devices(broker_factory, make_config, tmp_path):
    chirpstack_mqtt, upstream = broker_factory(), broker_factory()
    state = State()
    for i in range(3):
        state.add_device(TENANT, "app1", dev_eui_of(i), "p1")
    api = FakeChirpStack(state).start()
    token = tmp_path / "token"
    token.write_text("secret-token\n")
    cfg_path = make_config(chirpstack_mqtt.url, upstream.url)
    text = cfg_path.read_text().replace(
        "reconnect_max_s = 1.0\n\n[buffer]",
        f'reconnect_max_s = 1.0\napi_url = "{api.url}"\napi_token_file = "{token}"\n'
        f'tenant_id = "{TENANT}"\n\n[buffer]', 1)
    text += (f'command_topic = "lorawan-edge/{{edge_id}}/command/down"\n'
             f'command_devices = ["{dev_eui_of(0)}", "{dev_eui_of(2)}"]\n'
             f'[upstream.share]\ndevices = ["{dev_eui_of(0)}", "{dev_eui_of(1)}"]\n')
    cfg_path.write_text(text)
    pipeline = Pipeline(load_config(cfg_path))
    stop = threading.Event()
    runner = threading.Thread(target=pipeline.run, args=(stop,), daemon=True)
    runner.start()
    try:
        assert wait_until(lambda: all(s.stats.connected for s in pipeline.sinks), 10)
        platform = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="city-platform")
        platform.connect(upstream.host, upstream.port)
        platform.loop_start()
        topic = "lorawan-edge/test/command/down"
        commands = [
            {"dev_eui": dev_eui_of(0), "fport": 10, "hex": "0102", "confirmed": True},  # allowed and covered
            {"dev_eui": dev_eui_of(1), "fport": 10, "hex": "ff"},  # covered, not in the allow-list
            {"dev_eui": dev_eui_of(2), "fport": 10, "hex": "ff"},  # allow-listed, not covered by the rules
            {"dev_eui": dev_eui_of(0), "fport": 300, "hex": "ff"},  # malformed
            {"dev_eui": dev_eui_of(0), "fport": 2, "object": {"valve": "open"}},  # allowed, JSON object
        ]
        for n, command in enumerate(commands):
            command |= {"id": f"cmd-{n}", "time": time.time()}
            platform.publish(topic, orjson.dumps(command), qos=1).wait_for_publish(5)
        platform.publish(topic, b"not json", qos=1).wait_for_publish(5)
        assert wait_until(lambda: len(state.enqueued) >= 2 and pipeline.commands.refused >= 4, 15)
        assert wait_until(lambda: pipeline.commands.enqueued == 2, 5)
        platform.loop_stop()
        platform.disconnect()
        assert [(e.dev_eui, e.f_port, e.data, e.confirmed) for e in state.enqueued] == [
            (dev_eui_of(0), 10, b"\x01\x02", True), (dev_eui_of(0), 2, b"", False)]
        assert state.enqueued[1].object == {"valve": "open"}
        assert pipeline.commands.refused == 4
    finally:
        stop.set()
        runner.join(15)
        api.stop()


def test_downlink_commands_are_off_by_default(make_config):
    pipeline = Pipeline(load_config(make_config("mqtt://127.0.0.1:1", "mqtt://127.0.0.1:2")))
    assert pipeline.commands is None
    assert all(getattr(s, "on_command", None) is None for s in pipeline.sinks)


def _command_pipeline(chirpstack_mqtt, upstream, api_url: str, make_config, tmp_path, extra: str = ""):
    token = tmp_path / "token"
    token.write_text("secret-token\n")
    cfg_path = make_config(chirpstack_mqtt.url, upstream.url)
    text = cfg_path.read_text().replace(
        "reconnect_max_s = 1.0\n\n[buffer]",
        f'reconnect_max_s = 1.0\napi_url = "{api_url}"\napi_token_file = "{token}"\n'
        f'tenant_id = "{TENANT}"\n\n[buffer]', 1)
    text += (f'command_topic = "lorawan-edge/{{edge_id}}/command/down"\n'
             f'command_devices = ["{dev_eui_of(0)}", "{dev_eui_of(1)}"]\n' + extra)
    cfg_path.write_text(text)
    return cfg_path


class _Running:
    """A Pipeline on a thread, with a platform client publishing commands to its upstream."""

    def __init__(self, cfg_path, upstream) -> None:
        self.pipeline = Pipeline(load_config(cfg_path))
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.pipeline.run, args=(self.stop,), daemon=True)
        self.upstream = upstream

    def __enter__(self) -> _Running:
        self.thread.start()
        assert wait_until(lambda: all(s.stats.connected for s in self.pipeline.sinks), 10)
        self.platform = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                                    client_id=f"city-platform-{time.monotonic_ns()}")
        self.platform.connect(self.upstream.host, self.upstream.port)
        self.platform.loop_start()
        return self

    def send(self, command: object, retain: bool = False) -> None:
        payload = command if isinstance(command, bytes) else orjson.dumps(command)
        self.platform.publish("lorawan-edge/test/command/down", payload, qos=1, retain=retain).wait_for_publish(5)

    def __exit__(self, *exc: object) -> None:
        self.platform.loop_stop()
        self.platform.disconnect()
        self.stop.set()
        self.thread.join(15)


def test_downlink_commands_hostile_ones_are_refused_good_ones_enqueued_once(broker_factory, make_config, tmp_path,
                                                                            caplog):
    """Retained, redelivered (also after a restart), stale, mistyped and oversized commands, real broker and API."""
    chirpstack_mqtt, upstream = broker_factory(), broker_factory()
    state = State()
    for i in range(2):
        state.add_device(TENANT, "app1", dev_eui_of(i), "p1")
    api = FakeChirpStack(state).start()
    cfg_path = _command_pipeline(chirpstack_mqtt, upstream, api.url, make_config, tmp_path,
                                 "command_max_age_s = 60\ncommand_max_per_hour = 3\n")
    dev0, dev1 = dev_eui_of(0), dev_eui_of(1)

    def cmd(n: str, **fields: object) -> dict[str, object]:
        return {"id": n, "time": time.time(), "dev_eui": dev0, "fport": 5, "hex": "01"} | fields

    def obj(n: str, value: object) -> dict[str, object]:
        return {k: v for k, v in cmd(n).items() if k != "hex"} | {"object": value}

    try:
        with _Running(cfg_path, upstream) as run:
            relay = run.pipeline.commands
            assert relay is not None
            # Retained: refused (else every reconnect enqueues it again), and cleared again.
            run.send(cmd("retained-1"), retain=True)
            assert wait_until(lambda: relay.refused == 1, 10)
            run.send(b"", retain=True)
            hostile = [
                cmd("stale", time=time.time() - 3600),
                cmd("future", time=time.time() + 3600),
                cmd("bool-port", fport=True),
                cmd("float-port", fport=2.9),
                cmd("string-confirmed", confirmed="false"),
                cmd("big-hex", hex="00" * 243),
                cmd("huge-hex", hex="00" * 25_000),
                obj("big-object", {f"k{i}": i for i in range(300)}),
                obj("deep-object", {"a": [[[[[[[[[1]]]]]]]]]}),
                cmd("unknown-field", confirm=True),
                {"time": time.time(), "dev_eui": dev0, "fport": 5, "hex": "01"},  # no id
                cmd("bad id with spaces"),
                b"\xff\xfe not json",
                b"[" * 5000,
            ]
            for command in hostile:
                run.send(command)
            good = cmd("good-1", hex="00" * 242, confirmed=True)
            run.send(good)
            run.send(good)  # the platform's redelivery: enqueued once
            assert wait_until(lambda: relay.enqueued == 1 and relay.duplicates == 1, 10)
            assert relay.refused == 1 + len(hostile)
            # Per-device rate limit: 3 an hour, the good one was the first.
            for n in range(3):
                run.send(cmd(f"rate-{n}"))
            run.send(cmd("other-device", dev_eui=dev1))
            assert wait_until(lambda: relay.enqueued == 4, 10)
            assert relay.refused == 2 + len(hostile)
        # A restart: the same command id redelivered is still recognised (ids live in the buffer).
        with _Running(cfg_path, upstream) as run:
            relay = run.pipeline.commands
            assert relay is not None
            run.send(good)
            run.send(cmd("after-restart", dev_eui=dev1))
            assert wait_until(lambda: relay.enqueued == 1 and relay.duplicates == 1, 10)
            assert relay.refused == 0, "the cleared retained command is not delivered again"
        assert [(e.dev_eui, e.f_port, len(e.data), e.confirmed) for e in state.enqueued] == [
            (dev0, 5, 242, True), (dev0, 5, 1, False), (dev0, 5, 1, False), (dev1, 5, 1, False),
            (dev1, 5, 1, False)]
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "Refused" in r.getMessage()]
        assert any("retained" in w for w in warnings)
        assert any("fport must be an integer" in w for w in warnings)
        assert any("confirmed must be true or false" in w for w in warnings)
        assert any("s old" in w for w in warnings)
        assert any("received before" in w for w in warnings)
    finally:
        api.stop()
