"""JsRuntime: fresh-context isolation, the TTN/ChirpStack call contract, sandbox and resource limits."""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from edge.decoding.base import DecodeResult
from edge.decoding.js.replies import EncodeResult
from edge.decoding.js.runtime import JsLimits, JsRuntime
from edge.errors import ConfigError

CODECS = Path(__file__).parent / "codecs"
# Small enough to keep the suite quick, large enough for the legitimate codecs below.
FAST = JsLimits(time_limit=0.05)


def runtime(source: str, limits: JsLimits = FAST) -> JsRuntime:
    return JsRuntime(source, name="test.js", limits=limits)


def decode(source: str, payload: bytes = b"\x01", fport: int = 1, **kwargs) -> DecodeResult:
    return runtime(source).decode_uplink(payload, fport, **kwargs)


def only_error(result: DecodeResult) -> str:
    assert result.data is None
    assert len(result.errors) == 1, result.errors
    return result.errors[0]


# --- isolation: a fresh context per uplink -------------------------------------------------------

def test_runtime_global_state_does_not_survive_between_calls():
    rt = runtime("var count = 0; function decodeUplink(input) { count++; globalThis.seen = (globalThis.seen || 0) + 1;"
                 " return {data: {count: count, seen: seen}}; }")
    results = [rt.decode_uplink(b"", 1) for _ in range(3)]
    assert [r.data for r in results] == [{"count": 1, "seen": 1}] * 3


def test_runtime_prototype_pollution_does_not_leak_to_next_call():
    rt = JsRuntime((CODECS / "acme" / "prototype.js").read_text(), limits=FAST)
    first = rt.decode_uplink(b"\x01\x02\x03", 1)
    second = rt.decode_uplink(b"\x04", 1)
    assert first.data == {"sum": 6, "helper": "helper", "sawPollution": False}
    assert second.data == {"sum": 4, "helper": "helper", "sawPollution": False}


def test_runtime_builtin_overrides_do_not_leak_and_do_not_break_the_wrapper():
    rt = runtime("JSON.stringify = function () { return 'hijacked'; }; JSON.parse = null; Date = null;"
                 "function decodeUplink(input) { return {data: {ok: Math.max(1, 2)}}; }")
    assert rt.decode_uplink(b"", 1) == DecodeResult({"ok": 2})
    assert decode("function decodeUplink(i) { return {data: {s: JSON.stringify([1])}}; }").data == {"s": "[1]"}


def test_runtime_concurrent_calls_from_many_threads():
    rt = runtime("var n = 0; function decodeUplink(input) { n++; return {data: {n: n, b: input.bytes[0]}}; }",
                 JsLimits(time_limit=1.0))
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda i: rt.decode_uplink(bytes([i % 256]), 1), range(200)))
    assert [r.data for r in results] == [{"n": 1, "b": i % 256} for i in range(200)]


# --- the call contract ---------------------------------------------------------------------------

def test_runtime_input_shape_variables_and_recv_time():
    result = decode(
        "function decodeUplink(input) { return {data: {"
        " isArray: Array.isArray(input.bytes), bytes: input.bytes, fPort: input.fPort,"
        " vars: input.variables, isDate: input.recvTime instanceof Date, t: input.recvTime.toISOString()}}; }",
        b"\x00\xff", 42, variables={"calibration": "3.5"}, recv_time=1_700_000_000.25,
    )
    assert result == DecodeResult({"isArray": True, "bytes": [0, 255], "fPort": 42, "vars": {"calibration": "3.5"},
                                   "isDate": True, "t": "2023-11-14T22:13:20.250Z"})


def test_runtime_missing_recv_time_means_now():
    result = decode("function decodeUplink(input) { return {data: {t: input.recvTime.getTime()}}; }")
    assert result.data is not None
    assert abs(result.data["t"] / 1000 - time.time()) < 5


