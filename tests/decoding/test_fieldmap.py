"""Field maps and the normaliser (docs/field-maps.md): paths, precedence, units, states, times, validation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from edge.cli import main
from edge.decoding.base import Field, normalize
from edge.decoding.coverage import check, read_js_literal
from edge.decoding.fieldmap import (
    MapIndex,
    default_index,
    from_fields,
    load_map,
    map_for,
    parse_map,
)
from edge.decoding.fieldpath import ANY_INDEX, ANY_KEY, format_path, parse_path
from edge.decoding.normalize import normalise
from edge.decoding.registry import DecoderRegistry, DeviceHints
from edge.errors import MapError
from edge.model import DecodeStatus, DeviceInfo, RadioInfo, Reading, Uplink, readings_from_json, readings_json

RECV = 1_800_000_000.0
REPO = Path(__file__).resolve().parents[2]


def fmap(fields: dict[str, Any], codecs: tuple[str, ...] = ("ttn:acme/th",)) -> Any:
    return parse_map({"codecs": list(codecs), "fields": fields}, "test")


def triples(readings: list[Reading]) -> list[tuple[str, Any, str | None]]:
    return [(r.name, r.value, r.unit) for r in readings]


# --- paths -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "steps"), [
    ("a", ("a",)),
    ("a.b[2].c", ("a", "b", 2, "c")),
    ("history[*].temperature", ("history", ANY_INDEX, "temperature")),
    ("*.value", (ANY_KEY, "value")),
    ("a.`b.c`.d", ("a", "b.c", "d")),
    ("`pm2.5`", ("pm2.5",)),
    ("temperature_*", ("temperature_*",)),
    ("[0][1]", (0, 1)),
])
def test_parse_path(text: str, steps: tuple[Any, ...]) -> None:
    assert parse_path(text) == steps


@pytest.mark.parametrize("bad", ["", "a.", ".a", "a..b", "a[", "a[x]", "`a", "a]b", "a[0]b"])
def test_parse_path_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_path(bad)


def test_format_path_quotes_keys_with_dots() -> None:
    assert format_path(("a", "b", 2, "c")) == "a.b[2].c"
    assert format_path(("pm2.5",)) == "`pm2.5`"
    assert parse_path(format_path(("x", "pm2.5", 0))) == ("x", "pm2.5", 0)


# --- the normaliser ------------------------------------------------------------------------------------


def test_most_specific_pattern_wins() -> None:
    m = fmap({"values[*]": "ignore", "values[0]": {"n": "temperature", "u": "Cel"},
              "*.x": {"n": "acceleration-x"}, "acc.x": {"n": "temperature", "u": "Cel"}})
    out = normalise({"values": [21.5, 21.0], "acc": {"x": 3}, "other": {"x": 4}}, m, RECV)
    assert [(r.name, r.value, r.field) for r in out.readings] == [
        ("temperature", 21.5, "values[0]"), ("temperature", 3, "acc.x"), ("acceleration-x", 4, "other.x")]
    assert out.unmapped == []


def test_key_glob_matches_within_a_key() -> None:
    m = fmap({"temperature_*": {"n": "temperature", "u": "Cel"}, "temperature_9": "ignore"})
    out = normalise({"temperature_1": 20.5, "temperature_9": 1, "humidity_1": 40}, m)
    assert triples(out.readings) == [("temperature", 20.5, "Cel"), ("humidity-1", 40, None)]
    assert out.unmapped == ["humidity_1"]


def test_units_convert_from_what_the_codec_emits() -> None:
    m = fmap({"vdd": {"n": "battery-voltage", "u": "mV"}, "co2": {"n": "co2", "u": "ppm"},
              "p": {"n": "pressure", "u": "hPa"}, "t": {"n": "temperature", "u": "°F"},
              "raw": {"n": "temperature", "u": "Cel", "scale": 0.1}, "bat": {"n": "battery", "u": "%"}})
    out = normalise({"vdd": 3600, "co2": 776, "p": 1013.2, "t": 212, "raw": 215, "bat": 87}, m)
    assert triples(out.readings) == [
        ("battery-voltage", 3.6, "V"), ("co2", 0.000776, "/"), ("pressure", 101320.0, "Pa"),
        ("temperature", 100.0, "Cel"), ("temperature", 21.5, "Cel"), ("battery", 87, "%EL")]


def test_value_objects_use_their_own_unit_unless_the_map_names_one() -> None:
    m = fmap({"battery_voltage": {"n": "battery-voltage"}, "distance": {"n": "distance"},
              "vwc": {"n": "soil-moisture", "u": "/"}, "bad": {"n": "temperature"}})
    data = {"battery_voltage": {"displayName": "Battery voltage", "value": 3.1, "unit": "V"},
            "distance": {"displayName": "Distance", "value": 1200, "unit": "mm"},
            "vwc": {"displayName": "VWC", "value": 0.25, "unit": "m³⋅m⁻³"},
            "bad": {"value": 20, "unit": "lx"}}
    out = normalise(data, m)
    assert triples(out.readings) == [
        ("battery-voltage", 3.1, "V"), ("distance", 1.2, "m"), ("soil-moisture", 0.25, "/"), ("bad", 20, None)]
    assert out.unit_errors == ["bad"]  # lux is no temperature: unit-less beats wrong


def test_strings_booleans_and_states_are_kept() -> None:
    m = fmap({"pir": {"n": "motion-state", "state": True}, "door": {"n": "door-open", "state": True},
              "mode": {"n": "device-status", "state": True}, "temp": {"n": "temperature", "u": "Cel"}})
    out = normalise({"pir": "trigger", "door": True, "mode": 2, "temp": "-10.00", "label": "room 1", "flag": False}, m)
    assert triples(out.readings) == [("motion-state", "trigger", None), ("door-open", True, None),
                                     ("device-status", 2, None), ("temperature", -10.0, "Cel"),
                                     ("label", "room 1", None), ("flag", False, None)]
    assert out.unmapped == ["label", "flag"]


def test_numeric_text_in_another_unit_stays_text() -> None:
    m = fmap({"d": {"n": "distance", "u": "mm"}})
    assert triples(normalise({"d": "1234 mm"}, m).readings) == [("distance", 1.234, "m")]
    assert triples(normalise({"d": "12 cm"}, m).readings) == [("distance", "12 cm", None)]
    assert triples(normalise({"d": "No Sensor"}, m).readings) == [("distance", "No Sensor", None)]


def test_list_elements_are_readings_with_their_own_path() -> None:
    out = normalise({"a": {"b": [1, {"c": "x"}, None]}, "n": None, "inf": float("inf")})
    assert [(r.name, r.value, r.field) for r in out.readings] == [("a.b.0", 1, "a.b[0]"), ("a.b.1.c", "x", "a.b[1].c")]


@pytest.mark.parametrize(("tu", "raw", "expected"), [
    ("s", 1_799_996_400, 1_799_996_400.0),
    ("ms", 1_799_996_400_500, 1_799_996_400.5),
    ("iso8601", "2027-01-15T07:00:00Z", 1_799_996_400.0),
    ("offset-s", -3600, RECV - 3600),
    ("ago-s", 60, RECV - 60),
])
def test_sample_times(tu: str, raw: Any, expected: float) -> None:
    m = fmap({"history[*].t": "ignore",
              "history[*].temperature": {"n": "temperature", "u": "Cel", "t": "history[*].t", "tu": tu}})
    out = normalise({"history": [{"t": raw, "temperature": 20.0}]}, m, RECV)
    assert [(r.value, r.time, r.field) for r in out.readings] == [(20.0, expected, "history[0].temperature")]


def test_sample_time_takes_the_leafs_own_index_and_dt_spaces_list_elements() -> None:
    m = fmap({"h[*].ts": "ignore", "h[*].v": {"n": "volume", "u": "L", "t": "h[*].ts"},
              "w[*]": {"n": "sound-level", "u": "dB", "t": "start", "dt": 60}, "start": "ignore"})
    out = normalise({"h": [{"ts": 100, "v": 1}, {"ts": 200, "v": 2}], "start": 1000, "w": [50, 51, 52]}, m, RECV)
    # Samples with their own time come newest first (after the uplink's own readings, none here).
    assert [(r.name, r.time) for r in out.readings] == [("sound-level", 1120.0), ("sound-level", 1060.0),
                                                       ("sound-level", 1000.0), ("volume", 200.0), ("volume", 100.0)]


def test_keep_sends_unit_less_without_counting_as_unmapped() -> None:
    out = normalise({"analog_in_1": -0.05}, fmap({"analog_in_*": "keep"}))
    assert triples(out.readings) == [("analog-in-1", -0.05, None)] and out.unmapped == []


def test_legacy_fields_table_still_works() -> None:
    fields = {"temperature": Field("temperature", "Cel"), "vdd": Field("battery-voltage", "V", scale=1e-3),
              "nested.x": Field("acceleration-x")}
    assert normalize({"temperature": 25, "vdd": 3600, "nested": {"x": 1}, "other": 2}, fields) == [
        Reading("temperature", 25, "Cel"), Reading("battery-voltage", 3.6, "V"), Reading("acceleration-x", 1),
        Reading("other", 2)]
    assert from_fields(fields).mapped_count == 3


def test_stored_records_carry_t_but_not_the_field_path() -> None:
    readings = [Reading("volume", 123.4, "m3", "history[0].volume", 1_799_996_400.0),
                Reading("alarm", "leak", None, "a")]
    blob = readings_json(readings)
    assert json.loads(blob) == [{"n": "volume", "u": "m3", "v": 123.4, "t": 1_799_996_400.0},
                                {"n": "alarm", "vs": "leak"}]
    back = readings_from_json(blob)
    assert back == readings and back[0].time == 1_799_996_400.0 and back[0].field == ""


# --- validation -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("fields", "message"), [
    ({"t": {"n": "temperatur", "u": "Cel"}}, "not in the vocabulary"),
    ({"t": {"n": "temperature", "u": "hPa"}}, "measures 'Pa'"),
    ({"t": {"n": "temperature", "u": "furlong"}}, "unknown unit"),
    ({"t": {"n": "temperature", "state": True}}, "is a measurement"),
    ({"t": {"n": "door-open", "state": True, "u": "Cel"}}, "a state has no unit"),
    ({"t": {"n": "door-open"}}, "add state: true"),
    ({"t": {"n": "temperature", "u": "Cel", "tu": "hours"}}, "tu must be one of"),
    ({"t": {"n": "temperature", "u": "Cel", "factor": 2}}, "unknown keys"),
    ({"t": "drop"}, "must be 'ignore', 'keep'"),
    ({"a[": "ignore"}, "bad field path"),
])
def test_bad_maps_are_refused(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(MapError) as err:
        fmap(fields)
    assert any(message in p for p in err.value.problems), err.value.problems


def test_bad_codec_keys_are_refused() -> None:
    with pytest.raises(MapError, match="catalogue"):
        parse_map({"codecs": ["elsys/ers"], "fields": {}})


def test_yaml_maps_are_yaml_1_2(tmp_path: Path) -> None:
    # YAML 1.1 would read `no` and `off` as false; field maps keep them as the strings they are.
    path = tmp_path / "m.yaml"
    path.write_text("codecs: [ttn:acme/sw]\nfields:\n  sw: {n: digital-output, state: true, values: {on: 1, off: 0}}\n"
                    "  no: ignore\n")
    m = load_map(path)
    assert [s.pattern for s in m.specs] == ["sw", "no"] and m.specs[0].values == {"on": 1, "off": 0}


def test_index_prefers_a_maps_own_catalogue_and_reports_clashes(tmp_path: Path) -> None:
    for catalogue, name in (("native", "a"), ("ttn", "b"), ("ttn", "c")):
        folder = tmp_path / "maps" / catalogue / "acme"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}.yaml").write_text(f"codecs: [ttn:acme/th, native:acme/{name}]\n"
                                             f"fields:\n  t{name}: {{n: temperature, u: Cel}}\n")
    index = MapIndex()
    index.load_folder(tmp_path / "maps")
    held = index.get("ttn:acme/th")
    assert held is not None and held.source.endswith("ttn/acme/b.yaml")
    base = tmp_path / "maps" / "ttn" / "acme"
    clashes = [p for p in index.problems if "already mapped" in p]
    assert clashes == [f"{base}/c.yaml: codec ttn:acme/th already mapped by {base}/b.yaml"]


# --- which map applies ---------------------------------------------------------------------------------


def _uplink(obj: dict[str, Any] | None, profile: str = "TH profile", tags: dict[str, str] | None = None) -> Uplink:
    return Uplink("00000000-0000-4000-8000-000000000001",
                  DeviceInfo("0101010101010101", device_profile_name=profile, device_profile_id="p-1", tags=tags or {}),
                  RECV, 2, b"\x00", RadioInfo(), obj)


def test_chirpstack_object_map_from_hint_tag_or_config() -> None:
    index = MapIndex()
    index.add(fmap({"temp": {"n": "temperature", "u": "Cel"}}, ("object:th", "ttn:acme/th")))
    by_config = DecoderRegistry([], maps=index, object_maps={"TH profile": "object:th"})
    decoded = by_config.decode(_uplink({"temp": 21.5, "x": 1}))
    assert decoded.status == DecodeStatus.CHIRPSTACK
    assert triples(decoded.readings) == [("temperature", 21.5, "Cel"), ("x", 1, None)]
    assert (decoded.codec, decoded.unmapped) == ("object:th", 1)
    plain = DecoderRegistry([], maps=index)
    assert plain.decode(_uplink({"temp": 21.5})).readings == [Reading("temp", 21.5)]
    assert plain.decode(_uplink({"temp": 21.5}, tags={"codec": "ttn:acme/th"})).readings[0].unit == "Cel"
    assert plain.decode(_uplink({"temp": 21.5}), DeviceHints(codec="object:th")).readings[0].unit == "Cel"
    assert plain.decode(_uplink({"temp": 21.5}), DeviceHints(profile_tags={"codec": "object:th"})).readings[0].unit \
        == "Cel"


def test_native_decoders_answer_to_their_own_and_their_ttn_codec_maps() -> None:
    from edge.decoding.builtin.elsys import ElsysDecoder

    key, found = map_for(ElsysDecoder(), default_index())
    assert key == "native:elsys/ers" and "ttn:elsys/ers-codec" in found.codecs


# --- checking a map with examples ------------------------------------------------------------------------


def test_check_flags_unmapped_numbers_and_values_out_of_range() -> None:
    # Pa declared as hPa: 100729 "hPa" is 10 MPa, no atmosphere has that.
    wrong = fmap({"pressure": {"n": "pressure", "u": "hPa"}, "fw": "ignore"})
    cov = check({"pressure": 100729, "fw": 3, "rssi": -80, "label": "x"}, wrong, "ex#1")
    assert (cov.numeric, cov.covered, cov.wrong_units) == (3, 2, 1)
    assert cov.unmapped == {"rssi": 1}
    assert any("outside 30000" in p for p in cov.problems) and not cov.ok
    right = check({"pressure": 100729}, fmap({"pressure": {"n": "pressure", "u": "Pa"}}))
    assert right.ok and right.standardised_share == 1.0


def test_read_js_literal_takes_comments_and_hex() -> None:
    text = '[{"input": {"fPort": 0x7f, // port\n "bytes": [0x00, 0x0f,],}, /* x */ "expected": {"data": {"a": 1}}}]'
    assert read_js_literal(text) == [{"input": {"fPort": 127, "bytes": [0, 15]}, "expected": {"data": {"a": 1}}}]


# --- edge decoders readings --json ----------------------------------------------------------------------


def test_cli_readings_json_lines_for_a_ttn_codec(tmp_path: Path) -> None:
    codecs = REPO / "tests" / "decoding" / "js" / "codecs" / "elsys"
    result = CliRunner().invoke(main, ["decoders", "readings", "--json", str(codecs)])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["example"] for line in lines] == list(range(len(lines)))
    first = lines[0]
    assert first["file"].endswith("elsys-tlv-codec.yaml")
    # No map for this test codec: fields go out under their own key, without "u".
    assert first["readings"] == [{"field": "temperature", "n": "temperature", "v": 25},
                                 {"field": "humidity", "n": "humidity", "v": 55}]


def test_cli_readings_json_for_a_chirpstack_codec(tmp_path: Path) -> None:
    folder = tmp_path / "vendors" / "acme" / "codecs"
    folder.mkdir(parents=True)
    (folder / "th.js").write_text(
        "function decodeUplink(input) { return {data: {temperature: input.bytes[0] / 10,"
        " history: [{t: 60, temperature: input.bytes[1] / 10}], state: 'ok'}}; }\n")
    (folder / "test_decode_th.json").write_text(
        '[{"name": "one", "input": {"fPort": 0x01, // port\n "bytes": [0xD7, 0xC8]}, "expected": {"data": {}}}]')
    maps = tmp_path / "maps" / "chirpstack" / "acme"
    maps.mkdir(parents=True)
    (maps / "th.yaml").write_text("codecs: [chirpstack:acme/th]\nfields:\n  temperature: {n: temperature, u: Cel}\n"
                                  "  history[*].t: ignore\n"
                                  "  history[*].temperature: {n: temperature, u: Cel, t: 'history[*].t', tu: ago-s}\n"
                                  "  state: {n: device-status, state: true}\n")
    import edge.decoding.fieldmap as fieldmap

    saved = fieldmap._DEFAULT
    fieldmap._DEFAULT = default_index([tmp_path / "maps"])
    try:
        result = CliRunner().invoke(main, ["decoders", "readings", "--json", str(folder)])
    finally:
        fieldmap._DEFAULT = saved
    assert result.exit_code == 0, result.output
    (line,) = [json.loads(text) for text in result.stdout.splitlines()]
    assert line == {"file": str(folder / "th.js"), "example": 0, "readings": [
        {"field": "temperature", "n": "temperature", "u": "Cel", "v": 21.5},
        {"field": "state", "n": "device-status", "vs": "ok"},
        {"field": "history[0].temperature", "n": "temperature", "u": "Cel", "v": 20.0, "t": -60.0}]}


def test_values_outside_the_physical_range_are_listed_and_checked() -> None:
    # Sent as they are (sensor health flags them on the gateway) and listed for the map checks.
    m = fmap({"probe": {"n": "temperature-external", "u": "Cel"}, "p": {"n": "pressure", "u": "hPa"}})
    out = normalise({"probe": 327.67, "p": 100729}, m)
    assert triples(out.readings) == [("temperature-external", 327.67, "Cel"), ("pressure", 10072900.0, "Pa")]
    assert out.out_of_range == [("probe", "temperature-external", 327.67), ("p", "pressure", 10072900.0)]
    cov = check({"probe": 327.67, "p": 100729}, m, "ex")
    # The marker is the codec's (a probe is missing), not the map's fault; the hPa is the map's.
    assert (cov.sentinels, cov.wrong_units, cov.standardised) == (1, 1, 0)
    outside = [p for p in cov.problems if "outside" in p]
    assert outside == ["ex: p -> pressure = 1.00729e+07 Pa is outside 30000 … 120000: is the unit right?"]


def test_index_reads_codecs_first_and_parses_a_map_when_asked(tmp_path: Path) -> None:
    folder = tmp_path / "maps" / "ttn" / "acme"
    folder.mkdir(parents=True)
    (folder / "good.yaml").write_text("# a comment\ncodecs:\n  - ttn:acme/good  # trailing\n  - 'object:good'\n"
                                      "fields:\n  t: {n: temperature, u: Cel}\n")
    (folder / "flow.yaml").write_text("codecs: [ttn:acme/flow]\nfields: {t: {n: temperature, u: Cel}}\n")
    (folder / "bad.yaml").write_text("codecs: [ttn:acme/bad]\nfields:\n  t: {n: temperature, u: hPa}\n")
    (folder / "odd.yaml").write_text("fields: {t: ignore}\ncodecs: !!seq [ttn:acme/odd]\n")
    index = MapIndex()
    index.load_folder(tmp_path / "maps")
    assert index.keys == ["object:good", "ttn:acme/bad", "ttn:acme/flow", "ttn:acme/good", "ttn:acme/odd"]
    assert index.maps and [m.source for m in index.maps] == [str(folder / "odd.yaml")]  # parsed at once
    assert index.problems == []
    good = index.get("object:good")
    assert good is not None and good is index.get("ttn:acme/good")
    assert index.get("ttn:acme/bad") is None and any("measures 'Pa'" in p for p in index.problems)
    index.load_all()
    assert len(index.maps) == 3


def test_deeply_nested_output_neither_raises_nor_floods() -> None:
    deep: dict[str, Any] = {"v": 1}
    for _ in range(5000):
        deep = {"a": deep}
    out = normalise({"top": 2, "deep": deep, "list": [[[[1]]]]})
    assert [r.field for r in out.readings] == ["top", "list[0][0][0][0]"]


def test_plugin_map_folders_from_module_callable_or_path(tmp_path: Path) -> None:
    import types

    from edge.decoding.fieldmap import _folders

    package = tmp_path / "edge_decoder_acme"
    (package / "maps").mkdir(parents=True)
    module = types.ModuleType("edge_decoder_acme")
    module.__file__ = str(package / "__init__.py")
    assert _folders(module) == [package / "maps"]
    assert _folders(lambda: [str(tmp_path)]) == [tmp_path]
    assert _folders(str(tmp_path)) == [tmp_path]
