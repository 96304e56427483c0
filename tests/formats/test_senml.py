"""SenML packs (RFC 8428): the reference uplink resolves to the reference records, CBOR labels, names and units."""

from __future__ import annotations

import json
import re
import struct
import uuid
from pathlib import Path
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.formats import senml
from edge.model import Entry, RadioInfo, Reading
from edge.vocabulary import QUANTITIES

RECORDS = Path(__file__).resolve().parents[1] / "fixtures" / "records"
PREFIX = "elsys-ers_a81758fffe0346f1"
DEV_EUI = "a81758fffe0346f1"
T0 = 1795600800.0  # 2026-11-25T10:00:00Z
UPLINK_ID = "3ac7e3c4-4401-4b8d-9386-a5c902f9202d"
# RFC 8428 §4.5.1
NAME_RE = re.compile(r"^[A-Za-z0-9][-:./_A-Za-z0-9]*$")
READINGS = [
    Reading("temperature", 22.4, "Cel"),
    Reading("humidity", 41, "%RH"),
    Reading("illuminance", 39, "lx"),
    Reading("motion", 6, "count"),
    Reading("battery-voltage", 3.606, "V"),
]
# The link pack's radio values are the illustrative ones of the reference link file.
RADIO = RadioInfo(fcnt=1234, fport=5, frequency=868100000, spreading_factor=7, dr=None, rssi=-87.0, snr=9.5,
                  gateway_id="acde48fffe000001", gateways=1)


def reference(name: str) -> Any:
    return json.loads((RECORDS / f"{PREFIX}.{name}").read_text())


def entry(*, id: int = 1, time: float = T0, uplink_id: str = UPLINK_ID, dev_eui: str = DEV_EUI,
          readings: list[Reading] | None = None, radio: RadioInfo = RADIO) -> Entry:
    return Entry(id=id, uplink_id=uplink_id, dev_eui=dev_eui, application_id="app", gateway_id="acde48fffe000001",
                 time=time, readings=READINGS if readings is None else readings, radio=radio)


def resolve_independently(pack: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """RFC 8428 §4.6 resolution written out in the test, so senml.resolve is not checked against itself."""
    out: list[dict[str, Any]] = []
    base: dict[str, Any] = {"bn": "", "bt": 0, "bu": None}
    for rec in pack:
        for key in base:
            if key in rec:
                base[key] = rec[key]
        item: dict[str, Any] = {"n": base["bn"] + rec.get("n", ""), "t": base["bt"] + rec.get("t", 0)}
        unit = rec.get("u", base["bu"])
        if unit is not None:
            item["u"] = unit
        for key in ("v", "vs", "vb", "vd", "s"):
            if key in rec:
                item[key] = rec[key]
        out.append(item)
    return out


def without_uplink_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if not r["n"].endswith("_uplink")]


def bits(x: float) -> bytes:
    return struct.pack(">d", x)


# -- the reference uplink -------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", [senml.JSON, senml.CBOR])
def test_senml_reference_uplink_resolves_to_reference_records(fmt: str) -> None:
    pack = senml.decode(senml.encode(senml.measurement_records([entry()]), fmt), fmt)
    resolved = without_uplink_records(resolve_independently(pack))
    assert resolved == reference("senml-resolved.json")
    assert without_uplink_records(senml.resolve(pack)) == reference("senml-resolved.json")


def test_senml_reference_pack_layout() -> None:
    records = senml.measurement_records([entry()])
    assert records[0] == {"bn": f"urn:dev:mac:{DEV_EUI}_", "bt": T0, "n": "uplink", "vs": f"urn:uuid:{UPLINK_ID}"}
    # After the id record, the readings are the reference wire pack's records without base fields.
    wire = reference("senml.json")
    wire[0] = {k: v for k, v in wire[0].items() if k not in ("bn", "bt")}
    assert records[1:] == wire
    assert not any("t" in r for r in records)  # readings carry no time of their own


def test_senml_resolve_reference_wire_pack() -> None:
    assert senml.resolve(reference("senml.json")) == reference("senml-resolved.json")


