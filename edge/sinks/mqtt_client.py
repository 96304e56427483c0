"""An MQTT sink's paho client from its config: client options, CONNECT and PUBLISH properties; one-off publishing."""

from __future__ import annotations

import time
from dataclasses import replace

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.config import MqttEndpoint, UpstreamConfig
from edge.model import OutMessage
from edge.mqtt import make_client
from edge.sinks import topic as topics

# Bytes of a PUBLISH besides topic, payload and content type: fixed header (at most 5), topic
# length (2), packet id (2), property length (at most 4) and the content type's id and length (3).
PUBLISH_OVERHEAD = 16
# The largest packet this sink accepts from its broker (announced in CONNECT on MQTT 5).
MAX_INBOUND_PACKET = 64 * 1024


def sink_client(cfg: UpstreamConfig) -> paho.Client:
    """A paho client for the upstream with its in-flight window; set the callbacks, then `connect` it."""
    client = make_client(cfg.mqtt, clean=True)
    client.max_inflight_messages_set(cfg.max_inflight)
    # We never queue beyond the window ourselves; paho's queue bound is a safety net whose
    # overflow (MQTT_ERR_QUEUE_SIZE) we check on every publish.
    client.max_queued_messages_set(cfg.max_inflight * 2)
    return client


def connect(client: paho.Client, cfg: MqttEndpoint) -> None:
    """Start connecting `client` to the broker (CONNACK arrives in the client's loop)."""
    if cfg.protocol == "5":
        # Clean start: the broker keeps no state for us; unacknowledged messages are re-read
        # from the buffer after a reconnect instead. Maximum Packet Size: all the broker sends
        # us are acknowledgements and downlink commands (at most 8 KiB), so it must drop
        # anything larger instead of making us buffer it (MQTT 5 §3.1.2.11.4).
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.MaximumPacketSize = MAX_INBOUND_PACKET
        client.connect(cfg.host, cfg.port, cfg.keepalive_s, clean_start=True, properties=props)
    else:
        client.connect(cfg.host, cfg.port, cfg.keepalive_s)


class PublishProperties:
    """The PUBLISH properties of each content type (MQTT 5 Content Type), built once; None on MQTT 3.1.1."""

    def __init__(self, v5: bool) -> None:
        self._v5 = v5
        self._props: dict[str, Properties] = {}

    def __call__(self, content_type: str) -> Properties | None:
        """The properties to publish a message of `content_type` with."""
        if not self._v5:
            return None
        props = self._props.get(content_type)
        if props is None:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.ContentType = content_type
            self._props[content_type] = props
        return props


def packet_size(message: OutMessage, v5: bool) -> int:
    """About the size of the PUBLISH packet carrying `message` (never less)."""
    return (PUBLISH_OVERHEAD + len(message.topic.encode("utf-8", "replace")) + len(message.payload)
            + (len(message.content_type) if v5 else 0))


def publish_once(upstream: UpstreamConfig, messages: list[OutMessage], timeout_s: float = 10.0) -> list[str]:
    """Publish messages now, outside the delivery loop (`edge deadletter replay`).

    Connects with its own client id (the running service's connection stays up), publishes
    each message and waits for its acknowledgement.

    Returns:
        Per message, '' when the broker acknowledged it, else why not.
    """
    cfg = replace(upstream.mqtt, client_id=f"{upstream.mqtt.client_id}-replay")
    properties = PublishProperties(cfg.protocol == "5")
    client = make_client(cfg, clean=True)
    reasons: dict[int, str] = {}
    client.on_publish = lambda c, u, mid, reason, p: reasons.__setitem__(
        mid, f"refused: {reason}" if getattr(reason, "is_failure", False) else "")
    client.connect(cfg.host, cfg.port, cfg.keepalive_s)
    client.loop_start()
    out: list[str] = []
    try:
        for message in messages:
            why = topics.problem(message.topic)
            if why:
                out.append(f"cannot be published: {why}")
                continue
            try:
                info = client.publish(message.topic, message.payload, qos=upstream.qos,
                                      properties=properties(message.content_type))
                info.wait_for_publish(timeout_s)
            except (ValueError, RuntimeError) as exc:
                out.append(f"cannot be published: {exc}")
                continue
            end = time.monotonic() + timeout_s
            while info.mid not in reasons and time.monotonic() < end:
                time.sleep(0.01)
            out.append(reasons.get(info.mid, "no acknowledgement in time"))
    finally:
        client.disconnect()
        client.loop_stop()
    return out
