"""lorawan-edge: the public API for decoder authors (the only import surface plugins may use)."""

from edge.decoding.base import Decoder, DecodeResult, DeviceContext, Field
from edge.hookspecs import hookimpl
from edge.model import Reading

__all__ = ["DecodeResult", "Decoder", "DeviceContext", "Field", "Reading", "hookimpl"]