def test_runtime_undefined_becomes_null_as_in_the_ttn_validator():
    # The Things Stack exports the result value by value: an undefined property is null, not absent.
    result = decode("function decodeUplink() { var v; return {data: {gone: undefined, unset: v, list: [1, undefined],"
                    " nan: NaN, inf: -Infinity, date: new Date(0), nested: {u: undefined, f: function () {}}}}; }")
    assert result == DecodeResult({"gone": None, "unset": None, "list": [1, None], "nan": None, "inf": None,
                                   "date": "1970-01-01T00:00:00.000Z", "nested": {"u": None}})
    # The legacy Decoder's result goes through the same conversion.
    assert decode("function Decoder(bytes, port) { return {a: undefined, b: bytes[0]}; }").data == {"a": None, "b": 1}


def test_runtime_missing_data_uses_chirpstacks_wording():
    result = decode("function decodeUplink() { return {warnings: ['w']}; }")
    assert result == DecodeResult(None, ["w"], ["decodeUplink did not return 'data'"])
    assert only_error(decode("function decodeUplink() { return {data: undefined}; }")) == \
        "decodeUplink did not return 'data'"


def test_runtime_non_object_results_are_errors():
    assert only_error(decode("function decodeUplink() { }")) == "decodeUplink returned nothing, not an object"
    assert only_error(decode("function decodeUplink() { return 5; }")) == \
        "decodeUplink returned a number, not an object"
    assert only_error(decode("function decodeUplink() { return {data: [1]}; }")) == \
        "decodeUplink returned 'data' that is an array, not an object"


def test_runtime_errors_array_is_a_failure():
    result = decode("function decodeUplink() { return {errors: ['unknown FPort'], warnings: ['w']}; }")
    assert result == DecodeResult(None, ["w"], ["unknown FPort"])
    # Data returned next to errors is kept, as the TTN validator compares it too.
    assert decode("function decodeUplink() { return {data: {a: 1}, errors: ['e']}; }") == \
        DecodeResult({"a": 1}, [], ["e"])
    # Empty errors is a success; odd shapes are kept rather than dropped.
    assert decode("function decodeUplink() { return {data: {}, errors: []}; }") == DecodeResult({})
    assert decode("function decodeUplink() { return {errors: 'bad'}; }").errors == ["bad"]
    assert decode("function decodeUplink() { return {errors: [{code: 3}]}; }").errors == ['{"code": 3}']


def test_runtime_legacy_decoder_is_wrapped_like_the_things_stack():
    rt = JsRuntime((CODECS / "acme" / "payload" / "legacy.js").read_text(), limits=FAST)
    assert rt.entry_points == {"Decoder"}
    assert rt.decode_uplink(bytes([98, 0xFF, 0xF6]), 85) == \
        DecodeResult({"battery": 98, "temperature": -1, "status": "ok"})
    assert only_error(decode("function Decoder(bytes, port) { }")) == "Decoder returned no data"


def test_runtime_chirpstack_v3_decode_is_the_last_fallback():
    result = decode("function Decode(fPort, bytes, variables) { return {p: fPort, b: bytes, v: variables}; }",
                    b"\x07", 3, variables={"k": "v"})
    assert result == DecodeResult({"p": 3, "b": [7], "v": {"k": "v"}})


def test_runtime_decode_uplink_wins_over_legacy_functions():
    result = decode("function Decoder() { return {which: 'legacy'}; }"
                    "function decodeUplink() { return {data: {which: 'new'}}; }")
    assert result.data == {"which": "new"}


def test_runtime_script_without_entry_point_is_a_config_error():
    with pytest.raises(ConfigError, match="defines none of the functions decodeUplink"):
        runtime("var x = 1;")


def test_runtime_encode_only_script_reports_missing_decoder_per_call():
    rt = runtime("function encodeDownlink(input) { return {bytes: [1]}; }")
    assert only_error(rt.decode_uplink(b"", 1)) == "test.js defines none of decodeUplink, Decoder, Decode"


def test_runtime_sloppy_mode_allows_undeclared_assignment():
    assert decode("function decodeUplink(input) { implicitGlobal = input.bytes[0];"
                  " return {data: {v: implicitGlobal, sloppy: (function () { return this; })() === globalThis}}; }"
                  ).data == {"v": 1, "sloppy": True}


