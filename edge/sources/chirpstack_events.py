"""Parses ChirpStack MQTT integration events (v4 JSON or protobuf, v3 JSON) into model events.

Pure functions, no I/O. Accepts v4 JSON with and without default-valued fields (pbjson before and
after v4.1), binary protobuf (`json=false`), and v3's `json_v3` (hex EUIs, `object`) and `json`
(base64 EUIs, `objectJSON`) marshalers. Anything that cannot be understood becomes `Malformed`,
never an exception.

Events come from anyone who can publish to ChirpStack's broker, so nothing here trusts them:
the message size, nesting depth and number of values are bounded before anything walks the
document, every field is type-checked and length-bounded (edge/sources/chirpstack_fields.py),
and no foreign value is ever passed to str() or repr() whole. The JSON and protobuf readers
(chirpstack_json.py, chirpstack_protobuf.py) end in the same Uplink builder.
"""

from __future__ import annotations

import orjson

from edge.errors import MalformedEvent
from edge.model import Event, Malformed
from edge.sources import chirpstack_json, chirpstack_protobuf
from edge.sources.chirpstack_fields import MAX_DEPTH, MAX_VALUES, check_shape, text_of

EVENT_KINDS = frozenset({"up", "join", "status", "log", "ack", "txack", "location", "error", "integration"})

# LoRaWAN's largest FRMPayload is 242 bytes (RP002 at DR with the highest M); a margin for
# regional oddities. `chirpstack.max_payload_bytes` overrides it.
MAX_PAYLOAD_BYTES = 256
# A ChirpStack event is 1-2 KB; one with a large `object` a few tens. Beyond these bounds an
# event is malformed before anything walks it.
MAX_MESSAGE_BYTES = 256 * 1024
# What a malformed message keeps of its payload for inspection (the rest is counted in the reason).
MAX_KEPT_BYTES = 64 * 1024
MAX_REASON = 512


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
    except MalformedEvent as exc:
        return _malformed(topic, payload, str(exc))
    except RecursionError:
        return _malformed(topic, payload, "nested too deeply")
    except Exception as exc:  # noqa: BLE001 - one message can only ever affect itself
        return _malformed(topic, payload, _describe(exc))


def _parse(topic: str, payload: bytes, received: float, max_payload_bytes: int) -> Event:
    kind = event_kind(topic)
    if not kind:
        raise MalformedEvent("topic is not a ChirpStack event topic")
    if kind not in EVENT_KINDS:
        raise MalformedEvent(f"unknown event type {text_of(kind, 32)!r}")
    if len(payload) > MAX_MESSAGE_BYTES:
        raise MalformedEvent(f"message is {len(payload)} bytes, more than {MAX_MESSAGE_BYTES}"
                             " (a ChirpStack event is 1-2 KB)")
    stripped = payload.lstrip()
    if stripped[:1] == b"[":
        raise MalformedEvent("JSON payload is not an object")
    if stripped[:1] != b"{":
        return chirpstack_protobuf.read(kind, payload, received, max_payload_bytes)
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise MalformedEvent(f"invalid JSON: {text_of(str(exc), 200)}") from None
    if not isinstance(doc, dict):
        raise MalformedEvent("JSON payload is not an object")
    # Each level of nesting needs a bracket and each value at least two bytes, so counting
    # brackets in the bytes (C speed) and the length clear a usual event without a walk.
    if len(payload) > 2 * MAX_VALUES or payload.count(b"{") + payload.count(b"[") > MAX_DEPTH:
        check_shape(doc)
    return chirpstack_json.read(kind, doc, received, max_payload_bytes)


def _malformed(topic: str, payload: bytes, reason: str) -> Malformed:
    """A Malformed keeping at most MAX_KEPT_BYTES of the payload and a bounded reason."""
    reason = text_of(reason, MAX_REASON)
    if len(payload) > MAX_KEPT_BYTES:
        reason += f" (payload of {len(payload)} bytes kept truncated to {MAX_KEPT_BYTES})"
        payload = payload[:MAX_KEPT_BYTES]
    return Malformed(topic, payload, reason)


def _describe(exc: BaseException) -> str:
    """An exception as a bounded line (its text may quote foreign data)."""
    try:
        return text_of(f"{type(exc).__name__}: {exc}", MAX_REASON)
    except Exception:  # noqa: BLE001 - str() of a hostile argument may itself fail
        return type(exc).__name__
