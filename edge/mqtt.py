"""paho-mqtt client construction shared by the source and the sinks: TLS, auth, backoff."""

from __future__ import annotations

import ssl
import struct
from collections.abc import Sequence

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from edge.config import MqttEndpoint


def make_client(endpoint: MqttEndpoint, *, clean: bool, manual_ack: bool = False) -> paho.Client:
    """A paho client for `endpoint`: protocol, credentials from file, TLS verified by default."""
    v5 = endpoint.protocol == "5"
    client = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=endpoint.client_id,
        protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
        # For v3.1.1 the session flag is given here; v5 takes clean_start at connect().
        clean_session=None if v5 else clean,
        manual_ack=manual_ack,
    )
    if endpoint.username:
        client.username_pw_set(endpoint.username, endpoint.password())
    if endpoint.tls:
        client.tls_set_context(tls_context(endpoint))
    return client


def tls_context(endpoint: MqttEndpoint) -> ssl.SSLContext:
    """The TLS context for an mqtts:// endpoint: verification always on, client certificate for mTLS."""
    # No option turns off certificate or host name checks: a silent downgrade is never possible.
    context = ssl.create_default_context(cafile=endpoint.ca_file or None)
    if endpoint.cert_file:
        context.load_cert_chain(endpoint.cert_file, endpoint.key_file)
    return context


_PUBACK = 0x40


def ack_many(client: paho.Client, acks: Sequence[tuple[int, int]]) -> None:
    """Acknowledge received messages (mid, qos) after a commit, QoS 1 ones in one socket write.

    paho writes one PUBACK per `ack()` call, two system calls each; a committed batch of 500
    would cost 1,000. The PUBACK packets are concatenated and queued through paho's own write
    queue (so they stay ordered with everything else paho sends). Falls back to `ack()` per
    message if that internal method is not there.
    """
    qos1 = [mid for mid, qos in acks if qos == 1]
    queue = getattr(client, "_packet_queue", None)
    if len(qos1) > 1 and queue is not None:
        queue(_PUBACK, b"".join(struct.pack("!BBH", _PUBACK, 2, mid) for mid in qos1), 0, 0)
    else:
        for mid in qos1:
            client.ack(mid, 1)
    for mid, qos in acks:
        if qos == 2:
            client.ack(mid, qos)