def test_runtime_use_strict_file_fails_only_when_the_bad_branch_runs():
    rt = JsRuntime((CODECS / "acme" / "strict.js").read_text(), name="strict.js", limits=FAST)
    assert rt.decode_uplink(b"\x05", 1) == DecodeResult({"strict": True, "first": 5})
    error = only_error(rt.decode_uplink(b"\x05", 99))
    assert error.startswith("JS error in the call: ReferenceError: leaked is not defined")
    assert "strict.js:" in error
    assert rt.decode_uplink(b"\x06", 1).data == {"strict": True, "first": 6}


def test_runtime_modern_syntax():
    rt = JsRuntime((CODECS / "acme" / "modern.js").read_text(), limits=FAST)
    assert rt.decode_uplink(bytes([1, 2, 0x10, 0, 5]), 2) == \
        DecodeResult({"counter": 258, "level": 16, "alarms": ["door", "lowBattery"]})


def test_runtime_throw_is_an_error_and_next_call_works():
    rt = runtime("function decodeUplink(input) { if (input.fPort === 1) { throw new Error('boom'); }"
                 " return {data: {ok: true}}; }")
    error = only_error(rt.decode_uplink(b"", 1))
    assert error.startswith("JS error in the call: Error: boom (at decodeUplink (test.js:1:")
    assert rt.decode_uplink(b"", 2).data == {"ok": True}
    assert only_error(decode("function decodeUplink() { throw 'plain string'; }")) == \
        "JS error in the call: plain string"
    assert only_error(decode("function decodeUplink() { throw undefined; }")) == "JS error in the call: undefined"
    # QuickJS reports an out-of-memory it cannot even allocate an error for as a bare null, and
    # by then the memory is freed again, so a codec that throws null reads as out of memory.
    assert only_error(decode("function decodeUplink() { throw null; }")) == "test.js ran out of memory (limit 16 MiB)"


def test_runtime_syntax_and_top_level_errors_are_config_errors():
    with pytest.raises(ConfigError, match="SyntaxError"):
        runtime("function decodeUplink( {")
    with pytest.raises(ConfigError, match="while evaluating the script: ReferenceError: exports is not defined"):
        runtime("exports.decodeUplink = function () {};")


def test_runtime_unserialisable_results_are_errors():
    assert only_error(decode("function decodeUplink() { var o = {}; o.self = o; return {data: o}; }")).startswith(
        "JS error in the call: TypeError: circular reference")
    assert "BigInt" in only_error(decode("function decodeUplink() { return {data: {n: 10n}}; }"))


def test_runtime_encode_downlink():
    rt = runtime("function encodeDownlink(input) { return {bytes: [input.data.level, +input.variables.k],"
                 " fPort: 10}; }")
    assert rt.encode_downlink({"level": 7}, variables={"k": "2"}) == EncodeResult(b"\x07\x02", 10)
    rt = runtime("function encodeDownlink(input) { return {bytes: [1]}; }")
    assert rt.encode_downlink({}, fport=4) == EncodeResult(b"\x01", 4)
    assert rt.encode_downlink({}) == EncodeResult(b"\x01", None)


def test_runtime_encode_downlink_errors_and_legacy_encoders():
    assert runtime("function encodeDownlink() { return {errors: ['no']}; }").encode_downlink({}, 1) == \
        EncodeResult(None, 1, [], ["no"])
    bad = runtime("function encodeDownlink() { return {bytes: [256]}; }").encode_downlink({}, 1)
    assert bad.errors == ["encodeDownlink did not return 'bytes' as integers 0-255"]
    port = runtime("function encodeDownlink() { return {bytes: [], fPort: 0}; }").encode_downlink({}, 1)
    assert port.errors == ["encodeDownlink returned an invalid fPort 0"]
    # The Things Stack v2 Encoder(object, port) and ChirpStack v3 Encode(fPort, obj, variables).
    assert runtime("function Encoder(obj, port) { return [obj.a, port]; }").encode_downlink({"a": 9}, 2) == \
        EncodeResult(b"\x09\x02", 2)
    assert runtime("function Encode(port, obj, vars) { return [port, obj.a]; }").encode_downlink({"a": 1}, 3) == \
        EncodeResult(b"\x03\x01", 3)
    assert runtime("function decodeUplink() {}").encode_downlink({}, 1).errors == \
        ["test.js defines none of encodeDownlink, Encoder, Encode"]


