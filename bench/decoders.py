"""Decoder throughput: native Python decoders vs the same devices' JS codecs in the QuickJS sandbox."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

from edge.decoding.base import Decoder, DeviceContext
from edge.decoding.builtin.elsys import ElsysDecoder
from edge.decoding.js.codec import JsCodecDecoder
from edge.simulate import Simulator

REPO = Path(__file__).resolve().parents[1]
# Our own ES5 Elsys codec (tests/decoding/js), written from the Elsys payload format; the vendor's
# JS cannot be shipped (licence), but it does the same TLV walk.
JS_CODEC = REPO / "tests" / "decoding" / "js" / "codecs" / "elsys" / "elsys-tlv-codec.yaml"


# A codec that names Buffer pays for loading the npm package into each fresh context.
BUFFER_CODEC = """function decodeUplink(input) {
  var b = Buffer.from(input.bytes), data = {};
  if (b.length >= 3) { data.type = b.readUInt8(0); data.value = b.readInt16BE(1); }
  return {data: data};
}"""


def _rate(decoder: Decoder, payloads: list[bytes], seconds: float) -> tuple[float, list[float]]:
    """Decodes per second over about `seconds`, and the per-call times in ms."""
    context = DeviceContext("a81758fffe000000")
    calls: list[float] = []
    end = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < end:
        for payload in payloads:
            t = time.perf_counter()
            result = decoder.decode(payload, 5, context)
            calls.append((time.perf_counter() - t) * 1000)
            if result.errors:
                raise RuntimeError(f"{decoder.id} failed on {payload.hex()}: {result.errors}")
        n += len(payloads)
    return n / sum(calls) * 1000, calls


def run(emit: Callable[[str, object], None], seconds: float = 3.0) -> None:
    """Emit native_decodes_per_s, js_decodes_per_s, their ratio and js_context_ms_p50."""
    payloads = [sent.payload for _, _, sent in Simulator(50, seed=1).events(200)]
    native = ElsysDecoder()
    js = JsCodecDecoder.from_yaml(JS_CODEC)
    native_rate, _ = _rate(native, payloads, seconds)
    js_rate, js_calls = _rate(js, payloads, seconds)
    emit("native_decodes_per_s", f"{native_rate:.0f} (elsys/ers, {len(payloads)} simulated ERS payloads)")
    emit("js_decodes_per_s", f"{js_rate:.0f} (the same payloads through an ES5 Elsys codec, fresh context each)")
    emit("native_vs_js_ratio", f"{native_rate / js_rate:.1f}")
    emit("js_context_ms_p50", f"{statistics.median(js_calls):.3f} (one JS decode: new context, script, call)")
    from edge.decoding.js.scripts import buffer_script

    if buffer_script() is not None:
        _, buffer_calls = _rate(JsCodecDecoder("bench/buffer", BUFFER_CODEC), payloads, seconds / 3)
        emit("js_buffer_context_ms_p50", f"{statistics.median(buffer_calls):.3f} (a codec using Buffer: the npm"
             " package is evaluated in each fresh context)")
