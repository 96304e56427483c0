"""The pipeline without a network: formatter grouping and splitting, duplicate memory, and Pipeline.handle."""

from __future__ import annotations

import copy
import json
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.buffer.adapters import BufferBacklog
from edge.config import Config, MqttEndpoint, UpstreamConfig, parse_config
from edge.decoding.builtin import builtin_decoders
from edge.formats import senml
from edge.formats.outbound import _chunks
from edge.model import DecodeStatus, Entry, RadioInfo, Reading
from edge.pipeline import Pipeline, RecentIds, make_formatter
from edge.sources.chirpstack_mqtt import Message

FIXTURES = Path(__file__).resolve().parent / "fixtures"
EVENTS = FIXTURES / "events"
CHIRPSTACK = FIXTURES / "chirpstack"
RECORDS = FIXTURES / "records"
ELSYS = "a81758fffe0346f1"
T0 = 1795600800.0
REFERENCE_READINGS = [
    Reading("temperature", 22.4, "Cel"),
    Reading("humidity", 41, "%RH"),
    Reading("illuminance", 39, "lx"),
    Reading("motion", 6, "count"),
    Reading("battery-voltage", 3.606, "V"),
]


def upstream(**kw: Any) -> UpstreamConfig:
    return UpstreamConfig(name="city", mqtt=MqttEndpoint("mqtt://127.0.0.1:9", "test"), **kw)


def entry(i: int, dev_eui: str = ELSYS, *, app: str = "app-1", readings: list[Reading] | None = None,
          gateway_id: str = "acde48fffe000001") -> Entry:
    return Entry(id=i, uplink_id=str(uuid.UUID(int=i)), dev_eui=dev_eui, application_id=app, gateway_id=gateway_id,
                 time=T0 + i, readings=REFERENCE_READINGS if readings is None else readings,
                 radio=RadioInfo(fcnt=i, fport=5, frequency=868100000, spreading_factor=7, dr=5, rssi=-87.0,
                                 snr=9.5, gateway_id=gateway_id or None, gateways=1))


def uplink_ids(payload: bytes, fmt: str) -> list[str]:
    return [r["vs"].removeprefix("urn:uuid:") for r in senml.resolve(senml.decode(payload, fmt))
            if r["n"].endswith("_uplink")]


# -- make_formatter ---------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["senml+json", "senml+cbor"])
def test_formatter_groups_by_topic_and_keeps_order(fmt: str) -> None:
    a, b, c = "0000000000000001", "0000000000000002", "0000000000000003"
    entries = [entry(1, a), entry(2, b), entry(3, a), entry(4, c), entry(5, b), entry(6, a)]
    messages = make_formatter(upstream(format=fmt), "gw-01")(entries)
    measurement = [m for m in messages if not m.topic.endswith("/link")]
    assert [m.topic for m in measurement] == [f"lorawan/{a}", f"lorawan/{b}", f"lorawan/{c}"]  # first seen first
    assert [uplink_ids(m.payload, fmt) for m in measurement] == [
        [str(uuid.UUID(int=i)) for i in ids] for ids in ([1, 3, 6], [2, 5], [4])]
    assert all(m.content_type == f"application/{fmt}" for m in messages)
    # Link packs follow the same grouping on the link topic, after the measurement packs.
    link = [m for m in messages if m.topic.endswith("/link")]
    assert messages == measurement + link
    assert [m.topic for m in link] == [f"lorawan/{a}/link", f"lorawan/{b}/link", f"lorawan/{c}/link"]
    assert [uplink_ids(m.payload, fmt) for m in link] == [uplink_ids(m.payload, fmt) for m in measurement]


