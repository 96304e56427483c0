"""The source's own MQTT subscriber against a real Mosquitto: sessions, acks, keepalive, TLS, both protocols."""

from __future__ import annotations

import time
from dataclasses import replace

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge.config import MqttEndpoint
from edge.errors import ConnectionRefused
from edge.sources.mqtt_subscriber import MqttSubscriber

pytestmark = pytest.mark.mosquitto
TOPIC = "application/+/device/+/event/+"


def _publish(broker, n, qos=1, start=0):
    client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"pub-{time.time_ns()}")
    client.connect(broker.host, broker.port)
    client.loop_start()
    infos = [client.publish(f"application/a/device/{i:016x}/event/up", f"m{i}".encode(), qos=qos)
             for i in range(start, start + n)]
    for info in infos:
        info.wait_for_publish(5)
    client.disconnect()
    client.loop_stop()


def _receive(sub, want, timeout=10.0):
    got = []
    end = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < end:
        got.extend(sub.poll(0.2))
    return got


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_mqtt_wire_unacknowledged_messages_come_back_after_reconnect(broker_factory, protocol):
    broker = broker_factory()
    endpoint = MqttEndpoint(url=broker.url, client_id=f"wire-{protocol}", protocol=protocol)
    sub = MqttSubscriber(endpoint, session_expiry_s=600, receive_maximum=100)
    assert sub.connect(TOPIC) is False
    _publish(broker, 30)
    first = _receive(sub, 30)
    assert [p.payload for p in first] == [f"m{i}".encode() for i in range(30)]
    assert all(p.qos == 1 and p.mid for p in first)
    sub.ack([(p.mid, p.qos) for p in first[:10]])  # only the first ten were "committed"
    time.sleep(0.2)
    sub.close()
    again = MqttSubscriber(endpoint, session_expiry_s=600, receive_maximum=100)
    assert again.connect(TOPIC) is True
    _publish(broker, 5, start=30)  # queued while we were away
    second = _receive(again, 25)
    assert {p.payload for p in second} == {f"m{i}".encode() for i in range(10, 35)}
    again.ack([(p.mid, p.qos) for p in second])
    again.close()


def test_mqtt_wire_receive_maximum_stops_the_broker_until_acks(broker_factory):
    broker = broker_factory()
    sub = MqttSubscriber(MqttEndpoint(url=broker.url, client_id="wire-rm"), session_expiry_s=600, receive_maximum=20)
    sub.connect(TOPIC)
    _publish(broker, 50)
    first = _receive(sub, 50, timeout=2)
    assert len(first) == 20  # the broker honours our receive maximum
    sub.ack([(p.mid, p.qos) for p in first])
    rest = _receive(sub, 30, timeout=5)
    assert len(rest) == 30
    sub.ack([(p.mid, p.qos) for p in rest])
    sub.close()


def test_mqtt_wire_keepalive_pings_keep_the_session(broker_factory):
    broker = broker_factory()
    sub = MqttSubscriber(MqttEndpoint(url=broker.url, client_id="wire-ka", keepalive_s=1), session_expiry_s=60,
                         receive_maximum=10)
    sub.connect(TOPIC)
    end = time.monotonic() + 3.5
    while time.monotonic() < end:
        sub.poll(0.2)  # would raise if the broker dropped us for missing pings
    _publish(broker, 1)
    assert len(_receive(sub, 1)) == 1
    sub.close()


def test_mqtt_wire_refused_credentials_are_reported(broker_factory, tmp_path):
    from edge.broker import Mosquitto

    pw = tmp_path / "pw"
    secret = tmp_path / "secret"
    secret.write_text("wrong\n")
    broker = Mosquitto(head="per_listener_settings false", extra="allow_anonymous false\n")
    broker.conf.write_text(broker.conf.read_text().replace("allow_anonymous true\n", ""))
    broker.start()
    try:
        endpoint = MqttEndpoint(url=broker.url, client_id="wire-auth", username="edge", password_file=str(secret))
        with pytest.raises(ConnectionRefused, match=r"not authorized|bad username"):
            MqttSubscriber(endpoint, session_expiry_s=60, receive_maximum=10).connect(TOPIC)
    finally:
        broker.close()
    assert not pw.exists()


