"""Parses ChirpStack MQTT integration events (v4 JSON or protobuf, v3 JSON) into model events.

Pure functions, no I/O. Accepts v4 JSON with and without default-valued fields (pbjson before and
after v4.1), binary protobuf (`json=false`), and v3's `json_v3` (hex EUIs, `object`) and `json`
(base64 EUIs, `objectJSON`) marshalers. Anything that cannot be understood becomes `Malformed`,
never an exception.
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
# Namespace for v3 uplink ids, which ChirpStack v3 does not provide (see _v3_uplink_id).
_V3_NAMESPACE = uuid.UUID("8f2b7a4e-3c1d-5b6a-9e0f-1a2b3c4d5e6f")


class _Bad(Exception):
    """Internal: the message is malformed; the text says why."""


def event_kind(topic: str) -> str:
    """The `{event}` segment of `application/{app}/device/{dev_eui}/event/{event}`, or ''."""
    _, sep, kind = topic.rpartition("/event/")
    return kind if sep and "/" not in kind else ""


def parse(topic: str, payload: bytes, received: float) -> Event:
    """Turn one MQTT message into an Uplink, DeviceEvent or Malformed.

    Args:
        topic: the MQTT topic the message arrived on.
        payload: the message body, JSON or protobuf.
        received: local receive time, used only when the event has no time of its own.
    """
    kind = event_kind(topic)
    try:
        if not kind:
            raise _Bad("topic is not a ChirpStack event topic")
        if kind not in EVENT_KINDS:
            raise _Bad(f"unknown event type {kind!r}")
        stripped = payload.lstrip()
        if stripped[:1] == b"{":
            try:
                doc = orjson.loads(payload)
            except orjson.JSONDecodeError as exc:
                raise _Bad(f"invalid JSON: {exc}") from None
            if not isinstance(doc, dict):
                raise _Bad("JSON payload is not an object")
            if "deviceInfo" in doc:
                return _from_v4(kind, doc, received)
            if "devEUI" in doc:
                return _from_v3(kind, doc, received)
            raise _Bad("JSON has neither deviceInfo (v4) nor devEUI (v3)")
        return _from_protobuf(kind, payload, received)
    except _Bad as exc:
        return Malformed(topic, payload, str(exc))
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError) as exc:
        return Malformed(topic, payload, f"{type(exc).__name__}: {exc}")


def _time(value: Any, fallback: float) -> float:
    if not value:
        return fallback
    if not isinstance(value, str):
        raise _Bad("time is not a string")
    parsed = datetime.fromisoformat(value)
    # ChirpStack always writes an offset; a time without one is read as UTC, never as the
    # gateway's local zone.
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def _eui(value: Any, field: str) -> str:
    if not isinstance(value, str) or not _EUI.fullmatch(value):
        raise _Bad(f"{field} is not a 16-digit hex EUI")
    return value.lower()


def _b64(value: Any, field: str) -> bytes:
    if value is None or value == "":
        return b""
    if not isinstance(value, str):
        raise _Bad(f"{field} is not base64")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error:
        raise _Bad(f"{field} is not base64") from None


def _int(value: Any, default: int | None = None, *, field: str = "value", maximum: int = 2**32 - 1) -> int | None:
    """An unsigned integer field within its protobuf range; anything else makes the event malformed."""
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise _Bad(f"{field} is not an integer: {value!r}")
    if not 0 <= value <= maximum:
        raise _Bad(f"{field} is out of range: {value!r}")
    return int(value)


def _number(value: Any, field: str) -> float | None:
    """A float field (RSSI, SNR) that must be finite and plausible."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or abs(value) > 1e4:
        raise _Bad(f"{field} is not a plausible number: {value!r}")
    return float(value)


def _tags(value: Any) -> dict[str, str]:
    if not value:
        return {}
    if not isinstance(value, dict):
        raise _Bad("tags is not an object")
    return {str(k): str(v) for k, v in value.items()}


