"""The decoder contract and the data-driven mapping from vendor fields to the vocabulary."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from edge.model import Reading, Value


@dataclass(slots=True)
class DeviceContext:
    """What a decoder may know about the device besides the payload."""

    dev_eui: str
    variables: Mapping[str, str] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)
    recv_time: float = 0.0


@dataclass(slots=True)
class DecodeResult:
    """Vendor-shaped output, as TTN codecs return it: data plus warnings and errors.

    A non-empty `errors` means the decode failed; `data` is then usually None.
    """

    data: dict[str, Any] | None
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Field:
    """How one vendor field becomes a reading: vocabulary name, unit and linear conversion.

    value_in_unit = vendor_value * scale + offset (the RFC 8798 §3 rule for secondary units).
    """

    name: str
    unit: str | None = None
    scale: float = 1.0
    offset: float = 0.0


@runtime_checkable
class Decoder(Protocol):
    """A payload decoder.

    `id` is `<vendor>/<model>`, lowercase with dashes. `fields` maps keys of `data` (dotted paths
    for nested objects) to the vocabulary. `decode` must not raise for bad bytes: it reports them
    in `errors`. The pipeline treats an exception as a decode failure all the same.
    """

    id: str
    fields: Mapping[str, Field]

    def decode(self, payload: bytes, fport: int, context: DeviceContext) -> DecodeResult: ...


def _walk(prefix: str, data: Mapping[str, Any]) -> list[tuple[str, Any]]:
    # Iterative, depth-first in key order: a deeply nested value cannot exhaust Python's stack
    # (the registry bounds depth and size before normalising; this holds without it too).
    out: list[tuple[str, Any]] = []
    stack = [(prefix, iter(data.items()))]
    while stack:
        path_prefix, items = stack[-1]
        for key, value in items:
            path = f"{path_prefix}{key}"
            if isinstance(value, Mapping):
                stack.append((path + ".", iter(value.items())))
                break
            out.append((path, value))
        else:
            stack.pop()
    return out


def _component(path: str) -> str:
    """Turn a vendor key like `batteryVoltage` or `a.b_c` into a SenML-safe component name."""
    chars: list[str] = []
    for i, ch in enumerate(path):
        if ch.isupper() and i and path[i - 1].islower():
            chars.append("-")
        if ch.isalnum() and ch.isascii():
            chars.append(ch.lower())
        elif ch in "._-":
            chars.append("-" if ch == "_" else ch)
        else:
            chars.append("-")
    return "".join(chars).strip("-.") or "value"


def normalize(data: Mapping[str, Any] | None, fields: Mapping[str, Field]) -> list[Reading]:
    """Map decoded `data` to readings.

    Mapped fields get their vocabulary name, unit and conversion. Scalar fields that the mapping
    does not name are kept, unit-less, under their own key made SenML-safe (so nothing decoded is
    silently lost); lists and nulls are left out of the readings (they stay in the raw uplink).
    """
    if not data:
        return []
    readings: list[Reading] = []
    for path, value in _walk("", data):
        spec = fields.get(path)
        if isinstance(value, bool) or isinstance(value, str):
            if spec is not None:
                readings.append(Reading(spec.name, value, None))
            elif isinstance(value, bool):
                readings.append(Reading(_component(path), value, None))
            continue
        if not isinstance(value, int | float) or (isinstance(value, float) and not math.isfinite(value)):
            continue
        if spec is None:
            readings.append(Reading(_component(path), value, None))
            continue
        converted: Value = value
        if spec.scale != 1.0 or spec.offset != 0.0:
            converted = value * spec.scale + spec.offset
            # Keep integers integral where the conversion allows, e.g. 3600 mV -> 3.6 V stays float
            # but a scale of 1 on an int stays an int; round away binary noise (0.1*3 = 0.30000000000000004).
            converted = float(f"{converted:.12g}")
        readings.append(Reading(spec.name, converted, spec.unit))
    return readings
