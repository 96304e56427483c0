"""The JavaScript the runtime evaluates around a codec: call wrappers, console, module and clock shims, Buffer."""

from __future__ import annotations

import functools
import json
import os
import re
from pathlib import Path
from typing import Final

# Entry points the runtime recognises, newest contract first (see CALLS for the wrapping).
UPLINK_ENTRY_POINTS: Final = ("decodeUplink", "Decoder", "Decode")
DOWNLINK_ENTRY_POINTS: Final = ("encodeDownlink", "Encoder", "Encode")

# Functions a catalogue test may call by name (ChirpStack's runner and TTN's validator).
CALLABLE_ROUTINES: Final = ("decodeUplink", "normalizeUplink", "encodeDownlink", "decodeDownlink")

# ChirpStack v4 gives codecs a Node-style Buffer: the npm `buffer` package (feross/buffer) with its
# two dependencies. We load the same package, as installed by the distribution (Debian's
# node-buffer puts it in /usr/share/nodejs) or by npm into a folder named in EDGE_NODE_PATH.
BUFFER_PACKAGES: Final = ("base64-js", "ieee754", "buffer")
NODE_PATH_DIRS: Final = ("/usr/share/nodejs", "/usr/lib/nodejs", "/usr/local/lib/node_modules")
# A codec that never names Buffer cannot reach it (eval and Function see no host either), so the
# ~3 ms (x86-64) it costs to load the package into a context is spent only for codecs that name it.
MENTIONS_BUFFER: Final = re.compile(r"\bBuffer\b")
# An ES-module codec: `export function decodeUplink ...`, `export { decodeUplink }`, ...
ES_MODULE: Final = re.compile(r"^[ \t]*export\s+(?:default\s+|async\s+)?(?:function|const|let|var|class|\{)",
                              re.MULTILINE)
# ChirpStack's own runner puts `import { Buffer } from "buffer"` above the codec; a codec that
# says it itself gets the global instead (this binding has no module loader).
IMPORT_BUFFER: Final = re.compile(r"^[ \t]*import\s*\{\s*Buffer\s*\}\s*from\s*['\"]buffer['\"][ \t]*;?",
                                  re.MULTILINE)
# After an ES-module codec, its entry points become globals, where the call wrapper looks them up.
MODULE_FOOTER: Final = "\n;" + "".join(
    f"if (typeof {name} === 'function') {{ globalThis.{name} = {name}; }}\n"
    for name in ("decodeUplink", "Decoder", "Decode", "encodeDownlink", "Encoder", "Encode", "decodeDownlink",
                 "normalizeUplink"))
