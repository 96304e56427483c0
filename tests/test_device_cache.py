"""The device registry cache in the pipeline: profile JS codecs with device variables, unknown devices
fetched once, and decoding that keeps working with ChirpStack's API gone (real gRPC server, real SQLite)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import orjson
import pytest
from chirpstack_api import api

from edge.buffer import Buffer
from edge.config import load_config
from edge.model import DecodeStatus
from edge.pipeline import Pipeline, wait_until
from edge.redecode import redecode
from edge.simulate import Simulator
from edge.sources.chirpstack_mqtt import Message
from tests.grpc_server import FakeChirpStack, State

TENANT = "52f14cd4-c6f1-4fbd-8f87-4025e1d49242"

PROFILE_JS = """
function decodeUplink(input) {
  var raw = (input.bytes[1] << 8) | input.bytes[2];
  return {data: {temperature: raw / 10 + Number(input.variables.offset || 0)}};
}
"""


def _uplinks(dev_index: int, count: int) -> list[Message]:
    """Simulated uplinks of one device, with the `decoder` tag removed so the profile decides."""
    sim = Simulator(dev_index + 1, seed=dev_index)
    out = []
    for topic, body, sent in sim.events(count * (dev_index + 1)):
        if sent.dev_eui.endswith(f"{dev_index:06x}"):
            doc = orjson.loads(body)
            del doc["deviceInfo"]["tags"]["decoder"]
            # A profile of our own, not one named after a TTN repository device (see native_for_profile).
            doc["deviceInfo"]["deviceProfileName"] = "Thermometer (JS)"
            out.append(Message(topic, orjson.dumps(doc), time.time()))
    return out


@pytest.fixture
def chirpstack_api():
    state = State()
    # The profile's tag `codec` names the field map of its codec's output (issue #13): here the
    # Elsys map, whose `temperature` is in °C as this codec's is.
    state.profiles["p-js"] = api.DeviceProfile(id="p-js", name="Thermometer (JS)",
                                               payload_codec_runtime=api.CodecRuntime.JS,
                                               payload_codec_script=PROFILE_JS,
                                               tags={"codec": "ttn:elsys/ers-codec"})
    state.add_device(TENANT, "app1", "a81758fffe000000", "p-js", variables={"offset": "100"})
    fake = FakeChirpStack(state).start()
    yield fake, state
    fake.stop()


@contextlib.contextmanager
def _cache_running(pipeline: Pipeline) -> Iterator[None]:
    """The device registry's worker (sync, periodic refresh, one-off fetches) as `edge run` runs it."""
    stop = threading.Event()
    worker = threading.Thread(target=pipeline.devices.run, args=(stop,), daemon=True)
    worker.start()
    try:
        yield
    finally:
        stop.set()
        worker.join(10)


def _config(make_config, tmp_path, fake):
    token = tmp_path / "api.token"
    token.write_text("secret-token\n")
    path = make_config("mqtt://127.0.0.1:1", "mqtt://127.0.0.1:2")
    text = path.read_text().replace(
        "reconnect_max_s = 1.0\n\n[buffer]",
        f'reconnect_max_s = 1.0\napi_url = "{fake.url}"\napi_token_file = "{token}"\n'
        f'tenant_id = "{TENANT}"\n\n[buffer]', 1)
    path.write_text(text)
    return load_config(path)


def test_device_cache_profile_js_codec_gets_device_variables(chirpstack_api, make_config, tmp_path):
    fake, _ = chirpstack_api
    cfg = _config(make_config, tmp_path, fake)
    pipeline = Pipeline(cfg)
    with _cache_running(pipeline):
        assert wait_until(lambda: pipeline.devices.last_sync_ok is not None, 10)
        msgs = _uplinks(0, 3)
        pipeline.handle(msgs)
        stored = pipeline.buffer.read(0, 10)
        assert len(stored) == 3
        for entry, msg in zip(stored, msgs, strict=True):
            payload_temp = int.from_bytes(_payload(msg)[1:3], "big") / 10
            assert [(r.name, r.unit) for r in entry.readings] == [("temperature", "Cel")]
            assert entry.readings[0].value == pytest.approx(payload_temp + 100)
        decoder = pipeline.buffer.db.execute("SELECT DISTINCT decoder FROM uplinks").fetchall()
        assert decoder == [("profile-js",)]


def test_device_cache_unknown_device_is_fetched_once_then_used(chirpstack_api, make_config, tmp_path):
    fake, state = chirpstack_api
    cfg = _config(make_config, tmp_path, fake)
    pipeline = Pipeline(cfg)
    with _cache_running(pipeline):
        assert wait_until(lambda: pipeline.devices.last_sync_ok is not None, 10)
        # Added in ChirpStack after the sync: the first uplink is not held back, the next is decoded.
        state.add_device(TENANT, "app1", "a81758fffe000001", "p-js", variables={"offset": "0"})
        first, *rest = _uplinks(1, 3)
        pipeline.handle([first])
        assert wait_until(lambda: pipeline.devices.hints("a81758fffe000001").profile_js != "", 10)
        pipeline.handle(rest)
        stored = pipeline.buffer.read(0, 10)
        assert [bool(e.readings) for e in stored] == [False, True, True]
        assert state.calls.count("DeviceService.Get") >= 1