def test_formatter_topic_placeholders() -> None:
    app1, app2 = "5e0c2a4e-9d1b-4f7a-8c3e-2b6f1d0a9c11", "6f1d3b5f-0e2c-4a8b-9d4f-3c7a2e1b0d22"
    entries = [entry(1, "0000000000000001", app=app1), entry(2, "0000000000000002", app=app1),
               entry(3, "0000000000000003", app=app2, gateway_id=""),
               entry(4, "0000000000000004", app="other-city/sensors/#", gateway_id="evil/+")]
    up = upstream(topic="city/{edge_id}/{application}/{gateway_id}", link_topic="")
    messages = make_formatter(up, "gw-01")(entries)
    # Values from data that are not of their documented form become the level `invalid` (docs/records.md).
    assert [m.topic for m in messages] == [f"city/gw-01/{app1}/acde48fffe000001", f"city/gw-01/{app2}/unknown",
                                           "city/gw-01/invalid/invalid"]
    # Two devices in one pack: each reading still resolves to its own device and time.
    resolved = senml.resolve(senml.decode(messages[0].payload, "senml+json"))
    names = {(r["n"], r["t"]) for r in resolved}
    assert ("urn:dev:mac:0000000000000001_temperature", T0 + 1) in names
    assert ("urn:dev:mac:0000000000000002_temperature", T0 + 2) in names


@pytest.mark.parametrize("fmt", ["senml+json", "senml+cbor"])
def test_formatter_one_uplink_per_message_for_first_base_value_readers(fmt: str) -> None:
    """A backlog of one device leaves as one message per uplink, each read right by taking its first `bt`."""
    entries = [entry(i) for i in range(1, 6)]
    messages = make_formatter(upstream(format=fmt, link_topic="", one_uplink_per_message=True), "gw")(entries)
    assert len(messages) == 5
    for i, message in enumerate(messages, start=1):
        raw = senml.decode(message.payload, fmt)
        assert uplink_ids(message.payload, fmt) == [str(uuid.UUID(int=i))]
        # What a naive reader does: the first record's base time for every record of the message.
        assert raw[0]["bt"] == T0 + i and not any("bt" in r for r in raw[1:])
    packed = make_formatter(upstream(format=fmt, link_topic=""), "gw")(entries)
    assert len(packed) == 1  # the default stays packed


def test_formatter_pack_resolves_to_reference_records() -> None:
    (message, link) = make_formatter(upstream(), "gw-01")([entry(0)])
    resolved = [r for r in senml.resolve(senml.decode(message.payload, "senml+json"))
                if not r["n"].endswith("_uplink")]
    assert resolved == json.loads((RECORDS / "elsys-ers_a81758fffe0346f1.senml-resolved.json").read_text())
    assert link.topic == f"lorawan/{ELSYS}/link"


@pytest.mark.parametrize("fmt", ["senml+json", "senml+cbor"])
def test_formatter_splits_measurement_packs_under_max_bytes(fmt: str) -> None:
    entries = [entry(i) for i in range(1, 201)]
    messages = make_formatter(upstream(format=fmt, max_message_bytes=1024, link_topic=""), "e")(entries)
    assert len(messages) > 1
    assert max(len(m.payload) for m in messages) <= 1024
    seen = [i for m in messages for i in uplink_ids(m.payload, fmt)]
    assert seen == [str(uuid.UUID(int=i)) for i in range(1, 201)]  # each once, in order


def test_formatter_single_entry_per_message_when_limit_is_small() -> None:
    chunks = _chunks([entry(i) for i in range(1, 4)], 1, link=False)
    assert [[e.id for e in c] for c in chunks] == [[1], [2], [3]]  # never an empty chunk
    assert _chunks([], 1024, link=False) == []
    assert [[e.id for e in c] for c in _chunks([entry(i) for i in range(1, 4)], 1 << 20, link=True)] == [[1, 2, 3]]


@pytest.mark.parametrize("fmt", ["senml+json", "senml+cbor"])
def test_formatter_splits_link_packs_under_max_bytes(fmt: str) -> None:
    entries = [entry(i, readings=[]) for i in range(1, 201)]
    messages = make_formatter(upstream(format=fmt, max_message_bytes=1024), "e")(entries)
    assert max(len(m.payload) for m in messages) <= 1024


def test_formatter_long_float_readings_stay_under_max_bytes() -> None:
    readings = [Reading("co2", -1.2345678901234567e-300, "/")] * 20
    entries = [entry(i, readings=readings) for i in range(1, 20)]
    messages = make_formatter(upstream(max_message_bytes=1024, link_topic=""), "e")(entries)
    assert max(len(m.payload) for m in messages) <= 1024


