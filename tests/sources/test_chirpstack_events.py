"""ChirpStack event parsing: every fixture to the right model event, and hostile input to Malformed, never raising."""

from __future__ import annotations

import copy
import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from chirpstack_api import integration
from google.protobuf import json_format
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.model import DeviceEvent, Malformed, Uplink
from edge.sources.chirpstack_events import event_kind, parse

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
CHIRPSTACK = FIXTURES / "chirpstack"
EVENTS = FIXTURES / "events"
HOSTILE = EVENTS / "hostile"

APP = "17c82e96-be03-4f38-aef3-f83d48582d97"
RECEIVED = 1_000_000.0  # local receive time; used only when an event carries no time
PROTOBUF_CLASSES = {
    "up": integration.UplinkEvent,
    "join": integration.JoinEvent,
    "status": integration.StatusEvent,
    "log": integration.LogEvent,
    "ack": integration.AckEvent,
    "txack": integration.TxAckEvent,
    "location": integration.LocationEvent,
}


def topic(kind: str, dev_eui: str = "0101010101010101") -> str:
    return f"application/{APP}/device/{dev_eui}/event/{kind}"


def ts(text: str) -> float:
    """POSIX seconds of an RFC 3339 time, with the fraction cut to microseconds as Python keeps it."""
    head, _, rest = text.partition(".")
    frac = "".join(c for c in rest if c.isdigit())[:6].ljust(6, "0") if rest else "000000"
    base = datetime.strptime(head[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    return base.timestamp() + int(frac) / 1e6


def fixture_kind(path: Path) -> str:
    """The topic suffix a fixture belongs to, from its name (`v4_up_...` -> `up`)."""
    return path.name.split("_")[1].split(".")[0]


def load(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


def parse_doc(doc: dict[str, Any], kind: str = "up") -> Any:
    return parse(topic(kind), json.dumps(doc).encode(), RECEIVED)


# -- every shared ChirpStack fixture -------------------------------------------------------------

# file -> (type, event kind for DeviceEvent, time text)
EXPECTED_EVENTS: dict[str, tuple[str, str]] = {
    "v4_ack.docs.json": ("ack", "2022-07-18T09:38:49.235700766+00:00"),
    "v4_join.docs.json": ("join", "2022-07-18T09:33:28.823500726+00:00"),
    "v4_join.serialised.json": ("join", "2026-03-02T10:14:01.823500Z"),
    "v4_location.docs.json": ("location", "2022-07-18T09:55:11.059481003+00:00"),
    "v4_log_uplink_codec.serialised.json": ("log", "2026-03-02T10:25:04.311414Z"),
    "v4_log_uplink_mic.docs.json": ("log", "2022-07-18T09:39:57.311414029+00:00"),
    "v4_status.docs.json": ("status", "2022-07-18T09:35:06.927172638+00:00"),
    "v4_status.serialised.json": ("status", "2026-03-02T10:35:06.927172Z"),
    "v4_txack.docs.json": ("txack", "2022-07-18T09:37:48.929184085+00:00"),
}
EXPECTED_UPLINKS = {
    "v4_up_no_object.docs.json",
    "v4_up_with_object.serialised.json",
    "v4_up_with_object.serialised.pb",
    "v4_up_codec_error_no_object.serialised.json",
    "v3_up.serialised.json",
}
EXPECTED_MALFORMED = {"v3_up.docs.json", "v4_command_down.serialised.json"}


def test_chirpstack_fixtures_all_have_an_expectation() -> None:
    names = {p.name for p in CHIRPSTACK.iterdir() if p.suffix in (".json", ".pb")}
    assert names == set(EXPECTED_EVENTS) | EXPECTED_UPLINKS | EXPECTED_MALFORMED


@pytest.mark.parametrize("name", sorted(EXPECTED_EVENTS))
def test_parse_device_event_fixture(name: str) -> None:
    kind, when = EXPECTED_EVENTS[name]
    path = CHIRPSTACK / name
    assert fixture_kind(path) == kind
    event = parse(topic(kind), path.read_bytes(), RECEIVED)
    assert isinstance(event, DeviceEvent), event
    assert event.kind == kind
    assert event.dev_eui == "0101010101010101"
    assert event.application_id == APP
    assert event.time == pytest.approx(ts(when), abs=1e-6)
    assert event.summary


@pytest.mark.parametrize(("name", "needle"), [
    ("v4_join.docs.json", "devAddr=00189440"),
    ("v4_status.docs.json", "margin=10 battery=88.3"),
    ("v4_log_uplink_mic.docs.json", "ERROR UPLINK_MIC"),
    ("v4_log_uplink_codec.serialised.json", "UPLINK_CODEC: JS error: Error: interrupted"),
    ("v4_ack.docs.json", "acknowledged=True"),
    ("v4_txack.docs.json", "queueItemId=42cb6459-a640-46ec-9623-bdff39dc4736"),
    ("v4_location.docs.json", "lat=37.344214 lon=-8.839375"),
])
def test_parse_device_event_summary(name: str, needle: str) -> None:
    event = parse(topic(fixture_kind(CHIRPSTACK / name)), (CHIRPSTACK / name).read_bytes(), RECEIVED)
    assert isinstance(event, DeviceEvent)
    assert needle in event.summary


def test_parse_device_event_ids() -> None:
    ack = parse(topic("ack"), (CHIRPSTACK / "v4_ack.docs.json").read_bytes(), RECEIVED)
    txack = parse(topic("txack"), (CHIRPSTACK / "v4_txack.docs.json").read_bytes(), RECEIVED)
    assert isinstance(ack, DeviceEvent) and isinstance(txack, DeviceEvent)
    assert ack.event_id == "856a03e7-80f6-4c26-b971-9dcb34a59c2e"  # deduplicationId wins
    assert txack.event_id == "42cb6459-a640-46ec-9623-bdff39dc4736"  # no deduplicationId: queueItemId


def test_parse_v4_up_docs_form_without_default_fields() -> None:
    """The 2022 docs example leaves out fCnt, adr, confirmed: they read as their defaults."""
    doc = load(CHIRPSTACK / "v4_up_no_object.docs.json")
    assert "fCnt" not in doc and "confirmed" not in doc
    up = parse(topic("up"), (CHIRPSTACK / "v4_up_no_object.docs.json").read_bytes(), RECEIVED)
    assert isinstance(up, Uplink)
    assert up.uplink_id == "3ac7e3c4-4401-4b8d-9386-a5c902f9202d"
    assert up.device.dev_eui == "0101010101010101"
    assert up.device.application_id == APP
    assert up.device.application_name == "Test application"
    assert up.device.device_profile_name == "Test device-profile"
    assert up.device.tenant_id == "52f14cd4-c6f1-4fbd-8f87-4025e1d49242"
    assert up.device.tags == {"key": "value"}
    assert up.time == pytest.approx(ts("2022-07-18T09:34:15.775023242+00:00"), abs=1e-6)
    assert up.fport == 1
    assert up.payload == b"\xaa"
    assert up.object is None
    assert up.confirmed is False
    r = up.radio
    assert (r.fcnt, r.fport, r.frequency, r.spreading_factor, r.dr) == (0, 1, 867100000, 11, 1)
    assert (r.rssi, r.snr, r.gateway_id, r.gateways) == (-36.0, 10.5, "0016c001f153a14c", 1)


def test_parse_v4_up_serialised_form_with_default_fields() -> None:
    up = parse(topic("up"), (CHIRPSTACK / "v4_up_with_object.serialised.json").read_bytes(), RECEIVED)
    assert isinstance(up, Uplink)
    assert up.uplink_id == "3ac7e3c4-4401-4b8d-9386-a5c902f9202d"
    assert up.device.dev_eui == "0101010101010101"
    assert up.device.device_name == "greenhouse-th-01"
    assert up.device.tags == {"site": "greenhouse"}
    assert up.time == pytest.approx(ts("2026-03-02T10:15:04.204113Z"), abs=1e-6)
    assert up.fport == 2
    assert up.payload == bytes.fromhex("00e601c20ce4")
    assert up.object == {"temperature": 23.0, "humidity": 45.0, "batteryVoltage": 3.3}
    r = up.radio
    assert (r.fcnt, r.fport, r.frequency, r.spreading_factor, r.dr) == (42, 2, 868300000, 7, 5)
    assert (r.rssi, r.snr, r.gateway_id, r.gateways) == (-57.0, 9.5, "0016c001f153a14c", 1)


def test_parse_v4_up_default_fields_present_or_absent_agree() -> None:
    """Dropping the scalars pbjson emits only since v4.1 (holding defaults) changes nothing."""
    doc = load(CHIRPSTACK / "v4_up_codec_error_no_object.serialised.json")
    full = parse_doc(doc)
    stripped = copy.deepcopy(doc)
    for key in ("confirmed", "regionConfigId"):
        stripped.pop(key)
    stripped["deviceInfo"].pop("deviceClassEnabled")
    assert parse_doc(stripped) == full
    # And fCnt 0 / confirmed false / tags {} written out equal them left out.
    zero = copy.deepcopy(stripped)
    zero.pop("fCnt")
    explicit = copy.deepcopy(zero) | {"fCnt": 0, "confirmed": False}
    explicit["deviceInfo"]["tags"] = {}
    zero["deviceInfo"].pop("tags")
    assert parse_doc(zero) == parse_doc(explicit)


def test_parse_v4_up_codec_error_has_no_object() -> None:
    up = parse(topic("up"), (CHIRPSTACK / "v4_up_codec_error_no_object.serialised.json").read_bytes(), RECEIVED)
    log = parse(topic("log"), (CHIRPSTACK / "v4_log_uplink_codec.serialised.json").read_bytes(), RECEIVED)
    assert isinstance(up, Uplink) and isinstance(log, DeviceEvent)
    assert up.object is None
    assert up.uplink_id == "9d3b1f0e-2c55-4c47-9a51-6b1d2f0c7e11"
    assert up.time == pytest.approx(ts("2026-03-02T10:15:04.204113Z"), abs=1e-6)
    assert (up.device.dev_eui, up.fport, up.payload) == ("0101010101010101", 2, bytes.fromhex("00e601c20ce4"))
    r = up.radio
    assert (r.fcnt, r.frequency, r.spreading_factor, r.rssi, r.snr, r.gateways) == (43, 868300000, 7, -57.0, 9.5, 1)
    assert log.kind == "log" and "UPLINK_CODEC" in log.summary
    # The log event points at the failed uplink through context.deduplication_id.
    assert load(CHIRPSTACK / "v4_log_uplink_codec.serialised.json")["context"]["deduplication_id"] == up.uplink_id


def test_parse_time_nanoseconds_offset_and_z_agree() -> None:
    doc = load(EVENTS / "v4_up_minimal.json")
    forms = ["2026-03-02T10:15:04.204113242+00:00", "2026-03-02T10:15:04.204113242Z",
             "2026-03-02T10:15:04.204113Z", "2026-03-02T12:15:04.204113+02:00"]
    expected = ts("2026-03-02T10:15:04.204113Z")
    for form in forms:
        up = parse_doc(doc | {"time": form})
        assert isinstance(up, Uplink), form
        assert up.time == pytest.approx(expected, abs=1e-6), form


def test_parse_time_missing_uses_received() -> None:
    doc = load(EVENTS / "v4_up_minimal.json")
    doc.pop("time")
    up = parse_doc(doc)
    assert isinstance(up, Uplink)
    assert up.time == RECEIVED


@pytest.fixture
def stockholm_tz(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "Europe/Stockholm")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_parse_time_without_offset_is_not_local_time(stockholm_tz: None) -> None:
    doc = load(EVENTS / "v4_up_minimal.json") | {"time": "2026-03-02T10:15:04"}
    event = parse_doc(doc)
    # Either refused, or read as UTC (ChirpStack's only zone) -- never shifted by the gateway's TZ.
    assert isinstance(event, Malformed) or event.time == ts("2026-03-02T10:15:04Z")


def test_parse_elsys_fixture_best_rssi_of_three_gateways() -> None:
    up = parse(topic("up", "a81758fffe0346f1"), (EVENTS / "v4_up_elsys_ers.json").read_bytes(), RECEIVED)
    assert isinstance(up, Uplink)
    assert up.device.dev_eui == "a81758fffe0346f1"
    assert up.device.tags == {"decoder": "elsys/ers"}
    assert up.time == 1795600800.0
    assert up.fport == 5
    assert up.payload == bytes.fromhex("0100e00229040027050607 0e16".replace(" ", ""))
    r = up.radio
    assert r.gateways == 3
    assert (r.rssi, r.snr) == (-87.0, 9.5)
    assert r.gateway_id == "acde48fffe000001"  # lower-cased
    assert (r.fcnt, r.frequency, r.spreading_factor, r.dr) == (1234, 868100000, 7, 5)


def test_parse_dev_eui_upper_case_is_lowered() -> None:
    doc = load(EVENTS / "v4_up_minimal.json")
    doc["deviceInfo"]["devEui"] = "A81758FFFE0346F1"
    up = parse_doc(doc)
    assert isinstance(up, Uplink)
    assert up.device.dev_eui == "a81758fffe0346f1"


# -- protobuf (json=false) ------------------------------------------------------------------------

def test_parse_protobuf_equals_json_twin() -> None:
    from_pb = parse(topic("up"), (CHIRPSTACK / "v4_up_with_object.serialised.pb").read_bytes(), RECEIVED)
    from_json = parse(topic("up"), (CHIRPSTACK / "v4_up_with_object.serialised.json").read_bytes(), RECEIVED)
    assert isinstance(from_pb, Uplink)
    assert from_pb == from_json


V4_JSON = sorted(p for p in [*CHIRPSTACK.glob("v4_*.json"), *EVENTS.glob("v4_*.json")]
                 if fixture_kind(p) in PROTOBUF_CLASSES)


@pytest.mark.parametrize("path", V4_JSON, ids=lambda p: p.name)
def test_parse_protobuf_of_every_v4_fixture_equals_json(path: Path) -> None:
    kind = fixture_kind(path)
    message = json_format.Parse(path.read_text(), PROTOBUF_CLASSES[kind]())
    as_json = parse(topic(kind), path.read_bytes(), RECEIVED)
    as_pb = parse(topic(kind), message.SerializeToString(), RECEIVED)
    assert not isinstance(as_json, Malformed), as_json
    assert as_pb == as_json


def test_parse_protobuf_truncated_is_malformed() -> None:
    pb = (CHIRPSTACK / "v4_up_with_object.serialised.pb").read_bytes()
    message = integration.UplinkEvent.FromString(pb)
    # Bytes up to the end of device_info: field 1 (id), 2 (time), 3 (device_info).
    end_of_device_info = len(integration.UplinkEvent(
        deduplication_id=message.deduplication_id, time=message.time, device_info=message.device_info,
    ).SerializeToString())
    for cut in range(len(pb)):
        event = parse(topic("up"), pb[:cut], RECEIVED)
        if cut < end_of_device_info:
            assert isinstance(event, Malformed), cut
        else:
            # A cut at a field boundary is a valid, shorter message; anything else is Malformed.
            assert isinstance(event, Malformed | Uplink), cut


def test_parse_protobuf_on_non_uplink_kind_without_class_is_malformed() -> None:
    pb = (CHIRPSTACK / "v4_up_with_object.serialised.pb").read_bytes()
    event = parse(topic("integration"), pb, RECEIVED)
    assert isinstance(event, Malformed)
    assert "integration" in event.error


# -- v3 -------------------------------------------------------------------------------------------

def test_parse_v3_json_marshaler_base64_euis_and_object_json() -> None:
    up = parse(topic("up"), (CHIRPSTACK / "v3_up.serialised.json").read_bytes(), RECEIVED)
    assert isinstance(up, Uplink)
    assert up.device.dev_eui == "0101010101010101"  # AQEBAQEBAQE=
    assert up.device.application_id == "123"
    assert up.device.device_profile_name == "TH-sensor (JS codec)"
    assert up.device.tags == {"site": "greenhouse"}
    assert up.time == pytest.approx(ts("2023-01-10T10:15:04.104113Z"), abs=1e-6)  # rxInfo time
    assert up.fport == 2
    assert up.payload == bytes.fromhex("00e601c20ce4")
    assert up.object == {"temperature": 23.0, "humidity": 45.0, "batteryVoltage": 3.3}
    r = up.radio
    assert (r.fcnt, r.frequency, r.spreading_factor, r.dr) == (42, 868300000, 7, 5)
    assert (r.rssi, r.snr, r.gateway_id, r.gateways) == (-57.0, 9.5, "0016c001f153a14c", 1)  # ABbAAfFToUw=
    assert str(uuid.UUID(up.uplink_id)) == up.uplink_id


def test_parse_v3_json_v3_marshaler_hex_euis_and_object() -> None:
    up = parse(topic("up", "0202020202020202"), (EVENTS / "v3_up.json_v3.json").read_bytes(), RECEIVED)
    assert isinstance(up, Uplink)
    assert up.device.dev_eui == "0202020202020202"
    assert up.device.application_id == "7"
    assert up.time == pytest.approx(ts("2019-11-08T13:59:25.048445123Z"), abs=1e-6)
    assert up.fport == 2
    assert up.payload == bytes.fromhex("00e601c20ce4")
    assert up.object == {"temperature": 23.0, "humidity": 45.0, "batteryVoltage": 3.3}
    r = up.radio
    assert (r.fcnt, r.frequency, r.gateways) == (10, 868500000, 2)
    assert (r.rssi, r.snr, r.gateway_id) == (-48.0, 9.0, "0404040404040404")


def test_parse_v3_uplink_id_stable_for_same_device_fcnt_time_payload() -> None:
    doc = load(EVENTS / "v3_up.json_v3.json")
    first = parse_doc(doc)
    again = parse_doc(copy.deepcopy(doc) | {"adr": True, "dr": 3})  # other fields do not matter
    assert isinstance(first, Uplink) and isinstance(again, Uplink)
    assert first.uplink_id == again.uplink_id
    assert uuid.UUID(first.uplink_id).version == 5
    # The json marshaler of the same uplink (base64 EUI) gives the same id.
    b64 = copy.deepcopy(doc) | {"devEUI": "AgICAgICAgI="}
    assert parse_doc(b64).uplink_id == first.uplink_id


@pytest.mark.parametrize("change", [
    {"fCnt": 11},
    {"devEUI": "0202020202020203"},
    {"rxInfo": [{"gatewayID": "0303030303030303", "time": "2019-11-08T14:09:25.048445123Z", "rssi": -60}]},
    {"data": "AQID"},
], ids=["fcnt", "dev_eui", "time", "payload"])
def test_parse_v3_uplink_id_differs_otherwise(change: dict[str, Any]) -> None:
    doc = load(EVENTS / "v3_up.json_v3.json")
    first = parse_doc(doc)
    other = parse_doc(copy.deepcopy(doc) | change)
    assert isinstance(first, Uplink) and isinstance(other, Uplink)
    assert first.uplink_id != other.uplink_id


def test_parse_v3_docs_example_placeholder_data_is_malformed() -> None:
    event = parse(topic("up"), (CHIRPSTACK / "v3_up.docs.json").read_bytes(), RECEIVED)
    assert isinstance(event, Malformed)
    assert "base64" in event.error
    assert event.payload == (CHIRPSTACK / "v3_up.docs.json").read_bytes()


def test_parse_v3_docs_example_with_real_data_parses() -> None:
    doc = load(CHIRPSTACK / "v3_up.docs.json") | {"data": "AQID"}
    up = parse_doc(doc)
    assert isinstance(up, Uplink)
    assert up.device.dev_eui == "0202020202020202"
    assert up.radio.gateway_id == "0303030303030303"
    assert up.object == {"temperatureSensor": 25, "humiditySensor": 32}
    assert up.radio.spreading_factor == 11


def test_parse_v3_non_uplink_event() -> None:
    doc = {"applicationID": "123", "devEUI": "0202020202020202", "margin": 7, "batteryLevel": 50}
    event = parse_doc(doc, "status")
    assert isinstance(event, DeviceEvent)
    assert (event.kind, event.dev_eui, event.application_id) == ("status", "0202020202020202", "123")
    assert event.time == RECEIVED


# -- hostile input --------------------------------------------------------------------------------

# Out-of-range values that parse() currently lets through as Uplink (see the xfail reasons).
HOSTILE_BUGS: dict[str, str] = {}  # fixtures that still parse; empty since the range checks
HOSTILE_FILES = sorted(p.name for p in HOSTILE.iterdir())


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=HOSTILE_BUGS[n])) if n in HOSTILE_BUGS else n
    for n in HOSTILE_FILES
])
def test_parse_hostile_fixture_is_malformed(name: str) -> None:
    payload = (HOSTILE / name).read_bytes()
    event = parse(topic("up"), payload, RECEIVED)
    assert isinstance(event, Malformed), event
    assert event.payload == payload
    assert event.topic == topic("up")
    assert event.error


