"""Parses ChirpStack MQTT integration events (v4 JSON or protobuf, v3 JSON) into model events.

Pure functions, no I/O. Accepts v4 JSON with and without default-valued fields (pbjson before and
after v4.1), binary protobuf (`json=false`), and v3's `json_v3` (hex EUIs, `object`) and `json`
(base64 EUIs, `objectJSON`) marshalers. Anything that cannot be understood becomes `Malformed`,
never an exception.

Events come from anyone who can publish to ChirpStack's broker, so nothing here trusts them:
the message size, nesting depth and number of values are bounded before anything walks the
document, every field is type-checked and length-bounded, and no foreign value is ever passed to
str() or repr() whole (a 1,000-deep list would raise RecursionError there).
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson

from edge.model import DeviceEvent, DeviceInfo, Event, Malformed, RadioInfo, Uplink

EVENT_KINDS = frozenset({"up", "join", "status", "log", "ack", "txack", "location", "error", "integration"})
_EUI = re.compile(r"[0-9A-Fa-f]{16}")
_UUID = re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")

# LoRaWAN's largest FRMPayload is 242 bytes (RP002 at DR with the highest M); a margin for
# regional oddities. `chirpstack.max_payload_bytes` overrides it.
MAX_PAYLOAD_BYTES = 256
# A ChirpStack event is 1-2 KB; one with a large `object` a few tens. Beyond these bounds an
# event is malformed before anything walks it.
MAX_MESSAGE_BYTES = 256 * 1024
MAX_DEPTH = 32
MAX_VALUES = 10_000
# What a malformed message keeps of its payload for inspection (the rest is counted in the reason).
MAX_KEPT_BYTES = 64 * 1024
MAX_REASON = 512
_MAX_NAME = 256  # device, application and profile names (display only): longer ones are cut
_MAX_ID = 128  # ids (application, tenant, profile, event): longer ones make the event malformed
_MAX_TAGS = 100
_MAX_GATEWAYS = 256  # receptions of one uplink in rxInfo (ChirpStack deduplicates: a handful)
# Namespace for v3 uplink ids, which ChirpStack v3 does not provide (see _v3_uplink_id).
_V3_NAMESPACE = uuid.UUID("8f2b7a4e-3c1d-5b6a-9e0f-1a2b3c4d5e6f")


class _Bad(Exception):
    """Internal: the message is malformed; the text says why."""


def event_kind(topic: str) -> str:
    """The `{event}` segment of `application/{app}/device/{dev_eui}/event/{event}`, or ''."""
    _, sep, kind = topic.rpartition("/event/")
    return kind if sep and "/" not in kind else ""


def parse(topic: str, payload: bytes, received: float, max_payload_bytes: int = MAX_PAYLOAD_BYTES) -> Event:
    """Turn one MQTT message into an Uplink, DeviceEvent or Malformed; never raises.

    Args:
        topic: the MQTT topic the message arrived on.
        payload: the message body, JSON or protobuf.
        received: local receive time, used only when the event has no time of its own.
        max_payload_bytes: an uplink whose `data` is larger is malformed.
    """
    try:
        return _parse(topic, payload, received, max_payload_bytes)
    except _Bad as exc:
        return _malformed(topic, payload, str(exc))
    except RecursionError:
        return _malformed(topic, payload, "nested too deeply")
    except Exception as exc:  # noqa: BLE001 - one message can only ever affect itself
        return _malformed(topic, payload, _describe(exc))


def _parse(topic: str, payload: bytes, received: float, max_payload_bytes: int) -> Event:
    kind = event_kind(topic)
    if not kind:
        raise _Bad("topic is not a ChirpStack event topic")
    if kind not in EVENT_KINDS:
        raise _Bad(f"unknown event type {_text_of(kind, 32)!r}")
    if len(payload) > MAX_MESSAGE_BYTES:
        raise _Bad(f"message is {len(payload)} bytes, more than {MAX_MESSAGE_BYTES} (a ChirpStack event is 1-2 KB)")
    stripped = payload.lstrip()
    if stripped[:1] == b"[":
        raise _Bad("JSON payload is not an object")
    if stripped[:1] == b"{":
        try:
            doc = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise _Bad(f"invalid JSON: {_text_of(str(exc), 200)}") from None
        if not isinstance(doc, dict):
            raise _Bad("JSON payload is not an object")
        # Each level of nesting needs a bracket and each value at least two bytes, so counting
        # brackets in the bytes (C speed) and the length clear a usual event without a walk.
        if len(payload) > 2 * MAX_VALUES or payload.count(b"{") + payload.count(b"[") > MAX_DEPTH:
            _check_shape(doc)
        if "deviceInfo" in doc:
            return _from_v4(kind, doc, received, max_payload_bytes)
        if "devEUI" in doc:
            return _from_v3(kind, doc, received, max_payload_bytes)
        raise _Bad("JSON has neither deviceInfo (v4) nor devEUI (v3)")
    return _from_protobuf(kind, payload, received, max_payload_bytes)


def _malformed(topic: str, payload: bytes, reason: str) -> Malformed:
    """A Malformed keeping at most MAX_KEPT_BYTES of the payload and a bounded reason."""
    reason = _text_of(reason, MAX_REASON)
    if len(payload) > MAX_KEPT_BYTES:
        reason += f" (payload of {len(payload)} bytes kept truncated to {MAX_KEPT_BYTES})"
        payload = payload[:MAX_KEPT_BYTES]
    return Malformed(topic, payload, reason)


def _describe(exc: BaseException) -> str:
    """An exception as a bounded line (its text may quote foreign data)."""
    try:
        return _text_of(f"{type(exc).__name__}: {exc}", MAX_REASON)
    except Exception:  # noqa: BLE001 - str() of a hostile argument may itself fail
        return type(exc).__name__


def _text_of(text: str, limit: int) -> str:
    """`text` on one line, cut to `limit` characters."""
    text = text.replace("\n", " ").replace("\r", " ")
    return text if len(text) <= limit else text[:limit] + f"...(+{len(text) - limit} chars)"


def _check_shape(doc: Any) -> None:
    """Bound nesting depth and the number of values, iteratively, before anything else walks `doc`."""
    stack: list[tuple[Any, int]] = [(doc, 0)]
    values = 0
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth >= MAX_DEPTH:
            raise _Bad(f"nested deeper than {MAX_DEPTH} levels")
        values += len(value)
        if values > MAX_VALUES:
            raise _Bad(f"more than {MAX_VALUES} values")
        stack.extend((child, depth + 1) for child in children)


def _scalar(value: Any, limit: int = 120) -> str:
    """A checked scalar for a human summary; containers and other types by their type name only."""
    if value is None:
        return "None"  # as the summaries always said for an absent field
    if isinstance(value, str):
        return _text_of(value, limit)
    if isinstance(value, bool | int | float):
        return repr(value) if not isinstance(value, int) or abs(value) < 10**30 else "<large int>"
    return f"<{type(value).__name__}>"


def _text(value: Any, field: str, limit: int = _MAX_ID, *, cut: bool = False) -> str:
    """A string field ('' when absent); longer than `limit` it is cut (`cut`) or the event is malformed."""
    if type(value) is str and len(value) <= limit:  # the usual case, first
        return value
    if value is None:
        return ""
    text: str
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**64:
        text = str(value)  # v3 writes int64 ids as strings, some marshalers as numbers
    elif isinstance(value, str):
        text = value
    else:
        raise _Bad(f"{field} is not a string")
    if len(text) > limit:
        if not cut:
            raise _Bad(f"{field} is longer than {limit} characters")
        text = text[:limit]
    return text


def _time(value: Any, fallback: float) -> float:
    if not value:
        return fallback
    if not isinstance(value, str) or len(value) > 64:
        raise _Bad("time is not an RFC 3339 time")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise _Bad("time is not an RFC 3339 time") from None
    # ChirpStack always writes an offset; a time without one is read as UTC, never as the
    # gateway's local zone.
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def _eui(value: Any, field: str) -> str:
    if not isinstance(value, str) or not _EUI.fullmatch(value):
        raise _Bad(f"{field} is not a 16-digit hex EUI")
    return value.lower()


def _b64(value: Any, field: str, max_bytes: int = 64) -> bytes:
    if value is None or value == "":
        return b""
    if not isinstance(value, str):
        raise _Bad(f"{field} is not base64")
    if len(value) > 4 * -(-max_bytes // 3):  # checked before decoding: a 10 MB string is not decoded
        raise _Bad(f"{field} is about {len(value) * 3 // 4} bytes, more than {max_bytes}")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):  # ValueError: non-ASCII characters
        raise _Bad(f"{field} is not base64") from None
    if len(raw) > max_bytes:
        raise _Bad(f"{field} is {len(raw)} bytes, more than {max_bytes}")
    return raw


def _data(value: Any, max_bytes: int) -> bytes:
    """The uplink's FRMPayload, at most `max_bytes` (chirpstack.max_payload_bytes)."""
    try:
        return _b64(value, "data", max_bytes)
    except _Bad as exc:
        raise _Bad(f"{exc} (chirpstack.max_payload_bytes)" if "more than" in str(exc) else str(exc)) from None