def test_formatter_link_topic_empty_sends_no_link_packs() -> None:
    messages = make_formatter(upstream(link_topic=""), "e")([entry(1), entry(2, readings=[])])
    assert [m.topic for m in messages] == [f"lorawan/{ELSYS}"]
    assert uplink_ids(messages[0].payload, "senml+json") == [str(uuid.UUID(int=1))]


def test_formatter_entries_without_readings_give_only_link_packs() -> None:
    messages = make_formatter(upstream(), "e")([entry(1, readings=[]), entry(2, readings=[])])
    assert [m.topic for m in messages] == [f"lorawan/{ELSYS}/link"]
    records = senml.resolve(senml.decode(messages[0].payload, "senml+json"))
    assert {r["n"] for r in records} >= {f"urn:dev:mac:{ELSYS}_lorawan_rssi", f"urn:dev:mac:{ELSYS}_lorawan_fcnt"}
    assert make_formatter(upstream(link_topic=""), "e")([entry(1, readings=[])]) == []


def test_formatter_empty_input() -> None:
    assert make_formatter(upstream(), "e")([]) == []


# -- RecentIds ---------------------------------------------------------------------------------------

def test_recent_ids_forgets_oldest_beyond_capacity() -> None:
    ids = RecentIds(3)
    for x in "abcd":
        ids.add(x)
    assert "a" not in ids
    assert all(x in ids for x in "bcd")
    ids.add("e")
    assert "b" not in ids and "e" in ids


def test_recent_ids_seed_is_newest_first() -> None:
    # Buffer.recent_uplink_ids returns the newest first; the oldest of the seed is forgotten first.
    ids = RecentIds(2, seed=["new", "mid", "old"])
    assert "new" in ids and "mid" in ids and "old" not in ids
    ids.add("next")
    assert "mid" not in ids and "new" in ids


def test_recent_ids_discard() -> None:
    ids = RecentIds(10, seed=["a", "b"])
    ids.discard("a")
    ids.discard("zzz")  # unknown ids are fine
    assert "a" not in ids and "b" in ids


def test_recent_ids_rediscovered_id_is_kept_as_recent() -> None:
    ids = RecentIds(2)
    ids.add("a")
    ids.discard("a")  # its batch failed to commit
    ids.add("a")  # redelivered and stored
    ids.add("b")
    assert "a" in ids and "b" in ids


# -- Pipeline.handle ---------------------------------------------------------------------------------

def make_cfg(tmp_path: Path, **sections: Any) -> Config:
    doc: dict[str, Any] = {
        "edge": {"id": "gw-test"},
        "chirpstack": {"mqtt_url": "mqtt://127.0.0.1:9"},  # never connected: handle() does no I/O but SQLite
        "buffer": {"path": str(tmp_path / "buffer.sqlite")},
        "upstream": [{"name": "city", "url": "mqtt://127.0.0.1:9"}],
    }
    for key, value in sections.items():
        doc[key] = value
    return parse_config(doc)


@pytest.fixture
def pipelines(tmp_path: Path) -> Iterator[Callable[..., Pipeline]]:
    made: list[Pipeline] = []

    def make(cfg: Config | None = None) -> Pipeline:
        p = Pipeline(cfg or make_cfg(tmp_path), decoders=builtin_decoders())
        made.append(p)
        return p

    yield make
    for p in made:
        p.buffer.close()


def message(path: Path, kind: str = "up", dev_eui: str = "0101010101010101", received: float = 1.0,
            doc: dict[str, Any] | None = None) -> Message:
    payload = json.dumps(doc).encode() if doc is not None else path.read_bytes()
    return Message(f"application/app/device/{dev_eui}/event/{kind}", payload, received)


def elsys(**device: Any) -> dict[str, Any]:
    """The reference Elsys uplink; keyword arguments replace deviceInfo fields."""
    doc: dict[str, Any] = json.loads((EVENTS / "v4_up_elsys_ers.json").read_text())
    doc["deviceInfo"].update(device)
    return doc


