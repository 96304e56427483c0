"""JavaScript payload codecs (TTN Device Repository and ChirpStack) run in a sandboxed QuickJS."""

from edge.decoding.js.codec import JsCodecDecoder
from edge.decoding.js.replies import EncodeResult
from edge.decoding.js.runtime import JsLimits, JsRuntime

__all__ = ["EncodeResult", "JsCodecDecoder", "JsLimits", "JsRuntime"]
