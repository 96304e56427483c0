"""Downlink commands from a destination: off by default, limited to its allow-list and sharing rules,
enqueued in ChirpStack through its gRPC API (real Mosquitto, real gRPC server)."""

from __future__ import annotations

import threading

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
        for command in commands:
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