def test_device_cache_serves_with_the_api_gone(chirpstack_api, make_config, tmp_path):
    fake, _ = chirpstack_api
    cfg = _config(make_config, tmp_path, fake)
    first = Pipeline(cfg)
    stop = threading.Event()
    worker = threading.Thread(target=first.devices.run, args=(stop,), daemon=True)
    worker.start()
    assert wait_until(lambda: first.devices.last_sync_ok is not None, 10)
    stop.set()
    worker.join(10)
    first.buffer.close()
    fake.stop()
    # A restart with ChirpStack's API unreachable: decoding still uses the cached profile codec.
    second = Pipeline(cfg)
    second.handle(_uplinks(0, 2))
    assert all(e.readings for e in second.buffer.read(0, 10))


def test_redecode_uses_the_device_cache_like_run(chirpstack_api, make_config, tmp_path):
    # An uplink that arrived before ChirpStack's API told us about its device stays undecoded;
    # `edge redecode` must then pick the decoder as `edge run` would: the profile's JS codec, with
    # the device's variables.
    fake, _ = chirpstack_api
    cfg = _config(make_config, tmp_path, fake)
    pipeline = Pipeline(cfg)
    msgs = _uplinks(0, 2)
    pipeline.handle(msgs)  # the cache has not synced yet: no hints, no decoder
    assert [e.readings for e in pipeline.buffer.read(0, 10)] == [[], []]
    with _cache_running(pipeline):
        assert wait_until(lambda: pipeline.devices.last_sync_ok is not None, 10)
    pipeline.buffer.close()
    fake.stop()  # the API is gone again: the cache in the buffer file is enough

    totals = redecode(cfg, dev_eui="a81758fffe000000")
    assert totals["seen"] == 2 and totals["decoded"] == 2, totals
    buffer = Buffer(cfg.buffer.path)
    try:
        fresh = [e for e in buffer.read(0, 10) if e.readings]
        assert len(fresh) == 2
        for entry, msg in zip(fresh, msgs, strict=True):
            assert entry.readings[0].value == pytest.approx(int.from_bytes(_payload(msg)[1:3], "big") / 10 + 100)
        assert buffer.db.execute("SELECT DISTINCT decoder FROM uplinks WHERE status = ?",
                                 (DecodeStatus.DECODED,)).fetchall() == [("profile-js",)]
    finally:
        buffer.close()


def _payload(msg: Message) -> bytes:
    import base64

    return base64.b64decode(orjson.loads(msg.payload)["data"])


def test_device_cache_retries_a_failed_sync_soon(chirpstack_api, make_config, tmp_path, monkeypatch):
    """ChirpStack still starting when `edge run` starts: the sync is retried with backoff, not an hour later."""
    import edge.device_cache

    fake, _ = chirpstack_api
    cfg = _config(make_config, tmp_path, fake)
    fake.stop()  # the port stays reserved for the restart below
    monkeypatch.setattr(edge.device_cache, "RETRY_SYNC_S", 0.05)
    pipeline = Pipeline(cfg)
    with _cache_running(pipeline):
        assert wait_until(lambda: pipeline.devices.failures >= 2, 20)
        assert "unreachable" in pipeline.devices.last_error and pipeline.devices.last_sync_ok is None
        fake.start()
        assert wait_until(lambda: pipeline.devices.last_sync_ok is not None, 20)
        assert pipeline.devices.failures == 0 and pipeline.devices.last_error == ""
        assert pipeline.devices.hints("a81758fffe000000").variables == {"offset": "100"}


def test_device_cache_periodic_refresh_picks_up_changes(chirpstack_api, make_config, tmp_path):
    fake, state = chirpstack_api
    _config(make_config, tmp_path, fake)
    path = tmp_path / "edge.toml"
    path.write_text(path.read_text().replace("[buffer]", "api_sync_interval_s = 1\n\n[buffer]", 1))
    pipeline = Pipeline(load_config(path))
    with _cache_running(pipeline):
        assert wait_until(lambda: pipeline.devices.hints("a81758fffe000000").variables == {"offset": "100"}, 10)
        state.devices["a81758fffe000000"].variables["offset"] = "-40"
        assert wait_until(lambda: pipeline.devices.hints("a81758fffe000000").variables == {"offset": "-40"}, 20)
        assert state.calls.count("TenantService.Get") >= 2  # a full sync ran again


def test_device_cache_unknown_device_asked_once_for_a_burst(chirpstack_api, make_config, tmp_path):
    """A device ChirpStack's API does not know: many uplinks, one Get; decoding never waits for it."""
    fake, state = chirpstack_api
    cfg = _config(make_config, tmp_path, fake)
    pipeline = Pipeline(cfg)
    with _cache_running(pipeline):
        assert wait_until(lambda: pipeline.devices.last_sync_ok is not None, 10)
        gets = state.calls.count("DeviceService.Get")  # the sync's own
        burst = _uplinks(2, 6)
        pipeline.handle(burst[:3])
        assert wait_until(lambda: state.calls.count("DeviceService.Get") == gets + 1, 10)
        pipeline.handle(burst[3:])
        assert wait_until(pipeline.devices._wanted.empty, 10)
        assert state.calls.count("DeviceService.Get") == gets + 1
        assert len(pipeline.buffer.read(0, 10)) == 6  # stored (undecoded, raw kept) without waiting for the API
