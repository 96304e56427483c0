"""Reads ChirpStack v4's binary protobuf events (`json=false`) straight into model events.

Each field the model needs is read off the `chirpstack_api.integration` message and checked as the
JSON reader checks it, so an event gives the same Uplink in either encoding. Two rules make that so:
- proto3 keeps no presence for scalars: a field holding its default (0, '', false) is absent, as
  in ChirpStack's JSON before v4.1 (an RSSI or data rate of 0 is unknown, not 0);
- a `float` (SNR, battery level) is the shortest decimal naming the same 32-bit float, as
  ChirpStack's JSON writes it (9.2, not 9.199999809265137).
Fields the model does not use are not read, so they cannot make an event malformed.
"""

from __future__ import annotations

import functools
import math
import struct
from typing import Any

from edge.errors import MalformedEvent
from edge.model import Event
from edge.sources import chirpstack_fields as fields

# Timestamp's valid range (google/protobuf/timestamp.proto): 0001-01-01 to 9999-12-31.
_MIN_SECONDS, _MAX_SECONDS = -62135596800, 253402300799
_FLOAT32 = struct.Struct("<f")
# Protobuf's JSON names of the non-finite floats (what the summaries showed for them).
_NON_FINITE = {math.inf: "Infinity", -math.inf: "-Infinity"}


@functools.cache
def _classes() -> dict[str, Any]:
    # Imported on first use: the protobuf marshaler is optional in ChirpStack and JSON is the default.
    from chirpstack_api import integration

    return {"up": integration.UplinkEvent, "join": integration.JoinEvent, "status": integration.StatusEvent,
            "log": integration.LogEvent, "ack": integration.AckEvent, "txack": integration.TxAckEvent,
            "location": integration.LocationEvent}


def read(kind: str, payload: bytes, received: float, max_payload_bytes: int) -> Event:
    """The event of a protobuf payload on a topic of event type `kind`."""
    from google.protobuf.message import DecodeError

    cls = _classes().get(kind)
    if cls is None:
        raise MalformedEvent(f"unknown event type {kind!r} for a protobuf payload")
    try:
        message = cls.FromString(payload)
    except (DecodeError, RecursionError, ValueError) as exc:
        raise MalformedEvent(f"neither JSON nor a valid {cls.__name__} protobuf:"
                             f" {fields.text_of(str(exc), 200)}") from None
    if not message.HasField("device_info") or not message.device_info.dev_eui:
        raise MalformedEvent(f"{cls.__name__} protobuf without device_info.dev_eui")
    info = message.device_info
    device = fields.device_v4(
        dev_eui=info.dev_eui, application_id=info.application_id, application_name=info.application_name,
        device_name=info.device_name, device_profile_id=info.device_profile_id,
        device_profile_name=info.device_profile_name, tenant_id=info.tenant_id, tag_map=dict(info.tags))
    when = _time(message.time) if message.HasField("time") else received
    if kind == "up":
        return _uplink(message, device, when, max_payload_bytes)
    ids = (getattr(message, "deduplication_id", ""), getattr(message, "queue_item_id", ""),
           message.context.get("deduplication_id", "") if kind == "log" else "")
    return fields.device_event(kind, device, when, _summary_fields(kind, message), ids)