def rows(p: Pipeline, sql: str) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(p.cfg.buffer.path)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def stored(p: Pipeline) -> list[tuple[Any, ...]]:
    """(status, decoder, error) of every stored uplink row."""
    return rows(p, "SELECT status, decoder, error FROM uplinks ORDER BY id")


def test_pipeline_handle_stores_uplinks_events_and_malformed_in_one_batch(pipelines: Callable[..., Pipeline]) -> None:
    p = pipelines()
    garbage = Message("application/app/device/0101010101010101/event/up", b"\xff\x00 not an event", 3.0)
    p.handle([
        message(EVENTS / "v4_up_elsys_ers.json", dev_eui=ELSYS),
        message(CHIRPSTACK / "v4_join.docs.json", "join"),
        garbage,
        message(CHIRPSTACK / "v4_up_no_object.docs.json"),
        message(CHIRPSTACK / "v4_log_uplink_mic.docs.json", "log"),
    ])
    assert p.commits == 1
    c = p.buffer.counters()
    assert {k: v for k, v in c.items() if v} == {"received": 5, "decoded": 1, "undecoded": 1, "events": 2,
                                                 "malformed": 1}
    assert [e.dev_eui for e in p.buffer.read(0, 10)] == [ELSYS, "0101010101010101"]
    assert [e["kind"] for e in p.buffer.recent_events()] == ["log", "join"]
    (bad,) = p.buffer.recent_malformed()
    assert bad["topic"] == garbage.topic and bad["received"] == 3.0
    assert rows(p, "SELECT payload FROM malformed") == [(garbage.payload,)]
    assert rows(p, "SELECT payload FROM events WHERE kind = 'join'") == [
        ((CHIRPSTACK / "v4_join.docs.json").read_bytes(),)]


def test_pipeline_handle_wakes_sinks(pipelines: Callable[..., Pipeline]) -> None:
    p = pipelines()
    calls: list[int] = []
    p.on_commit = lambda: calls.append(p.commits)
    assert not any(s.wake.is_set() for s in p.sinks)
    p.handle([message(EVENTS / "v4_up_elsys_ers.json")])
    assert all(s.wake.is_set() for s in p.sinks) and calls == [1]


def test_pipeline_handle_counts_duplicates_by_uplink_id(pipelines: Callable[..., Pipeline]) -> None:
    p = pipelines()
    elsys_msg = message(EVENTS / "v4_up_elsys_ers.json")
    p.handle([elsys_msg, elsys_msg])  # twice in one batch
    p.handle([elsys_msg, message(CHIRPSTACK / "v4_up_no_object.docs.json")])  # and again later
    # Both shared fixtures below reuse the docs uplink's deduplicationId, and the .pb twin carries it
    # too: whatever the encoding, the same id is the same uplink.
    p.handle([message(CHIRPSTACK / "v4_up_with_object.serialised.json"),
              message(CHIRPSTACK / "v4_up_with_object.serialised.pb")])
    c = p.buffer.counters()
    assert c["received"] == 6 and c["duplicates"] == 4
    assert [e.uplink_id for e in p.buffer.read(0, 100)] == ["5d4c3b2a-1f0e-4d9c-8b7a-6f5e4d3c2b1a",
                                                             "3ac7e3c4-4401-4b8d-9386-a5c902f9202d"]


def test_pipeline_handle_duplicates_across_restart(tmp_path: Path, pipelines: Callable[..., Pipeline]) -> None:
    cfg = make_cfg(tmp_path)
    first = pipelines(cfg)
    first.handle([message(EVENTS / "v4_up_elsys_ers.json"), message(CHIRPSTACK / "v4_up_no_object.docs.json")])
    first.buffer.close()
    second = pipelines(cfg)  # a new process on the same file: seeded from the buffer
    second.handle([message(EVENTS / "v4_up_elsys_ers.json"), message(CHIRPSTACK / "v4_up_no_object.docs.json"),
                   message(CHIRPSTACK / "v4_up_codec_error_no_object.serialised.json")])
    c = second.buffer.counters()
    assert c["duplicates"] == 2 and c["received"] == 5
    assert len(second.buffer.read(0, 100)) == 3


