"""JsCodecDecoder, the TTN codec YAML loader, its examples and the TTN validator's comparison."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.decoding.base import Decoder, DecodeResult, DeviceContext, Field, normalize
from edge.decoding.builtin.elsys import ElsysDecoder
from edge.decoding.examples import compare, load_examples
from edge.decoding.js import EncodeResult, JsCodecDecoder, JsLimits
from edge.errors import ConfigError
from edge.model import Reading

CODECS = Path(__file__).parent / "codecs"
ELSYS_YAML = CODECS / "elsys" / "elsys-tlv-codec.yaml"
FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "ttn-codec-examples"
CONTEXT = DeviceContext("0000000000000000")
NATIVE = ElsysDecoder()


def _all_examples() -> list[object]:
    cases = []
    for path in sorted(CODECS.glob("*/*-codec.yaml")):
        for n, example in enumerate(load_examples(path), 1):
            cases.append(pytest.param(path, example, id=f"{path.parent.name}/{path.stem}:{n}"))
    return cases


@pytest.fixture(scope="module")
def elsys() -> JsCodecDecoder:
    return JsCodecDecoder.from_yaml(ELSYS_YAML)


# --- loading -------------------------------------------------------------------------------------

def test_codec_from_yaml_id_name_and_protocol(elsys):
    assert elsys.id == "elsys/elsys-tlv-codec"
    assert elsys.runtime.name == "elsys/elsys-tlv.js"
    assert dict(elsys.fields) == {}
    assert isinstance(elsys, Decoder)


def test_codec_from_yaml_reads_the_script_from_a_subfolder():
    decoder = JsCodecDecoder.from_yaml(CODECS / "acme" / "legacy-codec.yaml", decoder_id="acme/legacy")
    assert decoder.id == "acme/legacy"
    assert decoder.decode(bytes([98, 0, 250]), 85, CONTEXT) == DecodeResult({"battery": 98, "temperature": 25,
                                                                              "status": "ok"})


@pytest.mark.parametrize(("path", "example"), _all_examples())
def test_codec_examples(path, example):
    decoder = JsCodecDecoder.from_yaml(path)
    result = decoder.decode(example.payload, example.fport, CONTEXT)
    assert compare(example.expected, result) == []


def test_codec_from_yaml_without_file_name_is_a_config_error():
    with pytest.raises(ConfigError, match=r"uplinkDecoder\.fileName is missing"):
        JsCodecDecoder.from_yaml(CODECS / "acme" / "no-file-codec.yaml")


def test_codec_from_yaml_refuses_a_script_outside_the_vendor_folder():
    with pytest.raises(ConfigError, match="points outside"):
        JsCodecDecoder.from_yaml(CODECS / "acme" / "outside-codec.yaml")


@pytest.mark.parametrize(("text", "message"), [
    ("uplinkDecoder: {fileName: missing.js}\n", "cannot read missing.js"),
    ("uplinkDecoder: [\n", "cannot read codec YAML"),
    ("- just a list\n", "must be a mapping"),
])
def test_codec_from_yaml_bad_files(tmp_path, text, message):
    path = tmp_path / "acme" / "x-codec.yaml"
    path.parent.mkdir()
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        JsCodecDecoder.from_yaml(path)


def test_codec_from_yaml_with_a_broken_script(tmp_path):
    (tmp_path / "bad.js").write_text("function decodeUplink( {")
    (tmp_path / "bad-codec.yaml").write_text("uplinkDecoder: {fileName: bad.js}\n")
    with pytest.raises(ConfigError, match="SyntaxError"):
        JsCodecDecoder.from_yaml(tmp_path / "bad-codec.yaml")


def test_codec_from_script_chirpstack_profile_codec():
    source = """
        function decodeUplink(input) {
          return {data: {f_port: input.fPort, variables: input.variables, recv_time: input.recvTime.toString(),
                         calibrated: input.bytes[0] + parseFloat(input.variables.offset)}};
        }"""
    decoder = JsCodecDecoder.from_script("chirpstack/profile-1", source)
    context = DeviceContext("0102030405060708", variables={"offset": "0.5"}, recv_time=1404810611.0)
    assert decoder.decode(b"\x14", 10, context) == DecodeResult({
        "f_port": 10, "variables": {"offset": "0.5"}, "recv_time": "Tue Jul 08 2014 09:10:11 GMT+0000",
        "calibrated": 20.5})


def test_codec_fields_and_normalize():
    decoder = JsCodecDecoder.from_yaml(ELSYS_YAML, fields={"temperature": Field("temperature", "Cel")})
    result = decoder.decode(bytes([0x01, 0x00, 0xFA, 0x02, 0x37]), 5, CONTEXT)
    assert normalize(result.data, decoder.fields) == [Reading("temperature", 25, "Cel"),
                                                      Reading("humidity", 55, None)]


def test_codec_decode_never_raises_and_limits_apply():
    decoder = JsCodecDecoder.from_script("acme/loop", "function decodeUplink() { for (;;) {} }",
                                         limits=JsLimits(time_limit=0.02))
    assert decoder.decode(b"", 1, CONTEXT) == DecodeResult(None, [], ["acme/loop exceeded the CPU time limit of 20 ms"])


def test_codec_encode():
    source = ("function decodeUplink() { return {data: {}}; }"
              "function encodeDownlink(input) { return {bytes: [input.data.open ? 1 : 0]}; }")
    decoder = JsCodecDecoder.from_script("acme/valve", source)
    assert decoder.encode({"open": True}, 2) == EncodeResult(b"\x01", 2)


# --- examples ------------------------------------------------------------------------------------

def test_load_examples_shape():
    examples = load_examples(ELSYS_YAML)
    first = examples[0]
    assert (first.index, first.description, first.fport, first.payload) == (
        1, "Temperature and humidity", 5, bytes([1, 0, 250, 2, 55]))
    assert first.expected == {"data": {"temperature": 25.0, "humidity": 55}, "warnings": [], "errors": []}
    assert examples[2].expected == {"data": None, "warnings": [], "errors": ["unknown Elsys type 0x7f at byte 3"]}
    assert load_examples(CODECS / "acme" / "outside-codec.yaml") == []


@pytest.mark.parametrize(("example", "message"), [
    ("{input: {fPort: 1, bytes: [256]}}", "bytes must be a list of integers 0-255"),
    ("{input: {fPort: true, bytes: []}}", "fPort must be an integer"),
    ("{input: {bytes: []}}", "fPort must be an integer"),
    ("{input: {fPort: 1, bytes: []}, output: [1]}", "output must be a mapping"),
    ("just text", "must be a mapping"),
])
def test_load_examples_rejects_malformed_examples(tmp_path, example, message):
    path = tmp_path / "x-codec.yaml"
    path.write_text(f"uplinkDecoder:\n  examples:\n    - {example}\n")
    with pytest.raises(ConfigError, match=message):
        load_examples(path)


# --- the TTN validator's comparison --------------------------------------------------------------

def test_compare_fills_missing_lists_and_data():
    assert compare({"data": {"a": 1}}, DecodeResult({"a": 1})) == []
    assert compare({"errors": ["x"]}, DecodeResult(None, [], ["x"])) == []
    assert compare({"data": {"a": 1}}, {"data": {"a": 1}, "warnings": [], "errors": []}) == []
    assert compare({}, {"data": None}) == []


def test_compare_numbers_and_booleans():
    assert compare({"data": {"v": 41}}, {"data": {"v": 41.0}}) == []
    assert compare({"data": {"v": True}}, {"data": {"v": 1}}) == ["data.v: expected True, got 1"]
    assert compare({"data": {"v": 0}}, {"data": {"v": False}}) == ["data.v: expected 0, got False"]
    assert compare({"data": {"v": 1.0}}, {"data": {"v": 1.0 + 1e-12}}) == []
    assert compare({"data": {"v": 1.0}}, {"data": {"v": 1.0 + 1e-6}}) == ["data.v: expected 1.0, got 1.000001"]
    assert compare({"data": {"v": 1.0}}, {"data": {"v": 1.0 + 1e-6}}, rel_tol=1e-5) == []
    assert compare({"data": {"v": "1"}}, {"data": {"v": 1}}) == ["data.v: expected '1', got 1"]


def test_compare_structures():
    assert compare({"data": {"a": [1, {"b": 2}]}}, {"data": {"a": [1, {"b": 3}]}}) == \
        ["data.a[1].b: expected 2, got 3"]
    assert compare({"data": {"a": [1]}}, {"data": {"a": [1, 2]}}) == ["data.a: expected 1 items, got 2"]
    assert compare({"data": {"a": 1}}, {"data": {"b": 1}}) == ["data: missing key 'a'", "data: unexpected key 'b'"]
    assert compare({"data": {"a": 1}}, {"data": None}) == ["data: expected {'a': 1}, got None"]
    assert compare({"warnings": ["w"]}, {}) == ["warnings: expected 1 items, got 0"]


def test_compare_json_round_trip():
    assert compare({"data": {"t": (1, 2), "n": None}}, {"data": {"t": [1, 2], "n": float("nan")}}) == []


# --- the Elsys codec in JS against the native decoder --------------------------------------------

def _elsys_fixture_lines() -> list[object]:
    lines = []
    for path in sorted(FIXTURES.glob("elsys__*.jsonl")):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            lines.append(pytest.param(json.loads(line), id=f"{path.stem}:{n}"))
    return lines


def test_elsys_fixtures_present():
    assert len(_elsys_fixture_lines()) == 5


@pytest.mark.parametrize("case", _elsys_fixture_lines())
def test_elsys_js_matches_native_and_ttn_examples(elsys, case):
    payload = bytes.fromhex(case["bytes_hex"])
    js = elsys.decode(payload, case["fPort"], CONTEXT)
    assert js == NATIVE.decode(payload, case["fPort"], CONTEXT)
    assert compare(case["expected"], js) == []


# Value sizes per Elsys type code, from the payload format (0x13 is the 8x8 Grid-EYE frame).
ELSYS_SIZES = {0x01: 2, 0x02: 1, 0x03: 3, 0x04: 2, 0x05: 1, 0x06: 2, 0x07: 2, 0x08: 2, 0x09: 6, 0x0A: 2, 0x0B: 4,
               0x0C: 2, 0x0D: 1, 0x0E: 2, 0x0F: 1, 0x10: 4, 0x11: 1, 0x12: 1, 0x13: 65, 0x14: 4, 0x15: 2, 0x16: 2,
               0x17: 4, 0x18: 2, 0x19: 2, 0x1A: 1, 0x1B: 4, 0x1C: 2}
_TLV = st.sampled_from(sorted(ELSYS_SIZES)).flatmap(
    lambda code: st.binary(min_size=ELSYS_SIZES[code], max_size=ELSYS_SIZES[code]).map(lambda v: bytes([code]) + v))
_PAYLOADS = st.one_of(st.lists(_TLV, max_size=6).map(b"".join), st.binary(max_size=24),
                      st.lists(_TLV, min_size=1, max_size=3).map(b"".join).map(lambda b: b[:-1]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=_PAYLOADS)
def test_elsys_js_matches_native_on_any_payload(elsys, payload):
    assert elsys.decode(payload, 5, CONTEXT) == NATIVE.decode(payload, 5, CONTEXT)


def test_a_codec_yaml_has_its_ttn_catalogue_key():
    decoder = JsCodecDecoder.from_yaml(ELSYS_YAML)
    assert decoder.codec_key == "ttn:elsys/elsys-tlv-codec"
    assert JsCodecDecoder("acme/x", "function decodeUplink(i) { return {data: {}}; }").codec_key == ""