def test_parse_minimal_base_of_hostile_fixtures_is_valid() -> None:
    """Each hostile file breaks one thing of this valid minimal uplink."""
    up = parse(topic("up"), (EVENTS / "v4_up_minimal.json").read_bytes(), RECEIVED)
    assert isinstance(up, Uplink)
    assert (up.device.dev_eui, up.fport, up.payload) == ("0101010101010101", 1, b"\xaa")


@pytest.mark.parametrize("bad_topic", [
    "application/1/device/0101010101010101/command/down",
    "application/1/device/0101010101010101/event/",
    "application/1/device/0101010101010101/event/up/extra",
    "application/1/device/0101010101010101/event",
    "application/1/device/0101010101010101",
    "",
    "#",
])
def test_parse_non_event_topic_is_malformed(bad_topic: str) -> None:
    payload = (CHIRPSTACK / "v4_up_with_object.serialised.json").read_bytes()
    event = parse(bad_topic, payload, RECEIVED)
    assert isinstance(event, Malformed)
    assert "topic" in event.error


def test_parse_unknown_event_kind_is_malformed() -> None:
    payload = (CHIRPSTACK / "v4_up_with_object.serialised.json").read_bytes()
    assert isinstance(parse(topic("foo"), payload, RECEIVED), Malformed)


