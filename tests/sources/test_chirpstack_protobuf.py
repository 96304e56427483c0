"""Protobuf events read field by field give what protobuf's own JSON form gives through the JSON reader."""

from __future__ import annotations

import json
import math
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from chirpstack_api import integration
from google.protobuf import json_format
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.model import DeviceEvent, Malformed, Uplink
from edge.sources.chirpstack_events import parse
from tests.sources.test_chirpstack_events import FIXTURES, RECEIVED, V4_JSON, fixture_kind
from tests.sources.test_chirpstack_events import PROTOBUF_CLASSES as CLASSES


def topic(kind: str) -> str:
    return f"application/app/device/0101010101010101/event/{kind}"


def via_json(kind: str, message: Any) -> Any:
    """What the parser made of a protobuf event before it read protobuf directly: its JSON form, parsed."""
    if not message.HasField("device_info") or not message.device_info.dev_eui:
        return Malformed(topic(kind), b"", "no device_info")
    try:
        doc = json_format.MessageToDict(message)
    except (ValueError, json_format.Error):  # a Timestamp out of range, NaN in a Struct
        return Malformed(topic(kind), b"", "not serialisable")
    return parse(topic(kind), orjson.dumps(doc), RECEIVED)


def assert_same(kind: str, message: Any) -> Any:
    direct = parse(topic(kind), message.SerializeToString(), RECEIVED)
    expected = via_json(kind, message)
    if isinstance(expected, Malformed):
        assert isinstance(direct, Malformed), (direct, expected)
    else:
        assert direct == expected
    return direct


# -- the fixtures, and the JSON fixtures encoded as protobuf ---------------------------------------

@pytest.mark.parametrize("path", V4_JSON, ids=lambda p: p.name)
def test_protobuf_of_every_v4_fixture_equals_its_json(path: Path) -> None:
    kind = fixture_kind(path)
    message = json_format.ParseDict(json.loads(path.read_text()), CLASSES[kind]())
    direct = assert_same(kind, message)
    assert direct == parse(topic(kind), path.read_bytes(), RECEIVED)
    assert isinstance(direct, Uplink | DeviceEvent)


def test_protobuf_twin_fixture_equals_json_fixture() -> None:
    chirpstack = FIXTURES / "chirpstack"
    from_pb = parse(topic("up"), (chirpstack / "v4_up_with_object.serialised.pb").read_bytes(), RECEIVED)
    assert isinstance(from_pb, Uplink)
    assert from_pb == parse(topic("up"), (chirpstack / "v4_up_with_object.serialised.json").read_bytes(), RECEIVED)


@pytest.mark.parametrize("snr", [10.2, -7.3, 0.1, 12.75, -0.0])
def test_protobuf_float32_snr_reads_as_the_decimal_json_writes(snr: float) -> None:
    doc = json.loads((FIXTURES / "events" / "v4_up_elsys_ers.json").read_text())
    for rx in doc["rxInfo"]:
        rx["snr"] = snr
    message = json_format.ParseDict(doc, integration.UplinkEvent())
    up = assert_same("up", message)
    assert isinstance(up, Uplink)
    assert up.radio.snr is not None and repr(up.radio.snr) == repr(snr)  # 10.2, not 10.199999809265137


def test_protobuf_defaults_read_as_absent_like_json_without_default_fields() -> None:
    message = integration.UplinkEvent(deduplication_id=str(uuid.UUID(int=1, version=4)), f_port=1, data=b"\x01")
    message.device_info.dev_eui = "0101010101010101"
    message.rx_info.add(gateway_id="0016c001f153a14c")  # rssi 0, snr 0: not reported
    up = assert_same("up", message)
    assert isinstance(up, Uplink)
    r = up.radio
    assert (r.rssi, r.snr, r.dr, r.frequency, r.spreading_factor, r.fcnt, r.gateways) == (None, None, None, None,
                                                                                             None, 0, 1)
    assert up.time == RECEIVED and up.object is None


# -- random events of every kind -------------------------------------------------------------------

def mostly(good: list[Any], bad: list[Any]) -> st.SearchStrategy[Any]:
    """One of `good` most of the time, one of `bad` now and then."""
    return either(st.sampled_from(good), st.sampled_from(bad))