def _time(stamp: Any) -> float:
    """A Timestamp as POSIX seconds, microseconds kept (as the RFC 3339 text of the JSON reader gave)."""
    seconds: int = stamp.seconds
    nanos: int = stamp.nanos
    if not _MIN_SECONDS <= seconds <= _MAX_SECONDS or not 0 <= nanos <= 999_999_999:
        raise MalformedEvent(f"time is not a valid protobuf Timestamp (seconds {seconds}, nanos {nanos})")
    # The same division datetime.timestamp() does, so both encodings give the very same float.
    return (seconds * 1_000_000 + nanos // 1000) / 1_000_000


def _float32(value: float) -> float | str | None:
    """A protobuf `float` as ChirpStack's JSON writes it; None when it holds the default (+0.0).

    Non-finite values keep protobuf's JSON names ('NaN', 'Infinity'), which the checks refuse.
    """
    if value == 0 and math.copysign(1.0, value) > 0:
        return None
    if not math.isfinite(value):
        return _NON_FINITE.get(value, "NaN")
    for digits in range(6, 10):  # 6 significant digits name most float32 values, 9 every one
        shortest = float(f"{value:.{digits}g}")
        if _FLOAT32.unpack(_FLOAT32.pack(shortest))[0] == value:
            return shortest
    return value


def _double(value: float) -> float | str | None:
    """A protobuf `double`; None when it holds the default (+0.0), JSON names for non-finite values."""
    if value == 0 and math.copysign(1.0, value) > 0:
        return None
    return value if math.isfinite(value) else _NON_FINITE.get(value, "NaN")


def _snr(value: float) -> float | None:
    shortest = _float32(value)
    if isinstance(shortest, str):
        raise MalformedEvent(f"snr is not a plausible number: {shortest}")
    return fields.number(shortest, "snr")


def _best_rx(rx_info: Any) -> fields.Reception:
    """RSSI, SNR and gateway id of the strongest reception, and how many gateways heard it."""
    if not rx_info:
        return fields.NO_RECEPTION
    if len(rx_info) > fields.MAX_GATEWAYS:
        raise MalformedEvent(f"rxInfo lists more than {fields.MAX_GATEWAYS} receptions")
    best = rx_info[0]
    if len(rx_info) > 1:
        best_rank: float | None = None
        for rx in rx_info:
            rssi = fields.number(rx.rssi or None, "rssi")
            rank = -1000.0 if rssi is None else rssi
            if best_rank is None or rank > best_rank:
                best, best_rank = rx, rank
    return (fields.number(best.rssi or None, "rssi"), _snr(best.snr), best.gateway_id or None, len(rx_info))


def _uplink(message: Any, device: Any, when: float, max_payload_bytes: int) -> Event:
    from google.protobuf import json_format

    uid = fields.uplink_id(message.deduplication_id)
    best = _best_rx(message.rx_info)
    obj: dict[str, Any] | None = None
    if message.HasField("object"):
        # A Struct's JSON form is the object ChirpStack's codec returned; bound it like JSON
        # input, one level down as it sits in the event.
        obj = json_format.MessageToDict(message.object)
        fields.check_shape(obj, depth=1)
    fport = fields.integer(message.f_port, 0, field="fPort", maximum=255) or 0
    data = bytes(message.data)
    if len(data) > max_payload_bytes:
        raise MalformedEvent(f"data is {len(data)} bytes, more than {max_payload_bytes} (chirpstack.max_payload_bytes)")
    tx = message.tx_info
    return fields.uplink(
        uid, device, when, fport=fport, payload=data,
        fcnt=fields.integer(message.f_cnt, 0, field="fCnt"),
        frequency=fields.integer(tx.frequency or None, field="frequency"),
        # An unset or non-LoRa modulation reads as spreading factor 0: absent.
        spreading_factor=fields.integer(tx.modulation.lora.spreading_factor or None, field="spreadingFactor",
                                        maximum=12),
        dr=fields.integer(message.dr or None, field="dr", maximum=15),
        best=best, obj=obj, confirmed=message.confirmed)


def _enum(enum: Any, value: int) -> str | int | None:
    """An enum value by name, None for the default; one this chirpstack_api does not know stays a number."""
    if not value:
        return None
    try:
        return str(enum.Name(value))
    except ValueError:  # proto3 enums are open: ChirpStack may send values newer than our chirpstack_api
        return value


def _summary_fields(kind: str, message: Any) -> dict[str, Any]:
    """The few fields `chirpstack_fields.summary` shows, by their JSON names, absent when default."""
    from chirpstack_api import integration

    values: dict[str, Any] = {}
    if kind == "log":
        values = {"level": _enum(integration.LogLevel, message.level),
                  "code": _enum(integration.LogCode, message.code), "description": message.description}
    elif kind == "status":
        values = {"margin": message.margin, "batteryLevel": _float32(message.battery_level)}
    elif kind in ("ack", "txack"):
        values = {"queueItemId": message.queue_item_id,
                  "acknowledged": message.acknowledged if kind == "ack" else None}
    elif kind == "join":
        values = {"devAddr": message.dev_addr}
    elif kind == "location" and message.HasField("location"):
        location = {"latitude": _double(message.location.latitude),
                    "longitude": _double(message.location.longitude)}
        values = {"location": {k: v for k, v in location.items() if v is not None}}
    # A default (0, '', false) is left out, as protobuf's JSON leaves it out; floats come as None then.
    return {k: v for k, v in values.items() if v is not None and (v or isinstance(v, float | dict))}