def test_event_kind_of_topics() -> None:
    assert event_kind(topic("up")) == "up"
    assert event_kind(topic("txack")) == "txack"
    assert event_kind("application/1/device/x/command/down") == ""
    assert event_kind("application/1/device/x/event/up/more") == ""


@pytest.mark.parametrize("payload", [b"", b" ", b"{", b"}", b"[]", b"null", b"\x00" * 10, b"\xff" * 64,
                                     b"\n{\"deviceInfo\": 1}", b"{\"devEUI\": null}", b"{\"devEUI\": []}"])
def test_parse_small_garbage_is_malformed(payload: bytes) -> None:
    for kind in PROTOBUF_CLASSES:
        assert isinstance(parse(topic(kind), payload, RECEIVED), Malformed)


# -- property tests -------------------------------------------------------------------------------

KINDS = st.sampled_from(sorted(PROTOBUF_CLASSES))
SEED_DOCS = [load(p) for p in sorted([*CHIRPSTACK.glob("*.json"), *EVENTS.glob("*.json")])]
JSON_LEAVES = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=24),
    st.sampled_from(["", "0101010101010101", "AQEBAQEBAQE=", "2026-03-02T10:15:04Z", "qg==", "..."]),
)
JSON_VALUES = st.recursive(JSON_LEAVES, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=6)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


