"""The built-in decoders against the TTN Device Repository examples, our codec YAMLs and bad bytes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.decoding.base import Decoder, DecodeResult, DeviceContext
from edge.decoding.builtin import builtin_decoders
from edge.decoding.coverage import check
from edge.decoding.examples import compare
from edge.decoding.fieldmap import FieldMap, default_index, map_for
from edge.decoding.fieldpath import parse_path
from edge.decoding.normalize import normalise
from edge.vocabulary import BY_NAME

REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ttn-codec-examples"
DECODERS_DIR = REPO / "decoders"
CONTEXT = DeviceContext("0000000000000000")
DECODERS = builtin_decoders()

# The fixture README allows a relative tolerance for this one example only: its expected value
# came from Go's math.Pow and JS engines differ from it in the 14th significant digit.
TOLERANT = {("decentlab", "dl-trs11"): 1e-9}


def _by_ttn_codec(codec: str) -> Decoder:
    found = [d for d in DECODERS if codec in getattr(d, "ttn_codecs", ())]
    assert len(found) == 1, f"{len(found)} built-in decoders claim TTN codec {codec}"
    return found[0]


def _by_id(decoder_id: str) -> Decoder:
    found = [d for d in DECODERS if decoder_id in (d.id, *getattr(d, "aliases", ()))]
    assert len(found) == 1, f"{len(found)} built-in decoders answer to {decoder_id}"
    return found[0]


def _fixture_lines() -> list[Any]:
    cases = []
    for path in sorted(FIXTURES.glob("*.jsonl")):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            cases.append(pytest.param(json.loads(line), id=f"{path.stem}:{n}"))
    return cases


def _yaml_examples() -> list[Any]:
    cases = []
    for path in sorted(DECODERS_DIR.glob("**/*.yaml")):
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        decoder_id = f"{path.parent.name}/{path.stem}"
        for n, example in enumerate(doc["uplinkDecoder"]["examples"], 1):
            cases.append(pytest.param(decoder_id, example, id=f"{decoder_id}:{n}"))
    return cases


def _check(result: DecodeResult, data: Any, warnings: list[str], errors: list[str], rel_tol: float = 0.0) -> None:
    assert isinstance(result, DecodeResult)
    assert result.errors == errors
    assert result.warnings == warnings
    assert not compare({"data": data}, {"data": result.data}, rel_tol=rel_tol), \
        f"got {result.data!r}, expected {data!r}"


def test_fixtures_present() -> None:
    # Without this the parametrized tests below would silently collect nothing.
    assert len(_fixture_lines()) == 49


@pytest.mark.parametrize("line", _fixture_lines())
def test_builtin_decoder_matches_ttn_example(line: dict[str, Any]) -> None:
    decoder = _by_ttn_codec(f"{line['vendor']}/{line['codec_id']}")
    expected = line["expected"]
    result = decoder.decode(bytes.fromhex(line["bytes_hex"]), line["fPort"], CONTEXT)
    rel_tol = TOLERANT.get((line["vendor"], line["device"]), 0.0)
    _check(result, expected["data"], expected["warnings"], expected["errors"], rel_tol)
    if expected["errors"]:
        assert result.data is None


def test_codec_yaml_files_present() -> None:
    # Every built-in decoder except Elsys (whose examples are the fixture lines) ships a YAML.
    stems = {f"{p.parent.name}/{p.stem}" for p in DECODERS_DIR.glob("**/*.yaml")}
    missing = [d.id for d in DECODERS if not d.id.startswith("elsys/") and d.id not in stems]
    assert missing == []


@pytest.mark.parametrize(("decoder_id", "example"), _yaml_examples())
def test_codec_yaml_example_passes(decoder_id: str, example: dict[str, Any]) -> None:
    decoder = _by_id(decoder_id)
    given_input, output = example["input"], example["output"]
    result = decoder.decode(bytes(given_input["bytes"]), given_input["fPort"], CONTEXT)
    _check(result, output.get("data"), output.get("warnings", []), output.get("errors", []))


def test_codec_yaml_has_error_case() -> None:
    for path in DECODERS_DIR.glob("**/*.yaml"):
        examples = yaml.safe_load(path.read_text(encoding="utf-8"))["uplinkDecoder"]["examples"]
        assert any(e["output"].get("errors") for e in examples), f"{path} has no error example"


def test_builtin_decoders_ids_unique() -> None:
    names = [n for d in DECODERS for n in (d.id, *getattr(d, "aliases", ()))]
    assert len(names) == len(set(names))
    for name in names:
        vendor, _, model = name.partition("/")
        assert vendor and model and name == name.lower() and " " not in name and "_" not in name


@pytest.mark.parametrize("decoder", DECODERS, ids=lambda d: d.id)
def test_builtin_decoder_follows_protocol(decoder: Decoder) -> None:
    assert isinstance(decoder, Decoder)
    for codec in getattr(decoder, "ttn_codecs", ()):
        assert codec.split("/")[0] == decoder.id.split("/")[0]


def _map(decoder: Decoder) -> FieldMap:
    key, fmap = map_for(decoder, default_index())
    assert fmap.specs, f"{decoder.id}: no field map (edge/decoding/maps/native/) serves {key}"
    assert f"native:{decoder.id}" in fmap.codecs, f"{decoder.id}: its map does not list native:{decoder.id}"
    return fmap


@pytest.mark.parametrize("decoder", DECODERS, ids=lambda d: d.id)
def test_builtin_decoder_has_a_native_map(decoder: Decoder) -> None:
    fmap = _map(decoder)
    assert not hasattr(decoder, "fields"), f"{decoder.id}: the fields table moved to its map"
    for codec in getattr(decoder, "ttn_codecs", ()):
        assert f"ttn:{codec}" in fmap.codecs, f"{decoder.id}: its map does not list ttn:{codec}"


def test_native_maps_load_without_problems() -> None:
    from edge.decoding.fieldmap import PACKAGE_MAPS, MapIndex

    index = MapIndex()
    index.load_folder(PACKAGE_MAPS)
    index.load_all()
    assert index.problems == []
    assert len(index.maps) == len(list(PACKAGE_MAPS.rglob("*.yaml")))


def _assert_readings_use_vocabulary(decoder: Decoder, data: Any, where: str) -> None:
    fmap = _map(decoder)
    coverage = check(data, fmap, where)
    assert not coverage.unmapped, f"{decoder.id}: unmapped numeric fields {sorted(coverage.unmapped)}"
    problems = [p for p in coverage.problems if "is not mapped" not in p]
    assert problems == [] and coverage.wrong_units == 0
    result = normalise(data, fmap)
    for reading in result.readings:
        quantity = BY_NAME.get(reading.name)
        spec = fmap.lookup(tuple(parse_path(reading.field)))
        if spec is not None and not spec.keep:
            assert quantity is not None, f"{decoder.id}: reading {reading.name!r} not in the vocabulary"
            if isinstance(reading.value, int | float) and not isinstance(reading.value, bool) \
                    and not quantity.state and quantity.unit is not None:
                assert reading.unit == quantity.unit, f"{decoder.id}: {reading}"
            else:
                # A state, or a string under a measurement (e.g. Netvox's "2.3(low battery)"): no unit.
                assert reading.unit is None
        else:
            # Unmapped keys (and `keep` ones) go unit-less under their own name, which must not pose as a
            # vocabulary quantity (a unit-less "temperature" would be ambiguous downstream).
            assert reading.unit is None
            assert quantity is None, f"{decoder.id}: unmapped reading {reading.name!r} shadows the vocabulary"


@pytest.mark.parametrize("line", _fixture_lines())
def test_builtin_decoder_example_readings_use_vocabulary(line: dict[str, Any]) -> None:
    decoder = _by_ttn_codec(f"{line['vendor']}/{line['codec_id']}")
    result = decoder.decode(bytes.fromhex(line["bytes_hex"]), line["fPort"], CONTEXT)
    _assert_readings_use_vocabulary(decoder, result.data, line["codec_id"])


@pytest.mark.parametrize(("decoder_id", "example"), _yaml_examples())
def test_builtin_decoder_yaml_readings_use_vocabulary(decoder_id: str, example: dict[str, Any]) -> None:
    decoder = _by_id(decoder_id)
    _assert_readings_use_vocabulary(decoder, example["output"].get("data"), decoder_id)


def _safe_decode(decoder: Decoder, payload: bytes, fport: int) -> None:
    result = decoder.decode(payload, fport, CONTEXT)
    assert isinstance(result, DecodeResult)
    if result.errors:
        assert result.data is None
    else:
        assert isinstance(result.data, dict)
        normalise(result.data, map_for(decoder)[1], 1.7e9)


@pytest.mark.parametrize("decoder", DECODERS, ids=lambda d: d.id)
@settings(max_examples=300, database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=st.binary(max_size=64), fport=st.sampled_from([1, 2, 6, 7, 10, 85, 102, 103, 224]))
def test_builtin_decoder_random_bytes_never_raise(decoder: Decoder, payload: bytes, fport: int) -> None:
    _safe_decode(decoder, payload, fport)


@pytest.mark.parametrize("decoder", DECODERS, ids=lambda d: d.id)
@settings(max_examples=100, database=None, deadline=None)
@given(fport=st.integers(min_value=0, max_value=255))
def test_builtin_decoder_empty_payload_never_raises(decoder: Decoder, fport: int) -> None:
    _safe_decode(decoder, b"", fport)


@pytest.mark.parametrize("line", _fixture_lines())
def test_builtin_decoder_truncated_example_never_raises(line: dict[str, Any]) -> None:
    decoder = _by_ttn_codec(f"{line['vendor']}/{line['codec_id']}")
    payload = bytes.fromhex(line["bytes_hex"])
    for cut in range(len(payload)):
        _safe_decode(decoder, payload[:cut], line["fPort"])


@pytest.mark.parametrize("line", _fixture_lines())
@settings(max_examples=50, database=None, deadline=None)
@given(data=st.data())
def test_builtin_decoder_mutated_example_never_raises(line: dict[str, Any], data: st.DataObject) -> None:
    # Random bytes rarely get past a header check; flipping bytes of a real frame does.
    decoder = _by_ttn_codec(f"{line['vendor']}/{line['codec_id']}")
    payload = bytearray.fromhex(line["bytes_hex"])
    if payload:
        index = data.draw(st.integers(min_value=0, max_value=len(payload) - 1))
        payload[index] = data.draw(st.integers(min_value=0, max_value=255))
    extra = data.draw(st.binary(max_size=8))
    _safe_decode(decoder, bytes(payload) + extra, line["fPort"])


def test_elsys_decoder_claims_every_elsys_codec() -> None:
    # Every Elsys model's TTN codec YAML runs the same elsys.js, so `--native` and TTN-profile
    # devices of any Elsys model must land on the one native decoder.
    codecs = ["ers", "ers-co2", "ers-co2-lite", "ers-lite", "ers-sound", "ers-voc", "ers-eye", "ems", "ems-lite",
              "ems-desk", "ems-door", "elt-2", "elt-lite", "elt-ultrasonic"]
    for codec in codecs:
        assert _by_ttn_codec(f"elsys/{codec}-codec").id == "elsys/ers"
        assert _by_id(f"elsys/{codec}").id == "elsys/ers"


# Cayenne LPP names channels only in its keys: two temperature channels are two "temperature"
# readings, as they always were.
REPEATS_ALLOWED = {"cayenne/lpp"}


@pytest.mark.parametrize(("decoder_id", "example"), _yaml_examples())
def test_builtin_decoder_readings_do_not_repeat_a_name_at_one_time(decoder_id: str, example: dict[str, Any]) -> None:
    decoder = _by_id(decoder_id)
    if decoder.id in REPEATS_ALLOWED:
        return
    readings = normalise(example["output"].get("data"), _map(decoder)).readings
    seen = [(r.name, r.time) for r in readings if r.name in BY_NAME]
    assert len(seen) == len(set(seen)), f"{decoder_id}: a name repeats at one time: {seen}"