# --- resource limits -----------------------------------------------------------------------------

def test_runtime_infinite_loop_stops_within_the_limit_and_next_call_works():
    rt = runtime("function decodeUplink(input) { while (input.fPort === 1) {} return {data: {ok: 1}}; }")
    start = time.monotonic()
    assert only_error(rt.decode_uplink(b"", 1)) == "test.js exceeded the CPU time limit of 50 ms"
    # Generous bound: the limit is CPU time, and a loaded CI machine may stretch wall time.
    assert time.monotonic() - start < 2.0
    assert rt.decode_uplink(b"", 2).data == {"ok": 1}


def test_runtime_top_level_infinite_loop_is_a_config_error():
    with pytest.raises(ConfigError, match="exceeded the CPU time limit"):
        runtime("for (;;) {}")


@pytest.mark.parametrize("bomb", [
    "var a = []; for (;;) { a.push({x: 1, y: [1, 2, 3]}); }",
    "var s = 'ab'; for (;;) { s = s.concat(s); }",
    "var a = []; for (;;) { a.push('x'.repeat(1000) + Math.random()); }",
    "new Array(1e8).fill(0);",
])
def test_runtime_memory_bomb_reports_out_of_memory_and_next_call_works(bomb):
    rt = runtime(f"function decodeUplink(input) {{ if (input.fPort === 1) {{ {bomb} }} return {{data: {{ok: 1}}}}; }}",
                 JsLimits(time_limit=2.0))
    assert only_error(rt.decode_uplink(b"", 1)) == "test.js ran out of memory (limit 16 MiB)"
    assert rt.decode_uplink(b"", 2).data == {"ok": 1}


def test_runtime_deep_recursion_is_a_stack_overflow_and_next_call_works():
    rt = runtime("function f(n) { return f(n + 1) + 1; }"
                 "function decodeUplink(input) { return {data: {v: input.fPort === 1 ? f(0) : 1}}; }")
    assert only_error(rt.decode_uplink(b"", 1)).startswith("stack overflow in test.js: RangeError: Maximum call stack")
    assert rt.decode_uplink(b"", 2).data == {"v": 1}


def test_runtime_deep_json_nesting_is_an_error_not_a_crash():
    result = decode("function decodeUplink() { var o = {}; for (var i = 0; i < 100000; i++) { o = {o: o}; }"
                    " return {data: o}; }")
    assert result.data is None
    assert result.errors


def test_runtime_catastrophic_regex_is_interrupted():
    assert "CPU time limit" in only_error(decode("function decodeUplink() { /(a+)+b/.test('a'.repeat(40)); }"))


def test_runtime_atomics_wait_cannot_block():
    error = only_error(decode("function decodeUplink() {"
                              " Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 10000); }"))
    assert "cannot block" in error


def test_runtime_slow_getter_in_result_is_interrupted():
    result = decode("function decodeUplink() { return {data: {get x() { for (;;) {} }}}; }")
    assert only_error(result) == "test.js exceeded the CPU time limit of 50 ms"


def test_runtime_limits_are_validated():
    with pytest.raises(ValueError, match="time_limit"):
        JsLimits(time_limit=0)
    with pytest.raises(ValueError, match="memory_limit"):
        JsLimits(memory_limit=1000)
    with pytest.raises(ValueError, match="stack_limit"):
        JsLimits(stack_limit=10)


def _burner(stop: threading.Event) -> None:
    data = os.urandom(1 << 20)
    while not stop.is_set():
        hashlib.sha256(data).digest()  # releases the GIL, so it burns CPU next to the codec