def _int(value: Any, default: int | None = None, *, field: str = "value", maximum: int = 2**32 - 1) -> int | None:
    """An unsigned integer field within its protobuf range; anything else makes the event malformed."""
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or value != int(value):
        raise _Bad(f"{field} is not an integer: {_scalar(value, 40)}")
    if not 0 <= value <= maximum:
        raise _Bad(f"{field} is out of range (0-{maximum}): {_scalar(value, 40)}")
    return int(value)


def _number(value: Any, field: str) -> float | None:
    """A float field (RSSI, SNR) that must be finite and plausible."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or abs(value) > 1e4:
        raise _Bad(f"{field} is not a plausible number: {_scalar(value, 40)}")
    return float(value)


def _tags(value: Any) -> dict[str, str]:
    if not value:
        return {}
    if not isinstance(value, dict):
        raise _Bad("tags is not an object")
    if len(value) > _MAX_TAGS:
        raise _Bad(f"more than {_MAX_TAGS} tags")
    if all(type(k) is str and type(v) is str and len(k) <= _MAX_ID and len(v) <= _MAX_NAME
           for k, v in value.items()):
        return dict(value)  # the usual case
    # ChirpStack tags are strings to strings; values are cut like names, keys must fit.
    return {_text(k, "tag key"): _text(v, "tag value", _MAX_NAME, cut=True) for k, v in value.items()}


def _device_v4(info: Any) -> DeviceInfo:
    if not isinstance(info, dict):
        raise _Bad("deviceInfo is not an object")
    return DeviceInfo(
        dev_eui=_eui(info.get("devEui"), "deviceInfo.devEui"),
        application_id=_text(info.get("applicationId"), "deviceInfo.applicationId"),
        application_name=_text(info.get("applicationName"), "deviceInfo.applicationName", _MAX_NAME, cut=True),
        device_name=_text(info.get("deviceName"), "deviceInfo.deviceName", _MAX_NAME, cut=True),
        device_profile_id=_text(info.get("deviceProfileId"), "deviceInfo.deviceProfileId"),
        device_profile_name=_text(info.get("deviceProfileName"), "deviceInfo.deviceProfileName", _MAX_NAME,
                                  cut=True),
        tenant_id=_text(info.get("tenantId"), "deviceInfo.tenantId"),
        tags=_tags(info.get("tags")),
    )


def _best_rx(
    rx_info: Any, snr_key: str = "snr", gw_key: str = "gatewayId"
) -> tuple[float | None, float | None, str | None, int]:
    """RSSI, SNR and gateway id of the strongest reception, and how many gateways heard it."""
    if not rx_info:
        return None, None, None, 0
    if not isinstance(rx_info, list):
        raise _Bad("rxInfo is not a list")
    if len(rx_info) > _MAX_GATEWAYS:
        raise _Bad(f"rxInfo lists more than {_MAX_GATEWAYS} receptions")
    best: dict[str, Any] | None = None
    best_rssi = -1e9
    for rx in rx_info if len(rx_info) > 1 else ():  # one gateway, the usual case: it is the best
        if not isinstance(rx, dict):
            continue
        rssi = _number(rx.get("rssi"), "rssi")
        rank = -1000.0 if rssi is None else rssi
        if best is None or rank > best_rssi:
            best, best_rssi = rx, rank
    if len(rx_info) == 1 and isinstance(rx_info[0], dict):
        best = rx_info[0]
    if best is None:
        return None, None, None, 0
    gateway = best.get(gw_key)
    return _number(best.get("rssi"), "rssi"), _number(best.get(snr_key), "snr"), \
        gateway if isinstance(gateway, str) else None, len(rx_info)


def _gateway(value: str | None) -> str | None:
    """A gateway id as 16 lower-case hex digits; anything else is dropped (it may reach topics)."""
    return value.lower() if value is not None and _EUI.fullmatch(value) else None


def _from_v4(kind: str, doc: dict[str, Any], received: float, max_payload_bytes: int) -> Event:
    device = _device_v4(doc["deviceInfo"])
    when = _time(doc.get("time"), received)
    if kind == "up":
        dedup = doc.get("deduplicationId")
        if not isinstance(dedup, str) or not dedup:
            raise _Bad("up event without deduplicationId")
        if not _UUID.fullmatch(dedup):
            # It is spliced into SenML as urn:uuid:<id>; ChirpStack always writes a UUID.
            raise _Bad("deduplicationId is not a UUID")
        rssi, snr, gateway, gateways = _best_rx(doc.get("rxInfo"))
        tx = doc.get("txInfo") or {}
        if not isinstance(tx, dict):
            raise _Bad("txInfo is not an object")
        modulation = tx.get("modulation") or {}
        lora = (modulation.get("lora") or {}) if isinstance(modulation, dict) else None
        if not isinstance(lora, dict):
            raise _Bad("txInfo.modulation.lora is not an object")
        obj = doc.get("object")
        if obj is not None and not isinstance(obj, dict):
            raise _Bad("object is not a JSON object")
        fport = _int(doc.get("fPort"), 0, field="fPort", maximum=255) or 0
        return Uplink(
            uplink_id=dedup,
            device=device,
            time=when,
            fport=fport,
            payload=_data(doc.get("data"), max_payload_bytes),
            radio=RadioInfo(
                fcnt=_int(doc.get("fCnt"), 0, field="fCnt"),
                fport=fport,
                frequency=_int(tx.get("frequency"), field="frequency"),
                spreading_factor=_int(lora.get("spreadingFactor"), field="spreadingFactor", maximum=12),
                dr=_int(doc.get("dr"), field="dr", maximum=15),
                rssi=rssi,
                snr=snr,
                gateway_id=_gateway(gateway),
                gateways=gateways,
            ),
            object=obj,
            confirmed=doc.get("confirmed") is True,
        )
    context = doc.get("context")
    if not isinstance(context, dict):
        context = {}
    # A log event names the uplink it is about in context.deduplication_id (e.g. UPLINK_CODEC).
    event_id = ""
    for candidate in (doc.get("deduplicationId"), doc.get("queueItemId"), context.get("deduplication_id")):
        if candidate and isinstance(candidate, str):
            event_id = _text(candidate, "event id")
            break
    return DeviceEvent(kind, device.dev_eui, device.application_id, when, _summary(kind, doc), event_id)


def _summary(kind: str, doc: dict[str, Any]) -> str:
    """A short human line for a non-uplink event, for `edge status` and logs (checked scalars only)."""
    get = doc.get
    if kind == "log":
        line = (f"{_scalar(get('level', 'INFO'), 16)} {_scalar(get('code', ''), 40)}:"
                f" {_scalar(get('description', ''), 200)}")
        return line.strip()
    if kind == "status":
        return f"margin={_scalar(get('margin'), 16)} battery={_scalar(get('batteryLevel'), 16)}"
    if kind in ("ack", "txack"):
        return f"queueItemId={_scalar(get('queueItemId'), 40)} acknowledged={_scalar(get('acknowledged'), 8)}"
    if kind == "join":
        return f"devAddr={_scalar(get('devAddr'), 16)}"
    if kind == "location":
        loc = get("location") or {}
        if not isinstance(loc, dict):
            return "location"
        return f"lat={_scalar(loc.get('latitude'), 24)} lon={_scalar(loc.get('longitude'), 24)}"
    return kind


def _v3_eui(value: Any, field: str) -> str:
    """v3 `json_v3` writes EUIs in hex, the `json` marshaler in base64."""
    if isinstance(value, str) and len(value) == 16:
        return _eui(value, field)
    raw = _b64(value, field)
    if len(raw) != 8:
        raise _Bad(f"{field} is not an EUI-64")
    return raw.hex()


def _v3_uplink_id(dev_eui: str, fcnt: int | None, when: str, data: str) -> str:
    # v3 events carry no deduplication id; a redelivery repeats dev_eui, fCnt, receive time and
    # payload, so a name-based UUID of the four is stable. The payload keeps two uplinks apart
    # when gateways without GPS give no time and the frame counter was reset.
    return str(uuid.uuid5(_V3_NAMESPACE, f"{dev_eui}/{fcnt}/{when}/{data}"))


def _from_v3(kind: str, doc: dict[str, Any], received: float, max_payload_bytes: int) -> Event:
    dev_eui = _v3_eui(doc["devEUI"], "devEUI")
    app_id = _text(doc.get("applicationID"), "applicationID")
    rx_info = doc.get("rxInfo") or []
    first_time: Any = ""
    if isinstance(rx_info, list):
        for rx in rx_info:
            if isinstance(rx, dict) and rx.get("time"):
                first_time = rx["time"]
                break
    stamp = first_time or doc.get("publishedAt") or ""
    when = _time(stamp, received)
    device = DeviceInfo(
        dev_eui=dev_eui,
        application_id=app_id,
        application_name=_text(doc.get("applicationName"), "applicationName", _MAX_NAME, cut=True),
        device_name=_text(doc.get("deviceName"), "deviceName", _MAX_NAME, cut=True),
        device_profile_id=_text(doc.get("deviceProfileID"), "deviceProfileID"),
        device_profile_name=_text(doc.get("deviceProfileName"), "deviceProfileName", _MAX_NAME, cut=True),
        tags=_tags(doc.get("tags")),
    )
    if kind != "up":
        return DeviceEvent(kind, dev_eui, app_id, when, _summary(kind, doc))
    snr_key = "loRaSNR"
    rssi, snr, gateway, gateways = _best_rx(rx_info, snr_key, "gatewayID")
    if isinstance(gateway, str) and len(gateway) != 16:
        gateway = _b64(gateway, "gatewayID").hex()
    obj = doc.get("object")
    object_json = doc.get("objectJSON")
    if obj is None and object_json:
        if not isinstance(object_json, str):
            raise _Bad("objectJSON is not a string")
        try:
            obj = orjson.loads(object_json)
        except orjson.JSONDecodeError:
            raise _Bad("objectJSON is not valid JSON") from None
        _check_shape(obj)
    if obj is not None and not isinstance(obj, dict):
        raise _Bad("object is not a JSON object")
    tx = doc.get("txInfo") or {}
    if not isinstance(tx, dict):
        raise _Bad("txInfo is not an object")
    lora = tx.get("loRaModulationInfo") or {}
    if not isinstance(lora, dict):
        raise _Bad("txInfo.loRaModulationInfo is not an object")
    fcnt = _int(doc.get("fCnt"), 0, field="fCnt")
    fport = _int(doc.get("fPort"), 0, field="fPort", maximum=255) or 0
    data = doc.get("data")
    payload = _data(data, max_payload_bytes)
    if not isinstance(stamp, str):
        raise _Bad("time is not an RFC 3339 time")
    return Uplink(
        uplink_id=_v3_uplink_id(dev_eui, fcnt, stamp, data if isinstance(data, str) else ""),
        device=device,
        time=when,
        fport=fport,
        payload=payload,
        radio=RadioInfo(fcnt=fcnt, fport=fport, frequency=_int(tx.get("frequency"), field="frequency"),
                        spreading_factor=_int(lora.get("spreadingFactor"), field="spreadingFactor", maximum=12),
                        dr=_int(doc.get("dr"), field="dr", maximum=15),
                        rssi=rssi, snr=snr, gateway_id=_gateway(gateway), gateways=gateways),
        object=obj,
        confirmed=doc.get("confirmedUplink") is True,
    )


def _from_protobuf(kind: str, payload: bytes, received: float, max_payload_bytes: int) -> Event:
    # Imported here: the protobuf marshaler is optional in ChirpStack and JSON is the default.
    from chirpstack_api import integration
    from google.protobuf import json_format
    from google.protobuf.message import DecodeError

    classes = {
        "up": integration.UplinkEvent,
        "join": integration.JoinEvent,
        "status": integration.StatusEvent,
        "log": integration.LogEvent,
        "ack": integration.AckEvent,
        "txack": integration.TxAckEvent,
        "location": integration.LocationEvent,
    }
    cls = classes.get(kind)
    if cls is None:
        raise _Bad(f"unknown event type {kind!r} for a protobuf payload")
    try:
        message = cls.FromString(payload)
    except (DecodeError, RecursionError, ValueError) as exc:
        raise _Bad(f"neither JSON nor a valid {cls.__name__} protobuf: {_text_of(str(exc), 200)}") from None
    if not message.HasField("device_info") or not message.device_info.dev_eui:
        raise _Bad(f"{cls.__name__} protobuf without device_info.dev_eui")
    doc = json_format.MessageToDict(message)
    if kind == "up" and not message.HasField("object"):
        doc.pop("object", None)
    _check_shape(doc)
    return _from_v4(kind, doc, received, max_payload_bytes)
