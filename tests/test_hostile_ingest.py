"""One message can only ever affect itself on the way in (issue #11): the event parser, the decoder
registry's bounds and cool-down, Pipeline.handle's isolation and duplicate memory, and decisions
that must not trust an event's own time. Real SQLite files, real decoders, a real JS engine."""

from __future__ import annotations

import base64
import math
import sqlite3
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.buffer import Buffer
from edge.buffer.adapters import BufferThinStore
from edge.config import Config, ShareRules, parse_config
from edge.decoding import limits
from edge.decoding.base import DecodeResult, DeviceContext, Field
from edge.decoding.builtin import builtin_decoders
from edge.decoding.normalize import leaves
from edge.decoding.registry import NO_HINTS, CoolDown, DecoderRegistry, DeviceHints
from edge.formats.share import ShareFilter
from edge.model import DecodeStatus, DeviceEvent, DeviceInfo, Entry, Malformed, RadioInfo, Reading, Uplink
from edge.pipeline import Pipeline
from edge.simulate import Simulator
from edge.sources import chirpstack_events
from edge.sources.chirpstack_events import parse
from edge.sources.chirpstack_mqtt import Message
from tests.hostile_events import dated, deep_json, hostile_catalogue

RECEIVED = 1_800_000_000.0
UP = "application/17c82e96-be03-4f38-aef3-f83d48582d97/device/0101010101010101/event/up"
CATALOGUE = hostile_catalogue()


def good_doc(seed: int = 1) -> dict[str, Any]:
    _, body, _ = next(Simulator(1, seed=seed).events(1))
    doc: dict[str, Any] = orjson.loads(body)
    return doc


# -- the event parser ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(CATALOGUE))
def test_every_hostile_kind_is_malformed_with_a_bounded_reason_and_payload(name: str) -> None:
    topic, payload = CATALOGUE[name](3)
    event = parse(topic, payload, RECEIVED)
    assert isinstance(event, Malformed), (name, event)
    assert 0 < len(event.error) <= chirpstack_events.MAX_REASON + 80
    assert event.payload == payload[:chirpstack_events.MAX_KEPT_BYTES]
    assert "\n" not in event.error


def test_data_above_max_payload_bytes_is_malformed_and_says_which_setting() -> None:
    doc = good_doc()
    doc["data"] = base64.b64encode(bytes(300)).decode()
    event = parse(UP, orjson.dumps(doc), RECEIVED)
    assert isinstance(event, Malformed)
    assert "more than 256" in event.error and "chirpstack.max_payload_bytes" in event.error
    ok = parse(UP, orjson.dumps(doc), RECEIVED, max_payload_bytes=512)
    assert isinstance(ok, Uplink) and ok.payload == bytes(300)
    doc["data"] = base64.b64encode(bytes(242)).decode()  # the LoRaWAN maximum passes by default
    assert isinstance(parse(UP, orjson.dumps(doc), RECEIVED), Uplink)


def test_many_values_under_the_size_bound_are_malformed() -> None:
    doc = good_doc()
    doc["object"] = {"v": list(range(20_000))}  # ~110 KB, under the message bound
    event = parse(UP, orjson.dumps(doc), RECEIVED)
    assert isinstance(event, Malformed) and "more than 10000 values" in event.error


@pytest.mark.parametrize(("field", "value", "needle"), [
    ("fPort", 256, "fPort is out of range"),
    ("fPort", -1, "fPort is out of range"),
    ("fPort", 1.5, "fPort is not an integer"),
    ("fPort", True, "fPort is not an integer"),
    ("fCnt", 2**40, "fCnt is out of range"),
    ("time", "x" * 10_000, "time is not an RFC 3339 time"),
    ("time", "10000-01-01T00:00:00Z", "time is not an RFC 3339 time"),
    ("deduplicationId", "a" * 36, "deduplicationId is not a UUID"),
    ("object", [1, 2], "object is not a JSON object"),
])
def test_bad_fields_are_malformed(field: str, value: Any, needle: str) -> None:
    doc = good_doc()
    doc[field] = value
    event = parse(UP, orjson.dumps(doc), RECEIVED)
    assert isinstance(event, Malformed) and needle in event.error, event