def test_mqtt_wire_unreachable_broker_is_an_oserror(broker_factory):
    broker = broker_factory()
    endpoint = MqttEndpoint(url=broker.url, client_id="wire-down")
    broker.stop()
    with pytest.raises(OSError):
        MqttSubscriber(replace(endpoint), session_expiry_s=60, receive_maximum=10, connect_timeout=2).connect(TOPIC)


def test_mqtt_wire_mtls_source_receives(tmp_path):
    """mqtts:// with a client certificate: verified against the CA, then messages flow."""
    import os
    import shutil
    import tempfile
    from pathlib import Path

    from edge.broker import Mosquitto, free_port
    from tests.pki import make_pki

    shared = Path(tempfile.mkdtemp(prefix="edge-pki-"))
    os.chmod(shared, 0o755)
    pki = make_pki(shared / "pki")
    tls_port = free_port()
    broker = Mosquitto(head="per_listener_settings true",
                       extra=(f"listener {tls_port} 127.0.0.1\ncafile {pki.ca}\ncertfile {pki.server_cert}\n"
                              f"keyfile {pki.server_key}\nrequire_certificate true\nallow_anonymous true\n"))
    broker.start()
    try:
        endpoint = MqttEndpoint(url=f"mqtts://127.0.0.1:{tls_port}", client_id="wire-tls", ca_file=str(pki.ca),
                                cert_file=str(pki.client_cert), key_file=str(pki.client_key))
        sub = MqttSubscriber(endpoint, session_expiry_s=60, receive_maximum=10)
        sub.connect(TOPIC)
        _publish(broker, 3)  # through the plain listener of the same broker
        got = _receive(sub, 3)
        assert [p.payload for p in got] == [b"m0", b"m1", b"m2"]
        sub.close()
        untrusted = make_pki(shared / "other", ca_name="someone-else")
        bad = replace(endpoint, ca_file=str(untrusted.ca), client_id="wire-tls-bad")
        with pytest.raises(OSError, match="CERTIFICATE_VERIFY_FAILED"):
            MqttSubscriber(bad, session_expiry_s=60, receive_maximum=10).connect(TOPIC)
    finally:
        broker.close()
        shutil.rmtree(shared, ignore_errors=True)


def test_mqtt_wire_takes_mosquittos_server_keep_alive(broker_factory):
    """Mosquitto's max_keepalive comes back as Server Keep Alive (MQTT 5 §3.2.2.3.14) and replaces our 30 s.

    That the pings then follow it is shown against the scripted broker (test_hostile_broker.py), where it can be 1 s.
    """
    from edge.broker import Mosquitto

    broker = Mosquitto(extra="max_keepalive 10\n")
    broker.start()
    try:
        sub = MqttSubscriber(MqttEndpoint(url=broker.url, client_id="wire-ska", keepalive_s=30),
                             session_expiry_s=60, receive_maximum=10)
        sub.connect(TOPIC)
        assert sub.keepalive_s == 10 and sub.granted is not None and sub.granted.keepalive_s == 10
        _publish(broker, 1)
        assert len(_receive(sub, 1)) == 1
        sub.close()
    finally:
        broker.close()


def test_mqtt_wire_announces_its_maximum_packet_size(broker_factory):
    """Mosquitto drops a message above our Maximum Packet Size instead of sending it (MQTT 5 §3.1.2.11.4)."""
    broker = broker_factory()
    sub = MqttSubscriber(MqttEndpoint(url=broker.url, client_id="wire-mps"), session_expiry_s=60,
                         receive_maximum=10, max_packet_size=2048)
    sub.connect(TOPIC)
    client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="pub-mps")
    client.connect(broker.host, broker.port)
    client.loop_start()
    client.publish("application/a/device/0000000000000001/event/up", b"x" * 4096, qos=1).wait_for_publish(5)
    client.publish("application/a/device/0000000000000001/event/up", b"small", qos=1).wait_for_publish(5)
    client.disconnect()
    client.loop_stop()
    got = _receive(sub, 1)
    assert [p.payload for p in got] == [b"small"]
    sub.close()
