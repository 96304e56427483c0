"""The decoder contract and the data-driven mapping from vendor fields to the vocabulary."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from edge.model import Reading


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
    """The legacy way a plugin maps one vendor field: vocabulary name, unit and linear conversion.

    value_in_unit = vendor_value * scale + offset (the RFC 8798 §3 rule for secondary units).
    Field maps (docs/field-maps.md) replace these tables; a decoder's `fields` still works, turned
    into a map when no YAML map serves the decoder.
    """

    name: str
    unit: str | None = None
    scale: float = 1.0
    offset: float = 0.0


@runtime_checkable
class Decoder(Protocol):
    """A payload decoder.

    `id` is `<vendor>/<model>`, lowercase with dashes. `decode` returns the vendor's `data`
    exactly as the vendor's codec shapes it and must not raise for bad bytes: it reports them in
    `errors` (the pipeline treats an exception as a decode failure all the same). What the fields
    mean is not the decoder's business: the field map `native:<id>` (or one of its `ttn_codecs`)
    says it, and the normaliser (edge/decoding/normalize.py) applies it. Optional attributes:
    `aliases`, `ttn_codecs`, `codecs` (more map keys, `<catalogue>:<id>`), and the legacy
    `fields` (Mapping[str, Field]).
    """

    id: str

    def decode(self, payload: bytes, fport: int, context: DeviceContext) -> DecodeResult: ...


def normalize(data: Mapping[str, Any] | None, fields: Mapping[str, Field]) -> list[Reading]:
    """Readings from `data` with a legacy `fields` table (kept for plugins and their tests)."""
    from edge.decoding.fieldmap import from_fields
    from edge.decoding.normalize import normalise

    return normalise(data, from_fields(fields)).readings