def test_thousands_of_receptions_are_malformed() -> None:
    doc = good_doc()
    doc["rxInfo"] = [{"rssi": -50}] * 3000
    event = parse(UP, orjson.dumps(doc), RECEIVED)
    assert isinstance(event, Malformed) and "more than 256 receptions" in event.error


@pytest.mark.parametrize("raw", [
    b'{"deviceInfo": {"devEui": "0101010101010101"}, "fCnt": 1e400}',
    b'{"deviceInfo": {"devEui": "0101010101010101"}, "fCnt": 123456789012345678901234567890}',
    b'\xef\xbb\xbf{"deviceInfo": {}}',
    b'{"deviceInfo": {"devEui": "0101010101010101", "devEui": 5}}',
    b'   \n\t{"deviceInfo": null}',
    b"",
    b"{",
])
def test_odd_json_is_malformed_never_an_exception(raw: bytes) -> None:
    assert isinstance(parse(UP, raw, RECEIVED), Malformed)


def test_long_names_are_cut_long_ids_and_odd_gateways_refused_or_dropped() -> None:
    doc = good_doc()
    doc["deviceInfo"]["deviceName"] = "n" * 5000
    doc["deviceInfo"]["tags"]["site"] = "s" * 5000
    doc["rxInfo"][0]["gatewayId"] = "evil/#"
    event = parse(UP, orjson.dumps(doc), RECEIVED)
    assert isinstance(event, Uplink)
    assert len(event.device.device_name) == 256 and len(event.device.tags["site"]) == 256
    assert event.radio.gateway_id is None  # never reaches a {gateway_id} topic placeholder
    doc["deviceInfo"]["applicationId"] = "a" * 500
    assert isinstance(parse(UP, orjson.dumps(doc), RECEIVED), Malformed)


def test_fport_0_is_mac_only_and_not_decoded() -> None:
    doc = good_doc()
    doc["fPort"] = 0
    event = parse(UP, orjson.dumps(doc), RECEIVED)
    assert isinstance(event, Uplink) and event.fport == 0
    decoded = DecoderRegistry(builtin_decoders()).decode(event)
    assert decoded.status == DecodeStatus.UNDECODED and not decoded.error


def test_device_event_summaries_are_built_from_checked_scalars() -> None:
    doc = good_doc()
    log_doc = {"deviceInfo": doc["deviceInfo"], "level": "ERROR", "code": {"nested": [1]},
               "description": "x" * 10_000, "context": {"deduplication_id": ["not", "a", "string"]}}
    event = parse(UP.replace("/up", "/log"), orjson.dumps(log_doc), RECEIVED)
    assert isinstance(event, DeviceEvent)
    assert event.summary.startswith("ERROR <dict>: xxx") and len(event.summary) < 400
    assert event.event_id == ""


# JSON values of every shape, nested and wide; strings include surrogate-free odd characters.
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats(allow_nan=False)
    | st.text(max_size=40),
    lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=12), children, max_size=6),
    max_leaves=60)
FIELDS = ["deviceInfo", "time", "fPort", "fCnt", "data", "object", "rxInfo", "txInfo", "deduplicationId", "dr",
          "confirmed", "margin", "description", "level", "code", "context", "tags", "location"]


def _jsonable(value: Any) -> bool:
    try:
        orjson.dumps(value)
        return True
    except orjson.JSONEncodeError:
        return False


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(chirpstack_events.EVENT_KINDS)), st.lists(st.sampled_from(FIELDS), max_size=3),
       JSON, st.sampled_from(["", "deviceInfo"]), st.integers(0, 1200), st.sampled_from(["object", "list"]),
       st.integers(0, 400_000), st.integers(0, 30_000))
