"""paho-mqtt client construction shared by the source and the sinks: TLS, auth, backoff."""

from __future__ import annotations

import ssl

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
        # Verification is always on: no option turns off certificate or host name checks.
        context = ssl.create_default_context(cafile=endpoint.ca_file or None)
        if endpoint.cert_file:
            context.load_cert_chain(endpoint.cert_file, endpoint.key_file)
        client.tls_set_context(context)
    return client
