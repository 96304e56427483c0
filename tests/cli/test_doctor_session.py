"""`edge doctor` warns when the ChirpStack broker grants a shorter session expiry than configured (scripted broker)."""

from __future__ import annotations

import mqtt5
import pytest

from tests.cli.test_doctor import _doctor, _line
from tests.sources.hostile_broker import Conn, ScriptedBroker

pytestmark = pytest.mark.mosquitto


def _grants(seconds: int | None) -> ScriptedBroker:
    def script(conn: Conn) -> None:
        conn.handshake(connack=mqtt5.ConnAckPacket(session_expiry_interval=seconds).write())
        conn.serve()

    return ScriptedBroker([script] * 4)


def test_doctor_warns_of_a_shorter_granted_session_expiry(broker_factory, make_config):
    chirpstack, upstream = _grants(86400), broker_factory()
    try:
        cfg = make_config(chirpstack.url, upstream.url)
        _, lines, _ = _doctor(cfg)
        line = _line(lines, "chirpstack session")
        assert line.startswith("WARN")
        assert "86400 s" in line and "2592000 s" in line and "— fix: " in line
        # doctor asked with the service's expiry, and drops its own session again at DISCONNECT
        # (reason 0, Session Expiry Interval 0).
        assert [c.disconnect for c in chirpstack.conns if c.disconnect is not None] == [b"\x00\x05\x11\x00\x00\x00\x00"]
    finally:
        chirpstack.close()


def test_doctor_says_nothing_when_the_broker_keeps_the_expiry(broker_factory, make_config):
    chirpstack, upstream = _grants(None), broker_factory()
    try:
        cfg = make_config(chirpstack.url, upstream.url)
        _, lines, _ = _doctor(cfg)
        assert not [line for line in lines if "chirpstack session" in line]
        assert _line(lines, "chirpstack mqtt").startswith("OK")
    finally:
        chirpstack.close()