def _reference_cbor() -> bytes:
    lines = (RECORDS / f"{PREFIX}.senml-cbor.hex.txt").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("# Hex, one line"))
    hex_line = next(line for line in lines[start + 1:] if line and not line.startswith("#"))
    return bytes.fromhex(hex_line)


def test_senml_decode_reference_cbor() -> None:
    payload = _reference_cbor()
    assert len(payload) == 157
    pack = senml.decode(payload, senml.CBOR)
    assert pack == reference("senml.json")
    assert senml.resolve(pack) == reference("senml-resolved.json")


def test_senml_cbor_uses_rfc8428_integer_labels() -> None:
    labels: dict[str, int] = json.loads((RECORDS / "senml_cbor_labels.json").read_text())["labels"]
    records = senml.measurement_records([entry()]) + senml.link_records([entry()])
    raw = cbor2.loads(senml.encode(records, senml.CBOR))
    assert isinstance(raw, list) and len(raw) == len(records)
    for wire, rec in zip(raw, records, strict=True):
        assert all(isinstance(k, int) for k in wire), wire
        assert wire == {labels[k]: v for k, v in rec.items()}


def test_senml_cbor_is_definite_length_array() -> None:
    payload = senml.encode(senml.measurement_records([entry()]), senml.CBOR)
    assert payload[0] >> 5 == 4  # major type 4 (array)
    assert payload[0] & 0x1F != 31  # not indefinite length (that would be SensML streaming)


def test_senml_cbor_floats_round_trip_bit_identical() -> None:
    payload = senml.encode(senml.measurement_records([entry()]), senml.CBOR)
    # binary64 head 0xfb followed by the IEEE double of 22.4: never compacted to binary32.
    assert b"\xfb" + bits(22.4) in payload
    assert b"\xfb" + bits(3.606) in payload
    values = {r["n"]: r["v"] for r in senml.decode(payload, senml.CBOR) if "v" in r}
    assert bits(values["temperature"]) == bits(22.4)
    assert bits(values["battery-voltage"]) == bits(3.606)
    assert values["temperature"] != struct.unpack(">f", struct.pack(">f", 22.4))[0]
    assert isinstance(values["humidity"], int)  # integers stay CBOR integers


@settings(max_examples=200, deadline=None)
@given(value=st.floats(allow_nan=False, allow_infinity=False), t=st.floats(min_value=2**28, max_value=4e9))
def test_senml_any_float_round_trips_in_both_formats(value: float, t: float) -> None:
    e = entry(time=t, readings=[Reading("temperature", value, "Cel")])
    for fmt in (senml.JSON, senml.CBOR):
        pack = senml.decode(senml.encode(senml.measurement_records([e]), fmt), fmt)
        assert bits(pack[1]["v"]) == bits(value)
        assert bits(pack[0]["bt"]) == bits(t)


def test_senml_value_kinds() -> None:
    e = entry(readings=[Reading("door-open", True), Reading("tilt", "normal"), Reading("occupancy", 2)])
    records = senml.measurement_records([e])[1:]
    assert records == [{"n": "door-open", "vb": True}, {"n": "tilt", "vs": "normal"}, {"n": "occupancy", "v": 2}]
    for fmt in (senml.JSON, senml.CBOR):
        assert senml.decode(senml.encode(records, fmt), fmt) == records


def test_senml_encode_unknown_format() -> None:
    with pytest.raises(ValueError, match="unknown SenML format"):
        senml.encode([], "senml+xml")


def test_senml_content_types() -> None:
    assert senml.CONTENT_TYPES == {"senml+json": "application/senml+json", "senml+cbor": "application/senml+cbor"}


# -- several uplinks in one pack -------------------------------------------------------------------