@st.composite
def mutated_documents(draw: st.DrawFn) -> dict[str, Any]:
    """A fixture document with 1-4 values replaced by random JSON, or keys deleted."""
    doc: dict[str, Any] = copy.deepcopy(draw(st.sampled_from(SEED_DOCS)))
    for _ in range(draw(st.integers(1, 4))):
        paths = _paths(doc)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = doc
        for step in path[:-1]:
            parent = parent[step]
        if isinstance(parent, dict) and draw(st.booleans()):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(JSON_VALUES)
    return doc


def _check_event(event: Any, payload: bytes, where: str) -> None:
    assert isinstance(event, Uplink | DeviceEvent | Malformed)
    if isinstance(event, Malformed):
        assert event.payload == payload and event.topic == where and event.error
    elif isinstance(event, Uplink):
        assert isinstance(event.uplink_id, str) and event.uplink_id
        assert isinstance(event.payload, bytes)
        assert event.object is None or isinstance(event.object, dict)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=st.binary(max_size=400), kind=KINDS)
def test_parse_random_bytes_never_raise(payload: bytes, kind: str) -> None:
    _check_event(parse(topic(kind), payload, RECEIVED), payload, topic(kind))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=mutated_documents(), kind=KINDS)
def test_parse_mutated_fixture_documents_never_raise(doc: dict[str, Any], kind: str) -> None:
    payload = json.dumps(doc).encode()
    _check_event(parse(topic(kind), payload, RECEIVED), payload, topic(kind))


@settings(max_examples=200, deadline=None)
@given(pb=st.sampled_from([(CHIRPSTACK / "v4_up_with_object.serialised.pb").read_bytes()]),
       at=st.integers(0, 528), value=st.integers(0, 255))
def test_parse_protobuf_with_one_byte_changed_never_raises(pb: bytes, at: int, value: int) -> None:
    changed = pb[:at] + bytes([value]) + pb[at + 1:]
    _check_event(parse(topic("up"), changed, RECEIVED), changed, topic("up"))


def test_parse_is_pure() -> None:
    """Same input, same output; nothing depends on a previous call."""
    payload = (EVENTS / "v4_up_elsys_ers.json").read_bytes()
    first = parse(topic("up"), payload, RECEIVED)
    parse(topic("up"), b"garbage", RECEIVED)
    assert parse(topic("up"), payload, RECEIVED) == first