def test_parse_never_raises_on_arbitrary_shapes_depths_and_sizes(kind: str, fields: list[str], value: Any,
                                                                 under: str, depth: int, deep_kind: str,
                                                                 chars: int, width: int) -> None:
    doc = good_doc()
    target = doc["deviceInfo"] if under else doc
    for f in fields:
        target[f] = value
    if fields and chars:
        target[fields[-1]] = "x" * chars
    if fields and width:
        target[fields[-1]] = [value] * width
    if not _jsonable(doc):
        return
    if depth and fields:  # one of those fields nested `depth` deep instead (spliced: orjson stops at 255)
        target[fields[0]] = "@@DEEP@@"
        body = orjson.dumps(doc).replace(b'"@@DEEP@@"', deep_json(depth, deep_kind))
    else:
        body = orjson.dumps(doc)
    event = parse(UP.replace("/up", f"/{kind}"), body, RECEIVED)
    assert isinstance(event, Uplink | DeviceEvent | Malformed)
    if isinstance(event, Malformed):
        assert len(event.error) <= chirpstack_events.MAX_REASON + 80
        assert event.payload == body[:chirpstack_events.MAX_KEPT_BYTES]
    if isinstance(event, DeviceEvent):
        assert len(event.summary) <= 512 and len(event.event_id) <= 128
    if isinstance(event, Uplink):
        assert len(event.payload) <= chirpstack_events.MAX_PAYLOAD_BYTES
        assert 0 <= event.fport <= 255
        assert depth < 32 or not fields, "a value nested 32 deep or more never passes"


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=3000), st.sampled_from(["up", "log", "status", "join"]))
def test_parse_never_raises_on_protobuf_topics_with_arbitrary_bytes(payload: bytes, kind: str) -> None:
    event = parse(UP.replace("/up", f"/{kind}"), payload, RECEIVED)
    assert isinstance(event, Uplink | DeviceEvent | Malformed)


# -- the decoder registry ---------------------------------------------------------------------------------

class Returns:
    """A decoder returning whatever it is given (what a plugin or a JS codec might)."""

    id = "test/returns"
    fields: Mapping[str, Field] = {}

    def __init__(self, result: Any) -> None:
        self.result = result
        self.calls = 0

    def decode(self, payload: bytes, fport: int, context: DeviceContext) -> Any:
        self.calls += 1
        return self.result


def uplink(tags: dict[str, str] | None = None, obj: dict[str, Any] | None = None, fport: int = 5) -> Uplink:
    return Uplink(str(uuid.uuid4()), DeviceInfo("0101010101010101", tags=tags or {}), RECEIVED, fport, b"\x01",
                  RadioInfo(), object=obj)


def test_normaliser_walk_is_bounded() -> None:
    data: dict[str, Any] = {}
    node = data
    for _ in range(5000):
        node["a"] = {}
        node = node["a"]
    node["v"] = 1
    # Deeper than any sensor nests: not walked, and no RecursionError (the registry's limits fail such
    # output before the normaliser sees it; this holds without them too).
    assert leaves(data) == []


def deep(levels: int) -> dict[str, Any]:
    out: dict[str, Any] = {"v": 1}
    for _ in range(levels):
        out = {"a": out}
    return out


@pytest.mark.parametrize(("result", "needle"), [
    (DecodeResult({f"k{i}": i for i in range(30_000)}), "more than 1000 values"),
    (DecodeResult({"x": list(range(100_000))}), "more than 1000 values"),
    (DecodeResult({"x": ["x" * 100] * 900}), "larger than 64 KB"),
    # Shared references: 20 MB as JSON from a few KB of memory; refused before anything serialises it.
    (DecodeResult({"x": [["x" * 2000] * 100] * 100}), "larger than 64 KB"),
    (DecodeResult(dict.fromkeys((f"k{i}" for i in range(1000)), "x" * 10_000_000)), "larger than 64 KB"),
    (DecodeResult(deep(1000)), "nested deeper than 32"),
    (DecodeResult({"s": "x" * 100_000}), "larger than 64 KB"),
    (DecodeResult({"n": 2**70}), "beyond 64 bits"),
    (DecodeResult({"s": "\ud800"}), "lone surrogate"),
    (DecodeResult({1: 2}), "not a string"),  # type: ignore[dict-item]
    (DecodeResult({"b": b"bytes"}), "not a JSON type"),
    (DecodeResult({"t": 1}, warnings=["w"] * 30_000), "30000 warnings"),
    (DecodeResult({"t": 1}, warnings=["w" * 5000]), "5000 characters"),
    (DecodeResult([1, 2]), "not an object"),  # type: ignore[arg-type]
    ({"data": {"t": 1}}, "not a DecodeResult"),
])
def test_codec_output_over_the_caps_fails_that_uplink(result: Any, needle: str) -> None:
    registry = DecoderRegistry([Returns(result)], tag="decoder")  # type: ignore[list-item]
    decoded = registry.decode(uplink({"decoder": "test/returns"}))
    assert decoded.status == DecodeStatus.FAILED and decoded.readings == []
    assert needle in decoded.error, decoded.error
    assert len(decoded.error) <= limits.MAX_REASON_CHARS