def test_pipeline_handle_failed_commit_forgets_its_ids(pipelines: Callable[..., Pipeline]) -> None:
    p = pipelines()
    p.buffer.db.execute("DROP TABLE raw")  # a real storage failure, no mock: the commit must fail
    with pytest.raises(sqlite3.OperationalError):
        p.handle([message(EVENTS / "v4_up_elsys_ers.json")])
    assert "5d4c3b2a-1f0e-4d9c-8b7a-6f5e4d3c2b1a" not in p.seen  # its redelivery will not count as a duplicate
    assert p.commits == 0


def test_pipeline_handle_decoder_from_chirpstack_tag(pipelines: Callable[..., Pipeline]) -> None:
    p = pipelines()
    p.handle([message(EVENTS / "v4_up_elsys_ers.json")])
    assert stored(p) == [(DecodeStatus.DECODED, "elsys/ers", None)]
    (e,) = p.buffer.read(0, 10)
    assert e.readings == REFERENCE_READINGS
    assert (e.uplink_id, e.time, e.gateway_id) == ("5d4c3b2a-1f0e-4d9c-8b7a-6f5e4d3c2b1a", T0, "acde48fffe000001")
    assert (e.radio.rssi, e.radio.gateways, e.radio.fcnt) == (-87.0, 3, 1234)
    # Stored and formatted, it is the reference pack.
    (measurement, _) = make_formatter(p.cfg.upstreams[0], p.cfg.edge_id)([e])
    resolved = [r for r in senml.resolve(senml.decode(measurement.payload, "senml+json"))
                if not r["n"].endswith("_uplink")]
    assert resolved == json.loads((RECORDS / "elsys-ers_a81758fffe0346f1.senml-resolved.json").read_text())


def test_pipeline_handle_custom_tag_name(tmp_path: Path, pipelines: Callable[..., Pipeline]) -> None:
    p = pipelines(make_cfg(tmp_path, decoding={"tag": "codec"}))
    # tag `decoder` is not looked at now (and a profile name that names no decoder)
    p.handle([message(EVENTS / "v4_up_elsys_ers.json", doc=elsys(deviceProfileName="Indoor sensors")),
              message(EVENTS / "v4_up_elsys_ers.json", doc=elsys(tags={"codec": "elsys/ers"}) | {
                  "deduplicationId": "5d4c3b2a-1f0e-4d9c-8b7a-000000000002"})])
    assert stored(p) == [(DecodeStatus.UNDECODED, "", None), (DecodeStatus.DECODED, "elsys/ers", None)]


RULE_CASES = {
    "dev_eui": {"decoder": "elsys/ers", "dev_eui": ["A81758FFFE0346F1"]},
    "device_profile_name": {"decoder": "elsys/ers", "device_profile": ["Elsys ERS"]},
    "device_profile_id": {"decoder": "elsys/ers", "device_profile": ["7e6d5c4b-3a29-4817-9605-f4e3d2c1b0a9"]},
    "application_name": {"decoder": "elsys/ers", "application": ["indoor-climate"]},
    "application_id": {"decoder": "elsys/ers", "application": ["9a1b2c3d-4e5f-4a6b-8c7d-0e1f2a3b4c5d"]},
}


@pytest.mark.parametrize("rule", list(RULE_CASES.values()), ids=list(RULE_CASES))
def test_pipeline_handle_decoder_from_config_rule(tmp_path: Path, pipelines: Callable[..., Pipeline],
                                                  rule: dict[str, Any]) -> None:
    other = {"decoder": "cayenne/lpp", "dev_eui": ["0000000000000000"]}  # matches nothing
    p = pipelines(make_cfg(tmp_path, decoding={"rule": [other, rule]}))
    p.handle([message(EVENTS / "v4_up_elsys_ers.json", doc=elsys(tags={}))])
    assert stored(p) == [(DecodeStatus.DECODED, "elsys/ers", None)]
    assert p.buffer.read(0, 1)[0].readings == REFERENCE_READINGS