def test_senml_several_uplinks_of_one_device_resolve_right() -> None:
    ids = [str(uuid.UUID(int=i)) for i in (1, 2, 3)]
    entries = [
        entry(id=1, time=T0, uplink_id=ids[0], readings=[Reading("temperature", 22.4, "Cel")]),
        entry(id=2, time=T0 + 600.25, uplink_id=ids[1],
              readings=[Reading("temperature", 22.1, "Cel"), Reading("humidity", 40, "%RH")]),
        entry(id=3, time=T0 + 1200, uplink_id=ids[2], readings=[Reading("motion", 0, "count")]),
    ]
    records = senml.measurement_records(entries)
    assert sum("bn" in r for r in records) == 1  # the base name is not repeated
    for fmt in (senml.JSON, senml.CBOR):
        resolved = resolve_independently(senml.decode(senml.encode(records, fmt), fmt))
        assert resolved == [
            {"n": f"urn:dev:mac:{DEV_EUI}_uplink", "t": T0, "vs": f"urn:uuid:{ids[0]}"},
            {"n": f"urn:dev:mac:{DEV_EUI}_temperature", "t": T0, "u": "Cel", "v": 22.4},
            {"n": f"urn:dev:mac:{DEV_EUI}_uplink", "t": T0 + 600.25, "vs": f"urn:uuid:{ids[1]}"},
            {"n": f"urn:dev:mac:{DEV_EUI}_temperature", "t": T0 + 600.25, "u": "Cel", "v": 22.1},
            {"n": f"urn:dev:mac:{DEV_EUI}_humidity", "t": T0 + 600.25, "u": "%RH", "v": 40},
            {"n": f"urn:dev:mac:{DEV_EUI}_uplink", "t": T0 + 1200, "vs": f"urn:uuid:{ids[2]}"},
            {"n": f"urn:dev:mac:{DEV_EUI}_motion", "t": T0 + 1200, "u": "count", "v": 0},
        ]
        assert senml.resolve(senml.decode(senml.encode(records, fmt), fmt)) == resolved


def test_senml_each_uplink_starts_with_its_own_id_record() -> None:
    entries = [entry(id=i, time=T0 + i, uplink_id=f"id-{i}") for i in range(4)]
    records = senml.measurement_records(entries)
    starts = [i for i, r in enumerate(records) if r.get("n") == "uplink"]
    assert starts == [i * (len(READINGS) + 1) for i in range(4)]
    for i, at in enumerate(starts):
        assert records[at]["bt"] == T0 + i
        assert records[at]["vs"] == f"urn:uuid:id-{i}"


def test_senml_base_name_repeated_when_device_changes() -> None:
    other = "0016c001f153a14c"
    entries = [entry(id=1), entry(id=2, dev_eui=other, uplink_id="b"), entry(id=3, uplink_id="c")]
    resolved = senml.resolve(senml.measurement_records(entries))
    devices = [r["n"].split("_")[0].removeprefix("urn:dev:mac:") for r in resolved]
    assert devices == [DEV_EUI] * 6 + [other] * 6 + [DEV_EUI] * 6


def test_senml_uplink_without_readings_has_only_its_id_record() -> None:
    records = senml.measurement_records([entry(readings=[])])
    assert records == [{"bn": f"urn:dev:mac:{DEV_EUI}_", "bt": T0, "n": "uplink", "vs": f"urn:uuid:{UPLINK_ID}"}]


# -- link pack -------------------------------------------------------------------------------------

def test_senml_link_pack_equals_reference() -> None:
    records = senml.link_records([entry()])
    assert records[0] == {"bn": f"urn:dev:mac:{DEV_EUI}_lorawan_", "bt": T0, "n": "uplink",
                          "vs": f"urn:uuid:{UPLINK_ID}"}
    ours = without_uplink_records(resolve_independently(records))
    assert ours == resolve_independently(reference("lorawan-link.senml.json"))


def test_senml_link_pack_units_and_rssi_in_dbw() -> None:
    by_name = {r["n"]: r for r in senml.link_records([entry(radio=RADIO)])[1:]}
    assert by_name["rssi"] == {"n": "rssi", "u": "dBW", "v": -117.0}  # -87 dBm - 30
    assert by_name["snr"] == {"n": "snr", "u": "dB", "v": 9.5}
    assert by_name["frequency"] == {"n": "frequency", "u": "Hz", "v": 868100000}
    assert by_name["fcnt"] == {"n": "fcnt", "u": "count", "v": 1234}
    assert by_name["gateways"] == {"n": "gateways", "u": "count", "v": 1}
    assert by_name["gateway"] == {"n": "gateway", "vs": "urn:dev:mac:acde48fffe000001"}
    assert "u" not in by_name["sf"] and "u" not in by_name["fport"]