def test_runtime_other_threads_cpu_does_not_cut_a_legitimate_codec_short():
    # QuickJS's limit counts the CPU time of the whole process. Calibrate a loop to about 40 %
    # of the limit on this thread, then run it while other threads keep every core busy.
    limits = JsLimits(time_limit=0.2)
    rt = runtime("function decodeUplink(input) { var n = +input.variables.n, x = 0;"
                 " for (var i = 0; i < n; i++) { x = (x + i) % 1000003; } return {data: {x: x}}; }", limits)
    n = 100_000
    while True:
        t0 = time.thread_time()
        assert rt.decode_uplink(b"", 1, variables={"n": str(n)}).errors == []
        if time.thread_time() - t0 > 0.02:
            break
        n *= 2
    per_second = n / (time.thread_time() - t0)
    n = int(per_second * 0.08)
    stop = threading.Event()
    burners = [threading.Thread(target=_burner, args=(stop,)) for _ in range((os.cpu_count() or 1) + 1)]
    for t in burners:
        t.start()
    try:
        time.sleep(0.05)
        results = [rt.decode_uplink(b"", 1, variables={"n": str(n)}) for _ in range(3)]
    finally:
        stop.set()
        for t in burners:
            t.join()
    assert [r.errors for r in results] == [[], [], []]


def test_runtime_infinite_loop_under_cpu_contention_still_stops():
    rt = runtime("function decodeUplink() { for (;;) {} }", JsLimits(time_limit=0.05))
    stop = threading.Event()
    burners = [threading.Thread(target=_burner, args=(stop,)) for _ in range((os.cpu_count() or 1) + 1)]
    for t in burners:
        t.start()
    try:
        t0 = time.thread_time()
        error = only_error(rt.decode_uplink(b"", 1))
        used = time.thread_time() - t0
    finally:
        stop.set()
        for t in burners:
            t.join()
    assert error == "test.js exceeded the CPU time limit of 50 ms"
    # At most the first attempt plus one retry, each about one limit of this thread's CPU.
    assert used < 0.05 * 2 + 0.1


# --- sandbox -------------------------------------------------------------------------------------

# The ECMAScript built-ins QuickJS provides, plus our console. A new engine version that adds a
# global fails this test, so that someone checks it gives no host access.
ALLOWED_GLOBALS = {
    "AggregateError", "Array", "ArrayBuffer", "AsyncDisposableStack", "Atomics", "BigInt", "BigInt64Array",
    "BigUint64Array", "Boolean", "DOMException", "DataView", "Date", "DisposableStack", "Error", "EvalError",
    "FinalizationRegistry", "Float16Array", "Float32Array", "Float64Array", "Function", "Infinity", "Int16Array",
    "Int32Array", "Int8Array", "InternalError", "Iterator", "JSON", "Map", "Math", "NaN", "Number", "Object",
    "Promise", "Proxy", "RangeError", "ReferenceError", "Reflect", "RegExp", "Set", "SharedArrayBuffer", "String",
    "SuppressedError", "Symbol", "SyntaxError", "TypeError", "URIError", "Uint16Array", "Uint32Array", "Uint8Array",
    "Uint8ClampedArray", "WeakMap", "WeakRef", "WeakSet", "atob", "btoa", "console", "decodeURI",
    "decodeURIComponent", "encodeURI", "encodeURIComponent", "escape", "eval", "globalThis", "isFinite", "isNaN",
    "parseFloat", "parseInt", "performance", "queueMicrotask", "undefined", "unescape",
}


def test_runtime_exposes_no_host_globals():
    # Buffer is there on purpose (ChirpStack v4's runtime has it): tests/decoding/js/test_buffer.py.
    probes = ["require", "process", "std", "os", "fetch", "XMLHttpRequest", "module", "exports",
              "setTimeout", "setInterval", "scriptArgs", "print", "importScripts", "WebSocket", "Deno", "Bun",
              "navigator", "__edge_console_sink", "__loadScript", "load"]
    body = ", ".join(f"{name!r}: typeof {name}" for name in probes)
    result = decode(f"function decodeUplink() {{ return {{data: {{{body}, console: typeof console.log}}}}; }}")
    assert result.data == {**dict.fromkeys(probes, "undefined"), "console": "function"}