# Reports how a module's evaluation promise settled (QuickJS evaluates modules asynchronously).
SETTLE: Final = r"""(function (promise) {
  var state = {done: false, error: null};
  promise.then(function () { state.done = true; },
               function (e) { state.done = true; state.error = String(e) + (e && e.stack ? '\n' + e.stack : ''); });
  return function () { return JSON.stringify(state); };
})"""
# For tests whose codec reads the clock (`new Date()`, Date.now()): the time stands still there.
PINNED_CLOCK: Final = r"""(function (global, now) {
  var RealDate = Date;
  function PinnedDate() {
    if (!new.target) { return new RealDate(now).toString(); }
    var args = arguments.length === 0 ? [now] : Array.prototype.slice.call(arguments);
    return Reflect.construct(RealDate, args, new.target);
  }
  PinnedDate.prototype = RealDate.prototype;
  PinnedDate.now = function () { return now; };
  PinnedDate.UTC = RealDate.UTC;
  PinnedDate.parse = RealDate.parse;
  Object.defineProperty(RealDate.prototype, 'constructor', {value: PinnedDate, writable: true, configurable: true});
  Object.defineProperty(global, 'Date', {value: PinnedDate, writable: true, configurable: true});
})(globalThis, %r)"""
# The prelude is evaluated first in every fresh context. It captures JSON and Date before the
# codec can replace them, installs `console`, and returns the function that calls the codec.
# QuickJS parses about 40 µs per KB, so each call gets only the pieces its mode needs.
#
# Without DEBUG logging `console` is a set of no-ops. With it, output goes to a bounded buffer
# that Python drains after the call (the binding cannot call into Python under a time limit).
_CONSOLE_SILENT: Final = r"""
  var noop = function () {}, lines = [], dropped = false;
  var console = {log: noop, info: noop, debug: noop, trace: noop, dir: noop, warn: noop, error: noop};
"""
_CONSOLE_BUFFERED: Final = r"""
  var lines = [], dropped = false;
  function text(args) {
    var parts = [];
    for (var i = 0; i < args.length; i++) {
      var a = args[i], s;
      if (typeof a === 'string') { s = a; }
      else { try { s = stringify(a); } catch (e) { s = undefined; } if (s === undefined) { s = String(a); } }
      parts.push(s.length > maxChars ? s.slice(0, maxChars) : s);
    }
    return parts.join(' ').slice(0, maxChars);
  }
  function method(level) {
    return function () {
      if (lines.length >= maxLines) { dropped = true; return; }
      lines.push([level, text(arguments)]);
    };
  }
  var console = {};
  var levels = ['log', 'info', 'debug', 'trace', 'dir', 'warn', 'error'];
  for (var i = 0; i < levels.length; i++) { console[levels[i]] = method(levels[i]); }
"""
# Mirrors The Things Stack's wrapper: decodeUplink(input) if defined, else the v2
# `Decoder(bytes, fPort)` whose return value becomes `data`; ChirpStack v3's
# `Decode(fPort, bytes, variables)` last. Names are looked up at call time, which also finds
# top-level let/const bindings. The output is serialised as the TTN validator sees it: undefined
# becomes null (also as an object value), NaN and Infinity become null.
CALLS: Final = {
    "uplink": r"""
    var input = parse(inputJson), entry = null, result;
    input.recvTime = new NativeDate(recvMs);
    if (typeof decodeUplink === 'function') {
      entry = 'decodeUplink'; result = decodeUplink(input);
    } else if (typeof Decoder === 'function') {
      entry = 'Decoder'; result = {data: Decoder(input.bytes, input.fPort)};
    } else if (typeof Decode === 'function') {
      entry = 'Decode'; result = {data: Decode(input.fPort, input.bytes, input.variables)};
    }
    return stringify({entry: entry, result: result}, undefinedAsNull);
""",
    "downlink": r"""
    var input = parse(inputJson), entry = null, result;
    if (typeof encodeDownlink === 'function') {
      entry = 'encodeDownlink'; result = encodeDownlink(input);
    } else if (typeof Encoder === 'function') {
      entry = 'Encoder'; result = {bytes: Encoder(input.data, input.fPort), fPort: input.fPort};
    } else if (typeof Encode === 'function') {
      entry = 'Encode'; result = {bytes: Encode(input.fPort, input.data, input.variables)};
    }
    return stringify({entry: entry, result: result});
""",
    # A catalogue test: the routine gets the test's input verbatim. `value` is the result as the
    # TTN validator sees it (undefined as null); `got` and `want` are plain JSON.stringify of the
    # result and of the expected value, which is how ChirpStack's runner compares.
    "call": r"""
    var spec = parse(inputJson), fn = null, out;
    if (spec.routine === 'decodeUplink' && typeof decodeUplink === 'function') { fn = decodeUplink; }
    if (spec.routine === 'encodeDownlink' && typeof encodeDownlink === 'function') { fn = encodeDownlink; }
    if (spec.routine === 'decodeDownlink' && typeof decodeDownlink === 'function') { fn = decodeDownlink; }
    if (spec.routine === 'normalizeUplink' && typeof normalizeUplink === 'function') { fn = normalizeUplink; }
    if (fn === null) { return stringify({entry: null}); }
    out = fn(spec.input);
    return stringify({entry: spec.routine, value: stringify(out, undefinedAsNull), got: stringify(out),
                      want: stringify(spec.expected)});
""",
    "probe": r"""
    return stringify({
      decodeUplink: typeof decodeUplink === 'function', Decoder: typeof Decoder === 'function',
      Decode: typeof Decode === 'function', encodeDownlink: typeof encodeDownlink === 'function',
      Encoder: typeof Encoder === 'function', Encode: typeof Encode === 'function'
    });
""",
}
_PRELUDE: Final = r"""(function (global, maxLines, maxChars) {
  var stringify = JSON.stringify, parse = JSON.parse, NativeDate = Date;
  // The Things Stack exports the codec's result value by value, so `undefined` arrives as null
  // (JSON.stringify alone would drop the key); functions and symbols still drop out.
  function undefinedAsNull(key, value) { return value === undefined ? null : value; }
%s
  Object.defineProperty(global, 'console', {value: console, writable: true, configurable: true});
  return function (mode, inputJson, recvMs) {
    if (mode === 'console') { return stringify({lines: lines, dropped: dropped}); }
%s
  };
})(globalThis, %d, %d)"""


def preludes(console_lines: int, console_chars: int) -> dict[tuple[str, bool], str]:
    """The prelude for each call mode, without (False) and with (True) a console that keeps its output."""
    return {(mode, collect): _PRELUDE % (_CONSOLE_BUFFERED if collect else _CONSOLE_SILENT, call, console_lines,
                                         console_chars)
            for mode, call in CALLS.items()
            for collect in (False, True)}


def node_path() -> list[str]:
    """Folders searched for the npm packages: EDGE_NODE_PATH (colon-separated) first, then the distro's."""
    extra = [p for p in os.environ.get("EDGE_NODE_PATH", "").split(os.pathsep) if p]
    return [*extra, *NODE_PATH_DIRS]


@functools.cache
def buffer_script() -> str | None:
    """A script that defines the global `Buffer` from the npm `buffer` package, or None if not installed.

    The three CommonJS packages are wrapped in a minimal `require` of our own; read once per process.
    """
    sources: dict[str, str] = {}
    for package in BUFFER_PACKAGES:
        for folder in node_path():
            path = Path(folder) / package / "index.js"
            try:
                sources[package] = path.read_text(encoding="utf-8")
                break
            except OSError:
                continue
        else:
            return None
    modules = ",\n".join(f"{json.dumps(name)}: function (module, exports, require) {{\n{text}\n}}"
                         for name, text in sources.items())
    return (f"(function (global) {{\nvar factories = {{\n{modules}\n}}, cache = {{}};\n"
            "function require(name) {\n"
            "  if (!cache[name]) { var module = {exports: {}}; cache[name] = module;"
            " factories[name](module, module.exports, require); }\n"
            "  return cache[name].exports;\n}\n"
            "Object.defineProperty(global, 'Buffer', {value: require('buffer').Buffer, writable: true,"
            " configurable: true});\n})(globalThis);\n")