def test_senml_link_pack_with_dr_and_without_radio() -> None:
    with_dr = {r["n"] for r in senml.link_records([entry(radio=RadioInfo(dr=5, gateways=2))])}
    assert with_dr == {"uplink", "dr", "gateways"}
    bare = senml.link_records([entry(radio=RadioInfo())])
    assert [r["n"] for r in bare] == ["uplink", "gateways"]
    assert bare[1] == {"n": "gateways", "u": "count", "v": 0}


# -- names and units --------------------------------------------------------------------------------

def test_senml_resolved_names_match_rfc8428_regex() -> None:
    readings = [Reading(q.name, True if q.unit is None else 1.5, q.unit) for q in QUANTITIES]
    entries = [entry(id=1, readings=readings, radio=RadioInfo(1, 2, 3, 4, 5, -1.0, 2.0, "acde48fffe000001", 1)),
               entry(id=2, uplink_id="x", dev_eui="0016c001f153a14c", readings=readings)]
    names = [r["n"] for r in senml.resolve(senml.measurement_records(entries) + senml.link_records(entries))]
    assert len(names) == 2 * (len(QUANTITIES) + 1) + 10 + 9  # RADIO has no dr
    bad = [n for n in names if not NAME_RE.match(n)]
    assert bad == []


def test_senml_vocabulary_names_are_dev_urn_components() -> None:
    # RFC 9039 §3.2: a component after '_' may contain only letters, digits, '.' and '-'.
    component = re.compile(r"^[A-Za-z0-9.-]+$")
    assert [q.name for q in QUANTITIES if not component.match(q.name)] == []
    assert len({q.name for q in QUANTITIES}) == len(QUANTITIES)


def test_senml_vocabulary_units_are_registered_primary_units() -> None:
    units = json.loads((RECORDS / "senml_units.json").read_text())
    primary = {u["symbol"]: u for u in units["primary_units"]}
    used = {q.unit for q in QUANTITIES if q.unit is not None}
    assert used - set(primary) == set()
    assert [u for u in used if primary[u]["not_recommended"]] == []
    secondary = {u["symbol"] for u in units["secondary_units"]}
    assert used & secondary == set()
    assert used & set(units["not_senml_units_seen_in_the_wild"]) == set()


def test_senml_link_units_are_registered_primary_units() -> None:
    primary = {u["symbol"] for u in json.loads((RECORDS / "senml_units.json").read_text())["primary_units"]}
    used = {r["u"] for r in senml.link_records([entry()]) if "u" in r}
    assert used == {"count", "Hz", "dBW", "dB"}
    assert used <= primary


# --- samples with their own time (issue #13: histories, sample lists) ---


HISTORY = [Reading("volume", 123.4, "m3", "history[0].volume", T0 - 7200),
           Reading("volume", 123.42, "m3", "history[1].volume", T0 - 3600),
           Reading("volume", 123.456, "m3", "volume"),
           Reading("alarm", "leakage", None, "alarm")]


@pytest.mark.parametrize("fmt", [senml.JSON, senml.CBOR])
def test_senml_history_samples_resolve_to_their_own_time(fmt: str) -> None:
    e = entry(readings=HISTORY)
    resolved = senml.resolve(senml.decode(senml.pack([e], fmt), fmt))
    got = [(r["n"].rsplit("_", 1)[1], r["t"], r.get("v", r.get("vs"))) for r in resolved[1:]]
    # History differs from the uplink's base time; the current value resolves to it.
    assert got == [("volume", T0 - 7200, 123.4), ("volume", T0 - 3600, 123.42), ("volume", T0, 123.456),
                   ("alarm", T0, "leakage")]


def test_senml_history_t_is_relative_to_the_base_time_on_the_wire() -> None:
    e = entry(readings=HISTORY)
    records = orjson_loads(senml.pack([e], senml.JSON))
    assert [r.get("t") for r in records[1:]] == [-7200.0, -3600.0, None, None]
    # The stored form keeps the absolute time (a record's own, independent of any pack).
    stored = orjson_loads(e.readings_json)
    assert stored[0]["t"] == T0 - 7200 and "t" not in stored[2]
    assert senml.measurement_records([e])[1]["t"] == -7200.0


def orjson_loads(blob: bytes) -> Any:
    return json.loads(blob)