def test_thirty_thousand_errors_are_reported_bounded() -> None:
    registry = DecoderRegistry([Returns(DecodeResult(None, errors=["e" * 80] * 30_000))])  # type: ignore[list-item]
    decoded = registry.decode(uplink({"decoder": "test/returns"}))
    assert decoded.status == DecodeStatus.FAILED
    assert "and 29980 more errors" in decoded.error and len(decoded.error) <= limits.MAX_REASON_CHARS


def test_chirpstack_object_over_the_caps_fails_that_uplink() -> None:
    registry = DecoderRegistry([])
    decoded = registry.decode(uplink(obj=deep(200)))
    assert (decoded.status, decoded.decoder) == (DecodeStatus.FAILED, "chirpstack")
    assert "nested deeper" in decoded.error
    ok = registry.decode(uplink(obj={"temperature": 21.5}))
    # No map names this object's codec: its field goes out under its own key, without a guessed unit.
    assert ok.status == DecodeStatus.CHIRPSTACK and ok.readings == [Reading("temperature", 21.5, None, "temperature")]


def test_a_decoder_that_raises_recursion_error_costs_its_uplink_only() -> None:
    class Recurses(Returns):
        def decode(self, payload: bytes, fport: int, context: DeviceContext) -> Any:
            return self.decode(payload, fport, context)

    decoded = DecoderRegistry([Recurses(None)]).decode(uplink({"decoder": "test/returns"}))  # type: ignore[list-item]
    assert decoded.status == DecodeStatus.FAILED and decoded.error.startswith("RecursionError")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(JSON, st.integers(0, 300), st.integers(0, 5000), st.integers(0, 200_000),
       st.sampled_from(["native", "object"]))
def test_registry_decode_never_raises_and_output_is_bounded(data: Any, depth: int, width: int, chars: int,
                                                            path: str) -> None:
    for _ in range(depth):
        data = {"a": data} if depth % 2 else [data]
    if width:
        data = {"wide": [data] * width, **({"s": "x" * chars} if chars else {})}
    elif chars:
        data = {"s": "x" * chars, "v": data}
    registry = DecoderRegistry([Returns(DecodeResult(data))])  # type: ignore[list-item]
    if path == "native":
        decoded = registry.decode(uplink({"decoder": "test/returns"}))
    else:
        decoded = registry.decode(uplink(obj=data if isinstance(data, dict) else {"x": data}))
    assert decoded.status in (DecodeStatus.DECODED, DecodeStatus.CHIRPSTACK, DecodeStatus.FAILED)
    assert len(decoded.readings) <= limits.MAX_LEAVES
    assert len(decoded.error) <= limits.MAX_REASON_CHARS
    if decoded.status != DecodeStatus.FAILED:
        orjson.dumps([(r.name, r.value, r.unit) for r in decoded.readings])  # storable as it is


def test_cool_down_after_repeated_timeouts_then_back(caplog: pytest.LogCaptureFixture) -> None:
    clock = [0.0]
    slow = Returns(DecodeResult({"t": 1}))
    cool = CoolDown(slow_s=0.0, after=3, window_s=60, rest_s=60, clock=lambda: clock[0])
    registry = DecoderRegistry([slow], cooldown=cool)  # type: ignore[list-item]
    up = uplink({"decoder": "test/returns"})
    for _ in range(3):  # every call counts as slow with slow_s = 0
        clock[0] += 1
        assert registry.decode(up).status == DecodeStatus.DECODED
    assert slow.calls == 3
    clock[0] += 1
    rested = registry.decode(up)
    assert (rested.status, rested.error) == (DecodeStatus.FAILED, "cool-down")
    assert slow.calls == 3, "not run while cooling down"
    assert sum("timed out 3 times" in r.message for r in caplog.records if r.levelname == "WARNING") == 1
    clock[0] += 61
    assert registry.decode(up).status == DecodeStatus.DECODED


