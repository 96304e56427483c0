"""ChirpStack v4's codec runtime features: the npm Buffer, ES-module codecs, recvTime and variables."""

from __future__ import annotations

import pytest

from edge.decoding.base import DecodeResult
from edge.decoding.js.runtime import JsLimits, JsRuntime, js_literal
from edge.decoding.js.scripts import buffer_script
from edge.errors import ConfigError

FAST = JsLimits(time_limit=0.5)

pytestmark = pytest.mark.skipif(buffer_script() is None, reason="node-buffer is not installed (scripts/setup)")


def runtime(source: str) -> JsRuntime:
    return JsRuntime(source, name="test.js", limits=FAST)


def test_buffer_is_the_npm_package_with_nodes_api():
    rt = runtime("function decodeUplink(input) { var b = Buffer.from(input.bytes);"
                 " return {data: {u16: b.readUInt16BE(0), i8: b.readInt8(2), f: b.readFloatLE(3),"
                 " hex: b.toString('hex'), b64: b.toString('base64'), isBuf: Buffer.isBuffer(b),"
                 " slice: Array.from(b.slice(1, 3))}}; }")
    payload = bytes([0x01, 0x02, 0xFF]) + bytes.fromhex("0000c03f")  # 1.5 as little-endian float
    assert rt.decode_uplink(payload, 1).data == {
        "u16": 258, "i8": -1, "f": 1.5, "hex": "0102ff0000c03f", "b64": "AQL/AADAPw==", "isBuf": True,
        "slice": [2, 255]}


def test_buffer_in_an_encoder():
    rt = runtime("function encodeDownlink(input) { var b = Buffer.alloc(4); b.writeUInt32BE(input.data.n, 0);"
                 " return {bytes: Array.from(b), fPort: 3}; }")
    result = rt.encode_downlink({"n": 0x01020304})
    assert (result.payload, result.fport, result.errors) == (bytes([1, 2, 3, 4]), 3, [])


def test_buffer_is_fresh_per_call():
    rt = runtime("function decodeUplink(input) { var before = Buffer.poisoned; Buffer.poisoned = true;"
                 " return {data: {before: before === undefined}}; }")
    assert [rt.decode_uplink(b"", 1).data for _ in range(2)] == [{"before": True}] * 2


def test_a_codec_that_does_not_name_buffer_does_not_pay_for_it():
    rt = runtime("function decodeUplink(input) { return {data: {g: typeof globalThis['Buf' + 'fer']}}; }")
    assert rt.decode_uplink(b"", 1).data == {"g": "undefined"}


def test_es_module_codec_is_evaluated_as_a_module():
    rt = runtime("const K = 2;\nexport function decodeUplink(input) {\n"
                 "  return {data: {v: input.bytes[0] * K, strict: this === undefined}};\n}\n"
                 "export const encodeDownlink = (input) => ({bytes: [input.data.v / K]});\n")
    assert rt.is_module
    assert rt.entry_points == {"decodeUplink", "encodeDownlink"}
    assert rt.decode_uplink(b"\x05", 1) == DecodeResult({"v": 10, "strict": True})
    assert rt.encode_downlink({"v": 8}).payload == b"\x04"


def test_es_module_may_import_buffer_like_chirpstacks_runner():
    rt = runtime('import { Buffer } from "buffer";\n'
                 "export function decodeUplink(input) {\n"
                 "  return {data: {h: Buffer.from(input.bytes).toString('hex')}};\n}")
    assert rt.decode_uplink(b"\xab", 1).data == {"h": "ab"}


def test_es_module_that_throws_while_loading_is_refused():
    with pytest.raises(ConfigError, match="Error: nope"):
        runtime("export function decodeUplink() { return {data: {}}; }\nawait null;\nthrow new Error('nope');")


def test_es_module_endless_loop_hits_the_time_limit():
    rt = JsRuntime("export function decodeUplink(input) { if (input.bytes[0]) { for (;;) {} } return {data: {}}; }",
                   limits=JsLimits(time_limit=0.05))
    result = rt.decode_uplink(b"\x01", 1)
    assert result.errors and "CPU time limit" in result.errors[0]


def test_recv_time_is_a_date_and_variables_arrive():
    rt = runtime("function decodeUplink(input) { return {data: {iso: input.recvTime.toISOString(),"
                 " isDate: input.recvTime instanceof Date, cal: input.variables.calibration}}; }")
    result = rt.decode_uplink(b"", 1, {"calibration": "3.5"}, recv_time=1_700_000_000.25)
    assert result.data == {"iso": "2023-11-14T22:13:20.250Z", "isDate": True, "cal": "3.5"}


def test_js_literal_reads_chirpstack_test_files():
    text = "[\n  // a comment\n  {name: 'a', input: {bytes: [0x0A,],}, expected: {data: {x: 1.50}},},\n] // end"
    assert js_literal(text) == [{"name": "a", "input": {"bytes": [10]}, "expected": {"data": {"x": 1.5}}}]
    with pytest.raises(ConfigError, match="not a JS literal"):
        js_literal("[ {")


def test_pinned_clock_shows_in_new_date_and_date_now_but_dates_from_values_are_real():
    rt = JsRuntime("function decodeUplink(input) { return {data: {now: new Date().toISOString(), ms: Date.now(),"
                   " other: new Date(0).toISOString(), isDate: new Date() instanceof Date}}; }",
                   limits=FAST, pinned_now=86400.5)
    assert rt.decode_uplink(b"", 1).data == {"now": "1970-01-02T00:00:00.500Z", "ms": 86400500,
                                             "other": "1970-01-01T00:00:00.000Z", "isDate": True}