def test_runtime_global_object_holds_only_standard_builtins():
    result = decode("function decodeUplink() { return {data: {names: Object.getOwnPropertyNames(globalThis)}}; }")
    assert result.data is not None
    assert set(result.data["names"]) - {"decodeUplink"} <= ALLOWED_GLOBALS


def test_runtime_dynamic_import_gives_no_module():
    # No module loader is installed: import() rejects, and pending jobs never run anyway.
    result = decode("function decodeUplink() { var p = import('std'); return {data: {t: typeof p.then}}; }")
    assert result.data == {"t": "function"}


def test_runtime_dates_use_utc():
    assert decode("function decodeUplink() { var d = new Date(0); return {data: {h: d.getHours(),"
                  " off: d.getTimezoneOffset(), local: new Date(1970, 0, 1).getTime()}}; }").data == \
        {"h": 0, "off": 0, "local": 0}


def test_runtime_forces_utc_even_when_the_process_zone_differs():
    # A POSIX zone string needs no tz database: "ABC-3" is UTC+3.
    code = ("import quickjs; before = quickjs.Context().eval('new Date(0).getHours()');"
            "import edge.decoding.js.runtime; after = quickjs.Context().eval('new Date(0).getHours()');"
            "print(before, after)")
    env = {**os.environ, "TZ": "ABC-3"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["3", "0"]


def test_runtime_console_goes_to_debug_log_and_is_bounded(caplog):
    rt = JsRuntime((CODECS / "acme" / "prototype.js").read_text(), name="prototype.js", limits=FAST)
    with caplog.at_level(logging.DEBUG, logger="edge.decoding.js.runtime"):
        assert rt.decode_uplink(b"\x01", 3).errors == []
    assert [r.getMessage() for r in caplog.records] == \
        ['Codec prototype.js console.log: config frame {"port":3,"bytes":[1]}']
    caplog.clear()
    noisy = runtime("function decodeUplink() { for (var i = 0; i < 10000; i++) { console.warn('line', i, {i: i}); }"
                    " console.error(); return {data: {}}; }", JsLimits(time_limit=1.0, console_lines=5,
                                                                          console_chars=8))
    with caplog.at_level(logging.DEBUG, logger="edge.decoding.js.runtime"):
        assert noisy.decode_uplink(b"", 1).errors == []
    messages = [r.getMessage() for r in caplog.records]
    assert messages[:5] == ["Codec test.js console.warn: line 0 {"] + \
        [f"Codec test.js console.warn: line {i} {{" for i in range(1, 5)]
    assert messages[5:] == ["Codec test.js: further console output of this call dropped"]


def test_runtime_console_is_silent_without_debug_logging(caplog):
    with caplog.at_level(logging.INFO, logger="edge.decoding.js.runtime"):
        assert decode("function decodeUplink() { console.log('x'); console.info({a: 1}); return {data: {}}; }"
                      ).errors == []
    assert caplog.records == []


def test_runtime_console_output_before_a_failure_is_still_logged(caplog):
    rt = runtime("console.log('loading'); function decodeUplink() { console.error('about to loop'); for (;;) {} }")
    with caplog.at_level(logging.DEBUG, logger="edge.decoding.js.runtime"):
        assert "CPU time limit" in only_error(rt.decode_uplink(b"", 1))
    messages = [r.getMessage() for r in caplog.records]
    assert "Codec test.js console.log: loading" in messages
    assert "Codec test.js console.error: about to loop" in messages


def test_runtime_instances_are_reusable_after_every_kind_of_failure():
    rt = runtime("function f() { f(); }"
                 "function decodeUplink(input) { switch (input.fPort) {"
                 " case 1: for (;;) {} case 2: var a = []; for (;;) a.push([1, 2, 3]);"
                 " case 3: f(); case 4: throw new TypeError('t'); default: return {data: {port: input.fPort}}; } }",
                 JsLimits(time_limit=0.5))
    for port in (1, 2, 3, 4):
        assert rt.decode_uplink(b"", port).errors
        assert rt.decode_uplink(b"", 10 + port).data == {"port": 10 + port}