def test_cool_down_needs_the_timeouts_within_the_window() -> None:
    clock = [0.0]
    cool = CoolDown(slow_s=0.0, after=3, window_s=60, rest_s=60, clock=lambda: clock[0])
    for _ in range(10):
        clock[0] += 40  # three in 80 s, never three within 60 s
        cool.took("d", 1.0)
    assert not cool.resting("d") and cool.rested == 0
    assert CoolDown(after=0).rested == 0  # 0 turns it off
    off = CoolDown(slow_s=0.0, after=0)
    for _ in range(10):
        off.took("d", 1.0)
    assert not off.resting("d")


LOOPING_JS = """
function decodeUplink(input) {
  if (input.fPort === 12) { for (;;) {} }
  return {data: {temperature: input.bytes[0]}};
}
"""


def test_a_looping_js_codec_goes_to_cool_down_and_others_are_unaffected(tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    codecs = tmp_path / "codecs" / "acme"
    codecs.mkdir(parents=True)
    (codecs / "loop.yaml").write_text("uplinkDecoder:\n  fileName: loop.js\n")
    (codecs / "loop.js").write_text(LOOPING_JS)
    cfg = make_cfg(tmp_path, decoding={"codec_paths": [str(codecs.parent)], "js_time_limit_ms": 50,
                                       "cooldown_timeouts": 3, "cooldown_window_s": 600, "cooldown_s": 600})
    p = Pipeline(cfg, decoders=None)
    try:
        msgs = []
        for i in range(6):
            doc = good_doc(seed=100 + i)
            doc["fPort"] = 12
            doc["deviceInfo"]["tags"]["decoder"] = "acme/loop"
            msgs.append(Message(UP, orjson.dumps(doc), time.time()))
        good = [Message(t, b, time.time()) for t, b, _ in Simulator(3, seed=9).events(3)]
        p.handle(msgs + good)
        rows = db_rows(p, "SELECT decoder, status, error FROM uplinks ORDER BY id")
        looping = rows[:6]
        assert all(status == DecodeStatus.FAILED and decoder == "acme/loop" for decoder, status, _ in looping)
        assert [e for _, _, e in looping[:3]] == [e for _, _, e in looping[:3] if "CPU time limit" in e]
        assert [e for _, _, e in looping[3:]] == ["cool-down"] * 3
        assert [status for _, status, _ in rows[6:]] == [DecodeStatus.DECODED] * 3
        assert p.registry.cooldown.rested == 1
        assert sum("timed out 3 times" in r.message for r in caplog.records) == 1
    finally:
        p.buffer.close()


# -- Pipeline.handle ---------------------------------------------------------------------------------------

def make_cfg(tmp_path: Path, **sections: Any) -> Config:
    doc: dict[str, Any] = {
        "edge": {"id": "gw-test"},
        "chirpstack": {"mqtt_url": "mqtt://127.0.0.1:9"},
        "buffer": {"path": str(tmp_path / "buffer.sqlite")},
        "upstream": [{"name": "city", "url": "mqtt://127.0.0.1:9"}],
    }
    doc.update(sections)
    return parse_config(doc)


@pytest.fixture
def pipeline(tmp_path: Path) -> Iterator[Pipeline]:
    p = Pipeline(make_cfg(tmp_path), decoders=builtin_decoders())
    yield p
    p.buffer.close()


def db_rows(p: Pipeline, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(p.cfg.buffer.path)
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def test_one_batch_of_good_and_every_hostile_kind_commits_every_good_uplink(pipeline: Pipeline) -> None:
    good = [(t, b, s) for t, b, s in Simulator(5, seed=3).events(20)]
    messages: list[Message] = []
    for i, (topic, body, _) in enumerate(good):
        messages.append(Message(topic, body, time.time()))
        name = sorted(CATALOGUE)[i % len(CATALOGUE)]
        messages.append(Message(*CATALOGUE[name](i), time.time()))
    hostile = len(messages) - len(good)
    assert hostile >= len(CATALOGUE)
    pipeline.handle(messages)
    ids = {r[0] for r in db_rows(pipeline, "SELECT uplink_id FROM uplinks WHERE status = 0")}
    assert ids == {s.uplink_id for _, _, s in good}
    malformed = db_rows(pipeline, "SELECT error, length(payload) FROM malformed")
    events = db_rows(pipeline, "SELECT count(*) FROM events")[0][0]
    assert len(malformed) == hostile and events == 0
    assert all(len(e) <= 600 and n <= 64 * 1024 for e, n in malformed)
    counters = Buffer(pipeline.cfg.buffer.path, readonly=True).counters()
    assert counters["malformed"] == hostile and counters["decoded"] == 20


def test_uplink_ids_are_remembered_only_after_their_commit(pipeline: Pipeline) -> None:
    messages = [Message(t, b, time.time()) for t, b, _ in Simulator(3, seed=4).events(6)]
    real_append = pipeline.buffer.append
    calls = [0]

    def failing_once(batch: Any) -> list[int]:
        calls[0] += 1
        if calls[0] == 1:
            raise sqlite3.OperationalError("disk I/O error")
        return real_append(batch)

    pipeline.buffer.append = failing_once  # type: ignore[method-assign]
    with pytest.raises(sqlite3.OperationalError):
        pipeline.handle(messages)
    assert not any(m_id in pipeline.seen for m_id in ids_of(messages))
    pipeline.handle(messages)  # the broker's redelivery of the whole batch
    assert len(db_rows(pipeline, "SELECT id FROM uplinks")) == 6
    pipeline.handle(messages)  # a later redelivery is a duplicate
    assert len(db_rows(pipeline, "SELECT id FROM uplinks")) == 6
    assert Buffer(pipeline.cfg.buffer.path, readonly=True).counters()["duplicates"] == 6


def ids_of(messages: list[Message]) -> list[str]:
    return [orjson.loads(m.payload)["deduplicationId"] for m in messages]


def test_a_duplicate_inside_one_batch_is_stored_once(pipeline: Pipeline) -> None:
    topic, body, _ = next(Simulator(1, seed=5).events(1))
    pipeline.handle([Message(topic, body, 1.0), Message(topic, body, 2.0)])
    assert len(db_rows(pipeline, "SELECT id FROM uplinks")) == 1


def test_a_record_that_cannot_be_stored_is_set_aside_and_the_rest_committed(pipeline: Pipeline) -> None:
    messages = [Message(t, b, time.time()) for t, b, _ in Simulator(2, seed=6).events(4)]
    real = pipeline.registry.decode

    def poisoned(up: Uplink, hints: DeviceHints = NO_HINTS) -> Any:
        decoded = real(up, hints)
        if up.uplink_id == ids_of(messages)[1]:
            decoded.readings = [Reading("bad", "\ud800")]  # a string neither JSON nor SQLite can hold
        return decoded

    pipeline.registry.decode = poisoned  # type: ignore[method-assign]
    pipeline.handle(messages)
    stored = {r[0] for r in db_rows(pipeline, "SELECT uplink_id FROM uplinks")}
    assert stored == set(ids_of(messages)) - {ids_of(messages)[1]}
    (error, payload), = db_rows(pipeline, "SELECT error, payload FROM malformed")
    assert error.startswith("could not be stored") and payload == messages[1].payload
    counters = Buffer(pipeline.cfg.buffer.path, readonly=True).counters()
    assert (counters["decoded"], counters["malformed"]) == (3, 1)


def test_an_exception_while_handling_one_message_keeps_it_as_malformed(pipeline: Pipeline,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    messages = [Message(t, b, time.time()) for t, b, _ in Simulator(2, seed=8).events(3)]
    bad = ids_of(messages)[0]
    real = pipeline.registry.decode

    def boom(up: Uplink, hints: DeviceHints = NO_HINTS) -> Any:
        if up.uplink_id == bad:
            raise RecursionError("maximum recursion depth exceeded")
        return real(up, hints)

    pipeline.registry.decode = boom  # type: ignore[method-assign]
    pipeline.handle(messages)
    assert {r[0] for r in db_rows(pipeline, "SELECT uplink_id FROM uplinks")} == set(ids_of(messages)[1:])
    (error,), = db_rows(pipeline, "SELECT error FROM malformed")
    assert error.startswith("not handled: RecursionError")
    assert bad not in pipeline.seen  # a redelivery is handled again, not dropped


# -- time: decisions use the event time clamped around the receive time --------------------------------

def test_thinning_is_not_suppressed_by_an_uplink_dated_2099(pipeline: Pipeline) -> None:
    now = time.time()
    topic, body, far = dated(1)
    later = [Message(t, b, now + 1) for t, b, _ in Simulator(1, seed=1000 + 1).events(1)]
    pipeline.handle([Message(topic, body, now)])
    pipeline.handle(later)
    buf = Buffer(pipeline.cfg.buffer.path)
    try:
        entries = buf.read(0, 10)
        assert entries[0].time > 4e9, "the event time itself is kept (SenML t)"
        share = ShareFilter(ShareRules(thin_s=60), store=BufferThinStore(buf, "city"))
        kept = share.apply(entries)
        # The 2099 uplink counts as received now (+5 min at most), so within 6 minutes a newer
        # interval is served again instead of nothing until 2099.
        assert [e.uplink_id for e in kept] == [far]
        fresh = Simulator(1, seed=1000 + 2).events(1)
        t, b, _ = next(fresh)
        doc = orjson.loads(b)
        doc["time"] = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(now + 400))
        pipeline.handle([Message(t, orjson.dumps(doc), now + 400)])
        kept = share.apply(buf.read(entries[-1].id, 10))
        assert [e.uplink_id for e in kept] == [doc["deduplicationId"]]
    finally:
        buf.close()


def test_backlog_age_and_device_last_time_use_the_clamped_time(pipeline: Pipeline) -> None:
    now = time.time()
    topic, body, _ = dated(2)
    pipeline.handle([Message(topic, body, now - 1200)])  # received 20 minutes ago, dated 2099
    buf = Buffer(pipeline.cfg.buffer.path, readonly=True)
    try:
        age = next(s for s in buf.sinks(["city"]) if s["name"] == "city")["oldest_undelivered_age_s"]
        assert 800 <= age <= 1300, age  # 20 minutes less the 5 minutes of trusted clock skew at most
        first = buf.first_control_time_after(0)
        assert first is not None and first <= now - 1200 + 300
        (last_time,), = buf.db.execute("SELECT last_time FROM devices").fetchall()
        assert last_time <= now
    finally:
        buf.close()
    # A newer uplink of that device still updates its row (the 2099 one did not freeze it).
    t, b, _ = next(Simulator(1, seed=1000 + 2).events(1))
    pipeline.handle([Message(t, b, now)])
    (last_uplink,), = db_rows(pipeline, "SELECT last_uplink FROM devices")
    assert last_uplink == 2


def test_control_time_window() -> None:
    from edge.model import control_time

    assert control_time(100.0, 100.0) == 100.0
    assert control_time(4e9, 1000.0) == 1300.0
    assert control_time(0.0, 1e9) == 0.0  # the past is taken as it is (a queued backlog is that old)
    assert control_time(123.0, None) == 123.0
    assert math.isfinite(control_time(1e300, 1.0))


def test_entry_time_in_senml_is_the_event_time() -> None:
    from edge.formats import senml

    e = Entry(1, GOOD, "0101010101010101", "app", "", 4102444800.0, [Reading("temperature", 1.0, "Cel")],
              RadioInfo())
    records = senml.resolve(senml.decode(senml.pack([e], "senml+json"), "senml+json"))
    assert records[0]["t"] == 4102444800.0


GOOD = "6f1c2b7d-9e01-4f4e-9c55-3f1c2b7d9e01"


def test_deep_json_helper_is_what_it_says() -> None:
    assert deep_json(2) == b'{"a":{"a":1}}' and deep_json(2, "list") == b"[[1]]"


def test_malformed_messages_keep_within_their_share_of_the_buffer(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    from edge.buffer import MALFORMED_SHARE, Batch

    buf = Buffer(tmp_path / "b.sqlite", max_bytes=4 << 20)
    try:
        limit = 4 * 1024 * 1024 * MALFORMED_SHARE
        for i in range(40):  # 40 x 2 x 30 KB = 2.4 MB of malformed messages, over 10 times the share
            batch = Batch()
            for j in range(2):
                batch.malformed.append((Malformed(UP, bytes([i]) * 30_000, f"flood {i}/{j}"), float(i)))
            buf.append(batch)
            total = buf.db.execute("SELECT sum(length(payload) + length(error) + length(topic) + 64)"
                                   " FROM malformed").fetchone()[0]
            assert total <= limit
        errors = [e for (e,) in buf.db.execute("SELECT error FROM malformed ORDER BY id")]
        assert errors[-1] == "flood 39/1" and len(errors) == int(limit // 30_200)  # the newest are kept
        assert sum("fill their share" in r.message for r in caplog.records if r.levelname == "WARNING") == 1
    finally:
        buf.close()
