"""Checks single fields of a ChirpStack event and builds model events from them (for the JSON and protobuf readers).

Events come from anyone who can publish to ChirpStack's broker, so every field is type-checked and
length-bounded here, and no foreign value is ever passed to str() or repr() whole (a 1,000-deep
list would raise RecursionError there). A field that fails its check raises `MalformedEvent`, which `parse`
turns into a `Malformed` naming the field.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from edge.errors import MalformedEvent
from edge.model import DeviceEvent, DeviceInfo, RadioInfo, Uplink

_EUI = re.compile(r"[0-9A-Fa-f]{16}")
UUID = re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")

MAX_DEPTH = 32
MAX_VALUES = 10_000
MAX_NAME = 256  # device, application and profile names (display only): longer ones are cut
MAX_ID = 128  # ids (application, tenant, profile, event): longer ones make the event malformed
_MAX_TAGS = 100
MAX_GATEWAYS = 256  # receptions of one uplink in rxInfo (ChirpStack deduplicates: a handful)

# The best reception of an uplink: RSSI (dBm), SNR (dB), gateway id as sent, number of receptions.
Reception = tuple[float | None, float | None, str | None, int]
NO_RECEPTION: Reception = (None, None, None, 0)


def text_of(text: str, limit: int) -> str:
    """`text` on one line, cut to `limit` characters."""
    text = text.replace("\n", " ").replace("\r", " ")
    return text if len(text) <= limit else text[:limit] + f"...(+{len(text) - limit} chars)"


def check_shape(doc: Any, depth: int = 0) -> None:
    """Bound nesting depth and the number of values, iteratively, before anything else walks `doc`.

    Args:
        doc: a decoded JSON value.
        depth: how deep `doc` itself sits in the event (the protobuf reader checks `object` alone).
    """
    stack: list[tuple[Any, int]] = [(doc, depth)]
    values = 0
    while stack:
        value, level = stack.pop()
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if level >= MAX_DEPTH:
            raise MalformedEvent(f"nested deeper than {MAX_DEPTH} levels")
        values += len(value)
        if values > MAX_VALUES:
            raise MalformedEvent(f"more than {MAX_VALUES} values")
        stack.extend((child, level + 1) for child in children)


def scalar(value: Any, limit: int = 120) -> str:
    """A checked scalar for a human summary; containers and other types by their type name only."""
    if value is None:
        return "None"  # as the summaries always said for an absent field
    if isinstance(value, str):
        return text_of(value, limit)
    if isinstance(value, bool | int | float):
        return repr(value) if not isinstance(value, int) or abs(value) < 10**30 else "<large int>"
    return f"<{type(value).__name__}>"


def text(value: Any, field: str, limit: int = MAX_ID, *, cut: bool = False) -> str:
    """A string field ('' when absent); longer than `limit` it is cut (`cut`) or the event is malformed."""
    if type(value) is str and len(value) <= limit:  # the usual case, first
        return value
    if value is None:
        return ""
    out: str
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**64:
        out = str(value)  # v3 writes int64 ids as strings, some marshalers as numbers
    elif isinstance(value, str):
        out = value
    else:
        raise MalformedEvent(f"{field} is not a string")
    if len(out) > limit:
        if not cut:
            raise MalformedEvent(f"{field} is longer than {limit} characters")
        out = out[:limit]
    return out


def time(value: Any, fallback: float) -> float:
    """An RFC 3339 time as POSIX seconds; `fallback` (the receive time) when absent."""
    if not value:
        return fallback
    if not isinstance(value, str) or len(value) > 64:
        raise MalformedEvent("time is not an RFC 3339 time")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise MalformedEvent("time is not an RFC 3339 time") from None
    # ChirpStack always writes an offset; a time without one is read as UTC, never as the
    # gateway's local zone.
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def eui(value: Any, field: str) -> str:
    """A 16-digit hex EUI, lower-cased."""
    if not isinstance(value, str) or not _EUI.fullmatch(value):
        raise MalformedEvent(f"{field} is not a 16-digit hex EUI")
    return value.lower()


def b64(value: Any, field: str, max_bytes: int = 64) -> bytes:
    """A base64 field of at most `max_bytes` decoded bytes (b'' when absent)."""
    if value is None or value == "":
        return b""
    if not isinstance(value, str):
        raise MalformedEvent(f"{field} is not base64")
    if len(value) > 4 * -(-max_bytes // 3):  # checked before decoding: a 10 MB string is not decoded
        raise MalformedEvent(f"{field} is about {len(value) * 3 // 4} bytes, more than {max_bytes}")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):  # ValueError: non-ASCII characters
        raise MalformedEvent(f"{field} is not base64") from None
    if len(raw) > max_bytes:
        raise MalformedEvent(f"{field} is {len(raw)} bytes, more than {max_bytes}")
    return raw


def data(value: Any, max_bytes: int) -> bytes:
    """The uplink's FRMPayload from base64, at most `max_bytes` (chirpstack.max_payload_bytes)."""
    try:
        return b64(value, "data", max_bytes)
    except MalformedEvent as exc:
        raise MalformedEvent(f"{exc} (chirpstack.max_payload_bytes)" if "more than" in str(exc) else str(exc)) from None


