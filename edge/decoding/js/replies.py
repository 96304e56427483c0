"""What a codec call returns: its JSON reply checked and turned into a DecodeResult, EncodeResult or CallResult."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from edge.decoding.base import DecodeResult
from edge.decoding.js.scripts import DOWNLINK_ENTRY_POINTS, UPLINK_ENTRY_POINTS


@dataclass(frozen=True, slots=True)
class CallResult:
    """One catalogue-test call: the result as JSON (undefined as null), and JSON.stringify of the
    result and of the expected value as the engine wrote them (None where undefined); or an error."""

    value: Any = None
    got: str | None = None
    want: str | None = None
    error: str = ""


@dataclass(frozen=True, slots=True)
class EncodeResult:
    """What encodeDownlink produced: the FRMPayload and fPort, or errors."""

    payload: bytes | None
    fport: int | None = None
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def messages(value: Any) -> list[str]:
    """A codec's `errors` or `warnings` as strings (non-list and non-string values are kept, as JSON)."""
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    return [item if isinstance(item, str) else json.dumps(item) for item in items]


def js_kind(value: Any) -> str:
    """How JS would name the type of a JSON value, for error messages."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def uplink_result(name: str, reply: Mapping[str, Any]) -> DecodeResult:
    """The DecodeResult of an uplink call's reply (`name` names the codec in errors)."""
    entry = reply.get("entry")
    if entry is None:
        return DecodeResult(None, errors=[f"{name} defines none of {', '.join(UPLINK_ENTRY_POINTS)}"])
    result = reply.get("result")
    if not isinstance(result, dict):
        return DecodeResult(None, errors=[f"{entry} returned {js_kind(result)}, not an object"])
    errors = messages(result.get("errors"))
    warnings = messages(result.get("warnings"))
    data = result.get("data")
    if errors:
        return DecodeResult(data if isinstance(data, dict) else None, warnings, errors)
    if data is None:
        # ChirpStack's wording, so operators recognise it.
        missing = "decodeUplink did not return 'data'" if entry == "decodeUplink" else f"{entry} returned no data"
        return DecodeResult(None, warnings, [missing])
    if not isinstance(data, dict):
        return DecodeResult(None, warnings, [f"{entry} returned 'data' that is {js_kind(data)}, not an object"])
    return DecodeResult(data, warnings, [])


def downlink_result(name: str, reply: Mapping[str, Any], fport: int | None) -> EncodeResult:
    """The EncodeResult of a downlink call's reply; a valid `fPort` in it overrides `fport`."""
    entry = reply.get("entry")
    if entry is None:
        return EncodeResult(None, fport, errors=[f"{name} defines none of {', '.join(DOWNLINK_ENTRY_POINTS)}"])
    result = reply.get("result")
    if not isinstance(result, dict):
        return EncodeResult(None, fport, errors=[f"{entry} returned {js_kind(result)}, not an object"])
    errors = messages(result.get("errors"))
    warnings = messages(result.get("warnings"))
    out_port = result.get("fPort")
    if out_port is not None:
        if isinstance(out_port, bool) or not isinstance(out_port, int | float) or out_port != int(out_port) \
                or not 0 < out_port < 256:
            errors = [*errors, f"{entry} returned an invalid fPort {out_port!r}"]
        else:
            fport = int(out_port)
    if errors:
        return EncodeResult(None, fport, warnings, errors)
    raw = result.get("bytes")
    if not isinstance(raw, list) or not all(
        isinstance(b, int | float) and not isinstance(b, bool) and b == int(b) and 0 <= b <= 255 for b in raw
    ):
        return EncodeResult(None, fport, warnings, [f"{entry} did not return 'bytes' as integers 0-255"])
    return EncodeResult(bytes(int(b) for b in raw), fport, warnings, [])
