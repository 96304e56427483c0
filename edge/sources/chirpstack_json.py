"""Reads ChirpStack's JSON events into model events: v4 (with or without default-valued fields) and v3.

v4 JSON comes with and without default-valued fields (pbjson before and after v4.1); v3 comes from
its `json_v3` (hex EUIs, `object`) and `json` (base64 EUIs, `objectJSON`) marshalers.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson

from edge.errors import MalformedEvent
from edge.model import DeviceInfo, Event
from edge.sources import chirpstack_fields as fields

# Namespace for v3 uplink ids, which ChirpStack v3 does not provide (see _v3_uplink_id).
_V3_NAMESPACE = uuid.UUID("8f2b7a4e-3c1d-5b6a-9e0f-1a2b3c4d5e6f")


def read(kind: str, doc: dict[str, Any], received: float, max_payload_bytes: int) -> Event:
    """The event of a JSON object already bounded in shape (see `parse`)."""
    if "deviceInfo" in doc:
        return _from_v4(kind, doc, received, max_payload_bytes)
    if "devEUI" in doc:
        return _from_v3(kind, doc, received, max_payload_bytes)
    raise MalformedEvent("JSON has neither deviceInfo (v4) nor devEUI (v3)")


def _device_v4(info: Any) -> DeviceInfo:
    if not isinstance(info, dict):
        raise MalformedEvent("deviceInfo is not an object")
    get = info.get
    return fields.device_v4(
        dev_eui=get("devEui"), application_id=get("applicationId"), application_name=get("applicationName"),
        device_name=get("deviceName"), device_profile_id=get("deviceProfileId"),
        device_profile_name=get("deviceProfileName"), tenant_id=get("tenantId"), tag_map=get("tags"))


def _best_rx(rx_info: Any, snr_key: str = "snr", gw_key: str = "gatewayId") -> fields.Reception:
    """RSSI, SNR and gateway id of the strongest reception, and how many gateways heard it."""
    if not rx_info:
        return fields.NO_RECEPTION
    if not isinstance(rx_info, list):
        raise MalformedEvent("rxInfo is not a list")
    if len(rx_info) > fields.MAX_GATEWAYS:
        raise MalformedEvent(f"rxInfo lists more than {fields.MAX_GATEWAYS} receptions")
    best: dict[str, Any] | None = None
    best_rssi = -1e9
    for rx in rx_info if len(rx_info) > 1 else ():  # one gateway, the usual case: it is the best
        if not isinstance(rx, dict):
            continue
        rssi = fields.number(rx.get("rssi"), "rssi")
        rank = -1000.0 if rssi is None else rssi
        if best is None or rank > best_rssi:
            best, best_rssi = rx, rank
    if len(rx_info) == 1 and isinstance(rx_info[0], dict):
        best = rx_info[0]
    if best is None:
        return fields.NO_RECEPTION
    gateway = best.get(gw_key)
    return fields.number(best.get("rssi"), "rssi"), fields.number(best.get(snr_key), "snr"), \
        gateway if isinstance(gateway, str) else None, len(rx_info)


def _from_v4(kind: str, doc: dict[str, Any], received: float, max_payload_bytes: int) -> Event:
    device = _device_v4(doc["deviceInfo"])
    when = fields.time(doc.get("time"), received)
    if kind != "up":
        context = doc.get("context")
        if not isinstance(context, dict):
            context = {}
        return fields.device_event(kind, device, when, doc, (doc.get("deduplicationId"), doc.get("queueItemId"),
                                                             context.get("deduplication_id")))
    uid = fields.uplink_id(doc.get("deduplicationId"))
    best = _best_rx(doc.get("rxInfo"))
    tx = doc.get("txInfo") or {}
    if not isinstance(tx, dict):
        raise MalformedEvent("txInfo is not an object")
    modulation = tx.get("modulation") or {}
    lora = (modulation.get("lora") or {}) if isinstance(modulation, dict) else None
    if not isinstance(lora, dict):
        raise MalformedEvent("txInfo.modulation.lora is not an object")
    obj = doc.get("object")
    if obj is not None and not isinstance(obj, dict):
        raise MalformedEvent("object is not a JSON object")
    fport = fields.integer(doc.get("fPort"), 0, field="fPort", maximum=255) or 0
    return fields.uplink(
        uid, device, when, fport=fport,
        payload=fields.data(doc.get("data"), max_payload_bytes),
        fcnt=fields.integer(doc.get("fCnt"), 0, field="fCnt"),
        frequency=fields.integer(tx.get("frequency"), field="frequency"),
        spreading_factor=fields.integer(lora.get("spreadingFactor"), field="spreadingFactor", maximum=12),
        dr=fields.integer(doc.get("dr"), field="dr", maximum=15),
        best=best, obj=obj, confirmed=doc.get("confirmed") is True)


def _v3_eui(value: Any, field: str) -> str:
    """v3 `json_v3` writes EUIs in hex, the `json` marshaler in base64."""
    if isinstance(value, str) and len(value) == 16:
        return fields.eui(value, field)
    raw = fields.b64(value, field)
    if len(raw) != 8:
        raise MalformedEvent(f"{field} is not an EUI-64")
    return raw.hex()


def _v3_uplink_id(dev_eui: str, fcnt: int | None, when: str, data: str) -> str:
    # v3 events carry no deduplication id; a redelivery repeats dev_eui, fCnt, receive time and
    # payload, so a name-based UUID of the four is stable. The payload keeps two uplinks apart
    # when gateways without GPS give no time and the frame counter was reset.
    return str(uuid.uuid5(_V3_NAMESPACE, f"{dev_eui}/{fcnt}/{when}/{data}"))


def _from_v3(kind: str, doc: dict[str, Any], received: float, max_payload_bytes: int) -> Event:
    dev_eui = _v3_eui(doc["devEUI"], "devEUI")
    app_id = fields.text(doc.get("applicationID"), "applicationID")
    rx_info = doc.get("rxInfo") or []
    first_time: Any = ""
    if isinstance(rx_info, list):
        for rx in rx_info:
            if isinstance(rx, dict) and rx.get("time"):
                first_time = rx["time"]
                break
    stamp = first_time or doc.get("publishedAt") or ""
    when = fields.time(stamp, received)
    device = DeviceInfo(
        dev_eui=dev_eui,
        application_id=app_id,
        application_name=fields.text(doc.get("applicationName"), "applicationName", fields.MAX_NAME, cut=True),
        device_name=fields.text(doc.get("deviceName"), "deviceName", fields.MAX_NAME, cut=True),
        device_profile_id=fields.text(doc.get("deviceProfileID"), "deviceProfileID"),
        device_profile_name=fields.text(doc.get("deviceProfileName"), "deviceProfileName", fields.MAX_NAME,
                                        cut=True),
        tags=fields.tags(doc.get("tags")),
    )
    if kind != "up":
        return fields.device_event(kind, device, when, doc)
    rssi, snr, gateway, gateways = _best_rx(rx_info, "loRaSNR", "gatewayID")
    if isinstance(gateway, str) and len(gateway) != 16:
        gateway = fields.b64(gateway, "gatewayID").hex()
    obj = doc.get("object")
    object_json = doc.get("objectJSON")
    if obj is None and object_json:
        if not isinstance(object_json, str):
            raise MalformedEvent("objectJSON is not a string")
        try:
            obj = orjson.loads(object_json)
        except orjson.JSONDecodeError:
            raise MalformedEvent("objectJSON is not valid JSON") from None
        fields.check_shape(obj)
    if obj is not None and not isinstance(obj, dict):
        raise MalformedEvent("object is not a JSON object")
    tx = doc.get("txInfo") or {}
    if not isinstance(tx, dict):
        raise MalformedEvent("txInfo is not an object")
    lora = tx.get("loRaModulationInfo") or {}
    if not isinstance(lora, dict):
        raise MalformedEvent("txInfo.loRaModulationInfo is not an object")
    fcnt = fields.integer(doc.get("fCnt"), 0, field="fCnt")
    fport = fields.integer(doc.get("fPort"), 0, field="fPort", maximum=255) or 0
    data = doc.get("data")
    payload = fields.data(data, max_payload_bytes)
    if not isinstance(stamp, str):
        raise MalformedEvent("time is not an RFC 3339 time")
    return fields.uplink(
        _v3_uplink_id(dev_eui, fcnt, stamp, data if isinstance(data, str) else ""), device, when,
        fport=fport, payload=payload, fcnt=fcnt,
        frequency=fields.integer(tx.get("frequency"), field="frequency"),
        spreading_factor=fields.integer(lora.get("spreadingFactor"), field="spreadingFactor", maximum=12),
        dr=fields.integer(doc.get("dr"), field="dr", maximum=15),
        best=(rssi, snr, gateway, gateways), obj=obj, confirmed=doc.get("confirmedUplink") is True)