def integer(value: Any, default: int | None = None, *, field: str = "value", maximum: int = 2**32 - 1) -> int | None:
    """An unsigned integer field within its protobuf range; anything else makes the event malformed."""
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or value != int(value):
        raise MalformedEvent(f"{field} is not an integer: {scalar(value, 40)}")
    if not 0 <= value <= maximum:
        raise MalformedEvent(f"{field} is out of range (0-{maximum}): {scalar(value, 40)}")
    return int(value)


def number(value: Any, field: str) -> float | None:
    """A float field (RSSI, SNR) that must be finite and plausible."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or abs(value) > 1e4:
        raise MalformedEvent(f"{field} is not a plausible number: {scalar(value, 40)}")
    return float(value)


def tags(value: Any) -> dict[str, str]:
    """Device tags: strings to strings, at most 100."""
    if not value:
        return {}
    if not isinstance(value, dict):
        raise MalformedEvent("tags is not an object")
    if len(value) > _MAX_TAGS:
        raise MalformedEvent(f"more than {_MAX_TAGS} tags")
    if all(type(k) is str and type(v) is str and len(k) <= MAX_ID and len(v) <= MAX_NAME
           for k, v in value.items()):
        return dict(value)  # the usual case
    # ChirpStack tags are strings to strings; values are cut like names, keys must fit.
    return {text(k, "tag key"): text(v, "tag value", MAX_NAME, cut=True) for k, v in value.items()}


def device_v4(*, dev_eui: Any, application_id: Any, application_name: Any, device_name: Any,
              device_profile_id: Any, device_profile_name: Any, tenant_id: Any, tag_map: Any) -> DeviceInfo:
    """A v4 event's deviceInfo, checked (errors name the fields as ChirpStack's JSON does)."""
    return DeviceInfo(
        dev_eui=eui(dev_eui, "deviceInfo.devEui"),
        application_id=text(application_id, "deviceInfo.applicationId"),
        application_name=text(application_name, "deviceInfo.applicationName", MAX_NAME, cut=True),
        device_name=text(device_name, "deviceInfo.deviceName", MAX_NAME, cut=True),
        device_profile_id=text(device_profile_id, "deviceInfo.deviceProfileId"),
        device_profile_name=text(device_profile_name, "deviceInfo.deviceProfileName", MAX_NAME, cut=True),
        tenant_id=text(tenant_id, "deviceInfo.tenantId"),
        tags=tags(tag_map),
    )


def uplink_id(value: Any) -> str:
    """A v4 uplink's deduplicationId, which must be a UUID."""
    if not isinstance(value, str) or not value:
        raise MalformedEvent("up event without deduplicationId")
    if not UUID.fullmatch(value):
        # It is spliced into SenML as urn:uuid:<id>; ChirpStack always writes a UUID.
        raise MalformedEvent("deduplicationId is not a UUID")
    return value


def gateway(value: str | None) -> str | None:
    """A gateway id as 16 lower-case hex digits; anything else is dropped (it may reach topics)."""
    return value.lower() if value is not None and _EUI.fullmatch(value) else None


def uplink(uid: str, device: DeviceInfo, when: float, *, fport: int, payload: bytes, fcnt: int | None,
           frequency: int | None, spreading_factor: int | None, dr: int | None, best: Reception,
           obj: dict[str, Any] | None, confirmed: bool) -> Uplink:
    """The Uplink of checked values; every reader of every encoding ends here."""
    rssi, snr, gateway_id, gateways = best
    return Uplink(
        uplink_id=uid,
        device=device,
        time=when,
        fport=fport,
        payload=payload,
        radio=RadioInfo(fcnt=fcnt, fport=fport, frequency=frequency, spreading_factor=spreading_factor, dr=dr,
                        rssi=rssi, snr=snr, gateway_id=gateway(gateway_id), gateways=gateways),
        object=obj,
        confirmed=confirmed,
    )


def device_event(kind: str, device: DeviceInfo, when: float, fields: Mapping[str, Any],
                 ids: tuple[Any, ...] = ()) -> DeviceEvent:
    """A non-uplink event of checked device and time.

    Args:
        kind: the topic's event type.
        device: the event's device.
        when: the event's time.
        fields: the event's fields by their JSON names (only those `summary` reads are needed).
        ids: candidates for the event id, first non-empty string wins (a log event names the
            uplink it is about in context.deduplication_id, e.g. UPLINK_CODEC).
    """
    event_id = ""
    for candidate in ids:
        if candidate and isinstance(candidate, str):
            event_id = text(candidate, "event id")
            break
    return DeviceEvent(kind, device.dev_eui, device.application_id, when, summary(kind, fields), event_id)


def summary(kind: str, doc: Mapping[str, Any]) -> str:
    """A short human line for a non-uplink event, for `edge status` and logs (checked scalars only)."""
    get = doc.get
    if kind == "log":
        line = (f"{scalar(get('level', 'INFO'), 16)} {scalar(get('code', ''), 40)}:"
                f" {scalar(get('description', ''), 200)}")
        return line.strip()
    if kind == "status":
        return f"margin={scalar(get('margin'), 16)} battery={scalar(get('batteryLevel'), 16)}"
    if kind in ("ack", "txack"):
        return f"queueItemId={scalar(get('queueItemId'), 40)} acknowledged={scalar(get('acknowledged'), 8)}"
    if kind == "join":
        return f"devAddr={scalar(get('devAddr'), 16)}"
    if kind == "location":
        loc = get("location") or {}
        if not isinstance(loc, dict):
            return "location"
        return f"lat={scalar(loc.get('latitude'), 24)} lon={scalar(loc.get('longitude'), 24)}"
    return kind