def _device_v4(info: Any) -> DeviceInfo:
    if not isinstance(info, dict):
        raise _Bad("deviceInfo is not an object")
    return DeviceInfo(
        dev_eui=_eui(info.get("devEui"), "deviceInfo.devEui"),
        application_id=str(info.get("applicationId", "")),
        application_name=str(info.get("applicationName", "")),
        device_name=str(info.get("deviceName", "")),
        device_profile_id=str(info.get("deviceProfileId", "")),
        device_profile_name=str(info.get("deviceProfileName", "")),
        tenant_id=str(info.get("tenantId", "")),
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
    best: dict[str, Any] | None = None
    for rx in rx_info:
        if isinstance(rx, dict) and (best is None or rx.get("rssi", -1000) > best.get("rssi", -1000)):
            best = rx
    if best is None:
        return None, None, None, 0
    gateway = best.get(gw_key)
    return _number(best.get("rssi"), "rssi"), _number(best.get(snr_key), "snr"), \
        gateway if isinstance(gateway, str) else None, len(rx_info)


def _from_v4(kind: str, doc: dict[str, Any], received: float) -> Event:
    device = _device_v4(doc["deviceInfo"])
    when = _time(doc.get("time"), received)
    if kind == "up":
        dedup = doc.get("deduplicationId")
        if not isinstance(dedup, str) or not dedup:
            raise _Bad("up event without deduplicationId")
        rssi, snr, gateway, gateways = _best_rx(doc.get("rxInfo"))
        tx = doc.get("txInfo") or {}
        lora = ((tx.get("modulation") or {}).get("lora") or {}) if isinstance(tx, dict) else {}
        obj = doc.get("object")
        if obj is not None and not isinstance(obj, dict):
            raise _Bad("object is not a JSON object")
        fport = _int(doc.get("fPort"), 0, field="fPort", maximum=255) or 0
        return Uplink(
            uplink_id=dedup,
            device=device,
            time=when,
            fport=fport,
            payload=_b64(doc.get("data"), "data"),
            radio=RadioInfo(
                fcnt=_int(doc.get("fCnt"), 0, field="fCnt"),
                fport=fport,
                frequency=_int(tx.get("frequency"), field="frequency") if isinstance(tx, dict) else None,
                spreading_factor=_int(lora.get("spreadingFactor"), field="spreadingFactor", maximum=12),
                dr=_int(doc.get("dr"), field="dr", maximum=15),
                rssi=rssi,
                snr=snr,
                gateway_id=gateway.lower() if isinstance(gateway, str) else None,
                gateways=gateways,
            ),
            object=obj,
            confirmed=bool(doc.get("confirmed", False)),
        )
    context = doc.get("context")
    if not isinstance(context, dict):
        context = {}
    # A log event names the uplink it is about in context.deduplication_id (e.g. UPLINK_CODEC).
    event_id = doc.get("deduplicationId") or doc.get("queueItemId") or context.get("deduplication_id") or ""
    return DeviceEvent(kind, device.dev_eui, device.application_id, when, _summary(kind, doc), str(event_id))


def _summary(kind: str, doc: dict[str, Any]) -> str:
    """A short human line for a non-uplink event, for `edge status` and logs."""
    if kind == "log":
        return f"{doc.get('level', 'INFO')} {doc.get('code', '')}: {doc.get('description', '')}".strip()
    if kind == "status":
        return f"margin={doc.get('margin')} battery={doc.get('batteryLevel')}"
    if kind in ("ack", "txack"):
        return f"queueItemId={doc.get('queueItemId')} acknowledged={doc.get('acknowledged')}"
    if kind == "join":
        return f"devAddr={doc.get('devAddr')}"
    if kind == "location":
        loc = doc.get("location") or {}
        return f"lat={loc.get('latitude')} lon={loc.get('longitude')}"
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


def _from_v3(kind: str, doc: dict[str, Any], received: float) -> Event:
    dev_eui = _v3_eui(doc["devEUI"], "devEUI")
    app_id = str(doc.get("applicationID", ""))
    rx_info = doc.get("rxInfo") or []
    first_time = ""
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
        application_name=str(doc.get("applicationName", "")),
        device_name=str(doc.get("deviceName", "")),
        device_profile_id=str(doc.get("deviceProfileID", "")),
        device_profile_name=str(doc.get("deviceProfileName", "")),
        tags=_tags(doc.get("tags")),
    )
    if kind != "up":
        return DeviceEvent(kind, dev_eui, app_id, when, _summary(kind, doc))
    snr_key = "loRaSNR"
    rssi, snr, gateway, gateways = _best_rx(rx_info, snr_key, "gatewayID")
    if isinstance(gateway, str) and len(gateway) != 16:
        gateway = _b64(gateway, "gatewayID").hex()
    obj = doc.get("object")
    if obj is None and doc.get("objectJSON"):
        obj = orjson.loads(doc["objectJSON"])
    if obj is not None and not isinstance(obj, dict):
        raise _Bad("object is not a JSON object")
    tx = doc.get("txInfo") or {}
    lora = tx.get("loRaModulationInfo") or {}
    fcnt = _int(doc.get("fCnt"), 0, field="fCnt")
    fport = _int(doc.get("fPort"), 0, field="fPort", maximum=255) or 0
    return Uplink(
        uplink_id=_v3_uplink_id(dev_eui, fcnt, stamp, str(doc.get("data") or "")),
        device=device,
        time=when,
        fport=fport,
        payload=_b64(doc.get("data"), "data"),
        radio=RadioInfo(fcnt=fcnt, fport=fport, frequency=_int(tx.get("frequency"), field="frequency"),
                        spreading_factor=_int(lora.get("spreadingFactor"), field="spreadingFactor", maximum=12),
                        dr=_int(doc.get("dr"), field="dr", maximum=15),
                        rssi=rssi, snr=snr, gateway_id=gateway.lower() if isinstance(gateway, str) else None,
                        gateways=gateways),
        object=obj,
        confirmed=bool(doc.get("confirmedUplink", False)),
    )


def _from_protobuf(kind: str, payload: bytes, received: float) -> Event:
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
    except DecodeError as exc:
        raise _Bad(f"neither JSON nor a valid {cls.__name__} protobuf: {exc}") from None
    if not message.HasField("device_info") or not message.device_info.dev_eui:
        raise _Bad(f"{cls.__name__} protobuf without device_info.dev_eui")
    doc = json_format.MessageToDict(message)
    if kind == "up" and not message.HasField("object"):
        doc.pop("object", None)
    return _from_v4(kind, doc, received)