def test_pipeline_handle_first_matching_rule_wins_and_tag_beats_rules(tmp_path: Path,
                                                                      pipelines: Callable[..., Pipeline]) -> None:
    rules = [{"decoder": "cayenne/lpp", "application": ["indoor-climate"]},
             {"decoder": "elsys/ers", "dev_eui": [ELSYS]}]
    p = pipelines(make_cfg(tmp_path, decoding={"rule": rules}))
    untagged = elsys(tags={}) | {"deduplicationId": "00000000-0000-4000-8000-000000000001"}
    p.handle([message(EVENTS / "v4_up_elsys_ers.json"),  # tagged elsys/ers: the tag wins
              message(EVENTS / "v4_up_elsys_ers.json", doc=untagged)])  # first rule: cayenne (fails on Elsys bytes)
    (tagged, ruled) = stored(p)
    assert tagged == (DecodeStatus.DECODED, "elsys/ers", None)
    assert ruled[:2] == (DecodeStatus.FAILED, "cayenne/lpp") and ruled[2]


def test_pipeline_handle_rule_beats_chirpstack_object(tmp_path: Path, pipelines: Callable[..., Pipeline]) -> None:
    with_object = elsys(tags={}) | {"object": {"temperature": 99.0}}
    p = pipelines(make_cfg(tmp_path, decoding={"rule": [{"decoder": "elsys/ers", "dev_eui": [ELSYS]}]}))
    p.handle([message(EVENTS / "v4_up_elsys_ers.json", doc=with_object)])
    assert stored(p) == [(DecodeStatus.DECODED, "elsys/ers", None)]
    assert p.buffer.read(0, 1)[0].readings[0] == Reading("temperature", 22.4, "Cel")


def test_pipeline_handle_falls_back_to_chirpstack_object(pipelines: Callable[..., Pipeline]) -> None:
    # No field map names this profile's codec: its keys go out unit-less (never a guessed unit)
    # and are counted as unmapped.
    p = pipelines()
    p.handle([message(CHIRPSTACK / "v4_up_with_object.serialised.json")])
    assert stored(p) == [(DecodeStatus.CHIRPSTACK, "chirpstack", None)]
    (e,) = p.buffer.read(0, 1)
    assert e.readings == [Reading("temperature", 23.0, None), Reading("humidity", 45.0, None),
                          Reading("battery-voltage", 3.3, None)]
    counters = p.buffer.counters()
    assert counters["chirpstack"] == 1 and counters["unmapped:object:chirpstack"] == 3


def test_pipeline_handle_chirpstack_object_with_its_map(tmp_path: Path, pipelines: Callable[..., Pipeline]) -> None:
    maps = tmp_path / "maps"
    maps.mkdir()
    (maps / "th.yaml").write_text("codecs: [object:th-sensor]\nfields:\n  temperature: {n: temperature, u: Cel}\n"
                                  "  humidity: {n: humidity, u: '%'}\n  batteryVoltage: {n: battery-voltage, u: mV}\n")
    cfg = make_cfg(tmp_path, decoding={"map_paths": [str(maps)],
                                       "object_maps": {"TH-sensor (JS codec)": "object:th-sensor"}})
    p = pipelines(cfg)
    p.handle([message(CHIRPSTACK / "v4_up_with_object.serialised.json")])
    (e,) = p.buffer.read(0, 1)
    assert e.readings == [Reading("temperature", 23.0, "Cel"), Reading("humidity", 45.0, "%RH"),
                          Reading("battery-voltage", 0.0033, "V")]
    assert not any(name.startswith("unmapped:") for name in p.buffer.counters())


def test_pipeline_handle_object_ignored_when_disabled(tmp_path: Path, pipelines: Callable[..., Pipeline]) -> None:
    p = pipelines(make_cfg(tmp_path, decoding={"use_chirpstack_object": False}))
    p.handle([message(CHIRPSTACK / "v4_up_with_object.serialised.json")])
    assert stored(p) == [(DecodeStatus.UNDECODED, "", None)]


