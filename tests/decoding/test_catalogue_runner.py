"""`edge decoders test` over both catalogue layouts (our own tiny fixtures), and YAML 1.2 for codec YAML."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from edge.cli import main
from edge.decoding.catalogue_tests import codec_targets
from edge.decoding.examples import read_yaml

FIXTURES = Path(__file__).parents[1] / "fixtures" / "catalogues"
TTN = FIXTURES / "ttn"
CHIRPSTACK = FIXTURES / "chirpstack"


def run_test(*args: object) -> Result:
    return CliRunner().invoke(main, ["decoders", "test", *map(str, args)], catch_exceptions=False)


def last_line(result: Result) -> str:
    return result.output.strip().splitlines()[-1]


# --- YAML 1.2 ------------------------------------------------------------------------------------

def test_codec_yaml_is_read_by_yaml_1_2_rules(tmp_path: Path):
    path = tmp_path / "codec.yaml"
    path.write_text("data:\n  valve: On\n  state: off\n  answer: yes\nNO: closed\nnumber: 017\nhex: 0x1F\n")
    doc = read_yaml(path)
    # YAML 1.1 (PyYAML) would give True, False, True and a key False; 1.2 keeps the strings.
    assert doc["data"] == {"valve": "On", "state": "off", "answer": "yes"}
    assert doc["NO"] == "closed"
    assert (doc["number"], doc["hex"]) == (17, 31)


def test_examples_with_on_and_no_pass_against_a_codec_returning_strings():
    result = run_test(TTN / "vendor" / "acme" / "valve-codec.yaml")
    assert result.exit_code == 0, result.output
    assert last_line(result) == "5 passed, 0 failed"


# --- TTN layout ----------------------------------------------------------------------------------

def test_a_ttn_repository_is_walked_through_its_index():
    # The orphan codec YAML (no device names it) is skipped, as TTN's validator skips it.
    assert codec_targets([TTN]) == [TTN / "vendor" / "acme" / "valve-codec.yaml"]
    assert codec_targets([TTN / "vendor"]) == codec_targets([TTN]) == codec_targets([TTN / "vendor" / "acme"])
    result = run_test(TTN)
    assert result.exit_code == 0, result.output
    # Besides decodeUplink, as TTN's validator: normalizeUplink (a single object wrapped in a list),
    # encodeDownlink and decodeDownlink.
    assert "uplink: 2 passed, 0 failed; normalized: 1 passed, 0 failed; downlink: 2 passed, 0 failed" \
        in result.output
    assert "valve-codec.yaml#uplinkDecoder1 valve open (normalized)" in result.output
    assert "valve-codec.yaml#downlinkDecoder1 the open command" in result.output
    assert last_line(result) == "5 passed, 0 failed"
    assert "orphan" not in result.output


def test_a_codec_yaml_named_directly_runs_even_if_unreferenced():
    result = run_test("-q", TTN / "vendor" / "acme" / "orphan-codec.yaml")
    assert result.exit_code == 1
    assert "FAIL" in result.output and "data.valve: expected 'Off', got 'On'" in result.output
    assert last_line(result) == "0 passed, 1 failed"


def test_a_downlink_encoder_example_that_differs_fails(tmp_path: Path):
    (tmp_path / "enc.js").write_text("function encodeDownlink(input) { return {bytes: [2], fPort: 10}; }")
    (tmp_path / "enc-codec.yaml").write_text(
        "downlinkEncoder:\n  fileName: enc.js\n  examples:\n    - description: open\n      input:\n"
        "        data: {valve: On}\n      output:\n        bytes: [1]\n        fPort: 10\n")
    result = run_test(tmp_path / "enc-codec.yaml")
    assert "FAIL" in result.output and "bytes[0]: expected 1, got 2" in result.output
    assert last_line(result) == "0 passed, 1 failed"


# --- ChirpStack layout ---------------------------------------------------------------------------

@pytest.mark.parametrize("where", [CHIRPSTACK, CHIRPSTACK / "vendors", CHIRPSTACK / "vendors" / "acme",
                                   CHIRPSTACK / "vendors" / "acme" / "codecs"])
def test_a_chirpstack_repository_or_any_folder_of_it_runs_every_codec(where: Path):
    result = run_test(where)
    assert result.exit_code == 0, result.output
    # meter.js: a decode test (a JS literal with comments and trailing commas) and an encode test,
    # both using Buffer; modern.js: an ES module.
    assert "uplink: 2 passed, 0 failed; downlink: 1 passed, 0 failed" in result.output
    assert "test_decode_meter.json#1 reading" in result.output
    assert last_line(result) == "3 passed, 0 failed"


def test_a_single_chirpstack_codec_file():
    result = run_test(CHIRPSTACK / "vendors" / "acme" / "codecs" / "modern.js")
    assert result.exit_code == 0, result.output
    assert last_line(result) == "1 passed, 0 failed"


def test_chirpstack_comparison_is_json_stringify_equality_and_prints_its_message():
    # Same keys and values in another order: TTN's deep equality would pass, ChirpStack's runner fails.
    result = run_test(FIXTURES / "chirpstack-broken" / "codecs")
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert any(line.startswith("FAIL ") and line.endswith("test_decode_order.json#1 key order matters")
               for line in lines)
    assert '     Expected: {"data":{"a":1,"b":2}}' in lines
    assert '     Got: {"data":{"b":2,"a":1}}' in lines
    assert last_line(result) == "0 passed, 1 failed"


def test_a_codec_that_throws_fails_its_test_and_the_rest_still_run(tmp_path: Path):
    codecs = tmp_path / "codecs"
    codecs.mkdir()
    (codecs / "boom.js").write_text("function decodeUplink(input) { if (input.bytes[0]) throw new Error('bad');"
                                    " return {data: {}}; }")
    (codecs / "test_decode_boom.json").write_text(
        '[{"name": "throws", "input": {"bytes": [1]}, "expected": {}},'
        ' {"name": "fine", "input": {"bytes": [0]}, "expected": {"data": {}}}]')
    result = run_test(codecs)
    assert "Test 'throws' failed - JS error in the call: Error: bad" in result.output
    assert last_line(result) == "1 passed, 1 failed"


def test_an_unreadable_test_file_counts_as_one_failure(tmp_path: Path):
    codecs = tmp_path / "codecs"
    codecs.mkdir()
    (codecs / "x.js").write_text("function decodeUplink(input) { return {data: {}}; }")
    (codecs / "test_decode_x.json").write_text("[ {name: 'unterminated' ")
    result = run_test(codecs)
    assert "not a JS literal" in result.output
    assert last_line(result) == "0 passed, 1 failed"


def test_now_pins_the_clock_for_codecs_that_read_it(tmp_path: Path):
    codecs = tmp_path / "codecs"
    codecs.mkdir()
    (codecs / "clock.js").write_text("function decodeUplink(input) { return {data: {year: new Date().getUTCFullYear(),"
                                     " ms: Date.now() % 1000}}; }")
    (codecs / "test_decode_clock.json").write_text(
        '[{"name": "year", "input": {"bytes": []}, "expected": {"data": {"year": 2001, "ms": 250}}}]')
    assert last_line(run_test(codecs)) == "0 passed, 1 failed"
    assert last_line(run_test("--now", "2001-02-03T04:05:06.250Z", codecs)) == "1 passed, 0 failed"