def either(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """`good` about 15 times in 16: an event breaks one rule at a time, mostly."""
    return st.integers(0, 15).flatmap(lambda n: bad if n == 0 else good)


TEXT = st.text(max_size=12)
FLOAT32 = either(st.one_of(st.sampled_from([0.0, -0.0, 9.5, 10.2, -7.25]), st.floats(-40, 40, width=32)),
                 st.one_of(st.sampled_from([math.nan, math.inf, -math.inf]), st.floats(width=32)))
HEX = st.sampled_from(["0016c001f153a14c", "ACDE48FFFE000001", "", "not-a-gateway", "0101010101010101"])


JSON_VALUE = st.recursive(st.none() | st.booleans() | st.floats(allow_nan=False, allow_infinity=False) | TEXT,
                          lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
                          max_leaves=8)


@st.composite
def device_info(draw: st.DrawFn, message: Any) -> None:
    info = message.device_info
    info.dev_eui = draw(mostly(["0101010101010101", "A81758FFFE0346F1"], ["", "zz00000000000000"]))
    info.application_id = draw(mostly(["17c82e96-be03-4f38-aef3-f83d48582d97", ""], ["x" * 129]))
    info.device_name = draw(either(TEXT, st.just("n" * 300)))
    info.application_name = draw(TEXT)
    info.device_profile_name = draw(TEXT)
    info.tenant_id = draw(TEXT)
    for key, value in draw(st.dictionaries(TEXT, TEXT, max_size=3)).items():
        info.tags[key] = value
    if draw(st.booleans()):
        message.time.seconds = draw(either(st.integers(0, 2**32), st.sampled_from(
            [-62135596801, -62135596800, 253402300799, 253402300800])))
        message.time.nanos = draw(mostly([0, 1, 999, 999_999_999, 123_456_789], [-1, 1_000_000_000]))


@st.composite
def events(draw: st.DrawFn) -> tuple[str, Any]:
    kind = draw(st.sampled_from(sorted(CLASSES)))
    message = CLASSES[kind]()
    draw(device_info(message))
    if kind == "up":
        message.deduplication_id = draw(mostly([str(uuid.UUID(int=7, version=4))], ["", "not-a-uuid"]))
        message.dr = draw(either(st.integers(0, 15), st.integers(16, 2**32 - 1)))
        message.f_cnt = draw(st.integers(0, 2**32 - 1))
        message.f_port = draw(either(st.integers(0, 255), st.integers(256, 300)))
        message.confirmed = draw(st.booleans())
        message.data = draw(either(st.binary(max_size=256), st.binary(min_size=257, max_size=300)))
        if draw(st.booleans()):
            message.object.update(draw(st.dictionaries(TEXT, JSON_VALUE, max_size=4)))
        for _ in range(draw(st.integers(0, 4))):
            message.rx_info.add(rssi=draw(mostly([0, -57, -120, -87, -3], [20000, -2**31])), snr=draw(FLOAT32),
                                gateway_id=draw(HEX))
        if draw(st.booleans()):
            message.tx_info.frequency = draw(st.sampled_from([0, 868100000, 2**32 - 1]))
            if draw(st.booleans()):
                message.tx_info.modulation.lora.spreading_factor = draw(mostly(list(range(13)), [13, 14]))
            else:
                message.tx_info.modulation.fsk.datarate = 50000
    elif kind == "log":
        message.level = draw(st.integers(0, 5))
        message.code = draw(st.integers(0, 30))
        message.description = draw(TEXT)
        if draw(st.booleans()):
            message.context["deduplication_id"] = draw(mostly(["abc", ""], ["d" * 200]))
    elif kind == "status":
        message.margin = draw(st.integers(-30, 30))
        message.battery_level = draw(FLOAT32)
    elif kind in ("ack", "txack"):
        message.queue_item_id = draw(mostly(["", "42cb6459-a640-46ec-9623-bdff39dc4736"], ["q" * 200]))
        if kind == "ack":
            message.acknowledged = draw(st.booleans())
    elif kind == "join":
        message.dev_addr = draw(st.sampled_from(["", "00189440"]))
    elif kind == "location" and draw(st.booleans()):
        message.location.latitude = draw(st.floats(allow_nan=True, allow_infinity=True))
        message.location.longitude = draw(st.sampled_from([0.0, -0.0, -8.839375]))
    if kind in ("up", "join", "status", "ack", "location") and draw(st.booleans()):
        message.deduplication_id = draw(mostly(["856a03e7-80f6-4c26-b971-9dcb34a59c2e"], ["i" * 200]))
    return kind, message


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event=events())
def test_protobuf_event_reads_as_its_json_form(event: tuple[str, Any]) -> None:
    assert_same(*event)