def test_pipeline_handle_keeps_undecoded_uplink_raw(pipelines: Callable[..., Pipeline]) -> None:
    p = pipelines()
    msg = message(CHIRPSTACK / "v4_up_no_object.docs.json", received=42.5)
    p.handle([msg])
    assert stored(p) == [(DecodeStatus.UNDECODED, "", None)]
    assert p.buffer.read(0, 1)[0].readings == []
    assert rows(p, "SELECT topic, payload, received FROM raw") == [(msg.topic, msg.payload, 42.5)]
    assert p.buffer.counters()["undecoded"] == 1
    # No readings: only the link pack goes upstream.
    messages = make_formatter(p.cfg.upstreams[0], "gw")(p.buffer.read(0, 1))
    assert [m.topic for m in messages] == ["lorawan/0101010101010101/link"]


@pytest.mark.parametrize(("tag", "data", "error"), [
    ("elsys/ers", "/wA=", "unknown Elsys type 0xff"),
    ("elsys/ers", "AQA=", "truncated"),
    ("nope/none", "AQDg", "no decoder with id 'nope/none'"),
], ids=["bad-type", "truncated", "unknown-decoder"])
def test_pipeline_handle_keeps_failed_uplink_with_error(pipelines: Callable[..., Pipeline], tag: str, data: str,
                                                        error: str) -> None:
    p = pipelines()
    doc = copy.deepcopy(elsys(tags={"decoder": tag})) | {"data": data}
    msg = message(EVENTS / "v4_up_elsys_ers.json", doc=doc)
    p.handle([msg])
    ((status, decoder, stored_error),) = stored(p)
    assert (status, decoder) == (DecodeStatus.FAILED, tag)
    assert error in stored_error
    assert p.buffer.read(0, 1)[0].readings == []
    assert rows(p, "SELECT payload FROM raw") == [(msg.payload,)]
    assert p.buffer.counters()["decode_failed"] == 1
    (device,) = p.buffer.devices()
    assert (device["status"], device["decoder"]) == (DecodeStatus.FAILED, tag)


def test_pipeline_handle_enforces_size_bound(tmp_path: Path, pipelines: Callable[..., Pipeline]) -> None:
    p = pipelines(make_cfg(tmp_path, buffer={"path": str(tmp_path / "small.sqlite"), "max_size_mb": 0.1}))
    BufferBacklog(p.buffer, "city", p.cfg.upstreams[0].notice_topic, p.cfg.edge_id)  # as the sink registers
    base = elsys()
    for n in range(40):
        batch = [message(EVENTS / "v4_up_elsys_ers.json",
                         doc=base | {"deduplicationId": str(uuid.UUID(int=n * 100 + i)), "fCnt": n * 100 + i})
                 for i in range(25)]
        p.handle(batch)
    assert p.buffer.used_bytes() <= p.max_bytes
    dropped = p.buffer.counters()["dropped"]
    assert dropped > 0
    (gap,) = p.buffer.gaps("city")
    assert gap.first_id == 1 and gap.count == dropped
    backlog = BufferBacklog(p.buffer, "city", p.cfg.upstreams[0].notice_topic, p.cfg.edge_id)
    ((notice_id, notice),) = backlog.notices()
    assert notice.topic == "lorawan-edge/gw-test/notice"
    assert json.loads(notice.payload) == {"type": "gap", "edge_id": "gw-test", "upstream": "city",
                                          "dropped": dropped, "first_time": T0, "last_time": T0,
                                          "reason": "buffer full"}
    backlog.notice_delivered(notice_id)
    assert backlog.notices() == []


def test_pipeline_handle_out_of_range_number_does_not_fail_the_batch(pipelines: Callable[..., Pipeline]) -> None:
    p = pipelines()
    poison = json.loads((EVENTS / "v4_up_minimal.json").read_text()) | {"fCnt": 2**64 - 1}
    p.handle([message(EVENTS / "v4_up_elsys_ers.json"), message(EVENTS / "v4_up_minimal.json", doc=poison)])
    assert [e.dev_eui for e in p.buffer.read(0, 10)] == [ELSYS]
    assert p.buffer.counters()["malformed"] == 1
