"""The ChirpStack source vs a scripted hostile broker: one WARNING and a reconnect per bad packet, thread alive."""

from __future__ import annotations

import logging
import re
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import mqtt5
import pytest

from edge.config import ChirpStackConfig, MqttEndpoint
from edge.sources.chirpstack_mqtt import ChirpStackSource, Message
from tests.sources.hostile_broker import TOPIC, Conn, ScriptedBroker, packet, publish, varint

CONFIGURED_EXPIRY = 30 * 24 * 3600


@dataclass
class Running:
    """A ChirpStackSource on its own thread, with what it committed."""

    broker: ScriptedBroker
    source: ChirpStackSource
    thread: threading.Thread
    stop: threading.Event
    committed: list[bytes] = field(default_factory=list)

    def wait(self, what: Callable[[], bool], timeout: float = 20.0) -> None:
        end = time.monotonic() + timeout
        while not what():
            assert time.monotonic() < end, "condition not met in time"
            time.sleep(0.02)

    def finish(self) -> None:
        """Stop the source; its thread must have been alive until now."""
        assert self.thread.is_alive()
        self.stop.set()
        self.thread.join(10)
        assert not self.thread.is_alive()
        # Nothing acknowledged that was not committed first.
        assert set(self.broker.acked) <= set(self.committed)
        assert not self.broker.early


@pytest.fixture
def start(caplog: pytest.LogCaptureFixture) -> Iterator[Callable[..., Running]]:
    caplog.set_level(logging.INFO, logger="edge.sources")
    running: list[Running] = []

    def make(scripts: list[Callable[[Conn], None]], *, protocol: str = "5", keepalive_s: int = 30,
             max_packet_size_kb: int = 256, expect_session: bool = False, reconnect_max_s: float = 0.1) -> Running:
        broker = ScriptedBroker(scripts)
        cfg = ChirpStackConfig(
            mqtt=MqttEndpoint(url=broker.url, client_id="hostile", protocol=protocol, keepalive_s=keepalive_s,
                              reconnect_min_s=0.05, reconnect_max_s=reconnect_max_s),
            session_expiry_s=CONFIGURED_EXPIRY, max_packet_size_kb=max_packet_size_kb)
        committed = broker.committed

        def handle(batch: list[Message]) -> None:
            committed.extend(m.payload for m in batch)

        source = ChirpStackSource(cfg, handle, batch_max=50, batch_ms=10, expect_session=expect_session)
        stop = threading.Event()
        thread = threading.Thread(target=source.run, args=(stop,), daemon=True)
        thread.start()
        run = Running(broker, source, thread, stop, committed)
        running.append(run)
        return run

    yield make
    for run in running:
        run.stop.set()
        run.broker.close()
        run.thread.join(10)


def _loud(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("edge.sources")]


def _props_past_end(v5: bool) -> bytes:
    raw = TOPIC.encode()
    return packet(0x32, struct.pack("!H", len(raw)) + raw + b"\x00\x07" + varint(100) + b"\x01\x00")


def _qos3(v5: bool) -> bytes:
    return bytes([0x36]) + publish(v5, 7, b"q3")[1:]


def _id0(v5: bool) -> bytes:
    raw = TOPIC.encode()
    return packet(0x32, struct.pack("!H", len(raw)) + raw + b"\x00\x00" + (b"\x00" if v5 else b"") + b"id0")


HOSTILE: dict[str, tuple[Callable[[bool], bytes], str]] = {
    "remaining length of five bytes": (lambda v5: b"\x32\xff\xff\xff\xff\x7f", "longer than four bytes"),
    "topic length past the end": (lambda v5: packet(0x32, b"\x01\xf4abc\x00\x07\x00x"), "malformed PUBLISH"),
    "QoS 3": (_qos3, "QoS"),
    "packet id 0": (_id0, "packet id 0"),
    "200 MB announced": (lambda v5: bytes([0x32]) + varint(200 * 2**20) + b"\x00" * 65536, "maximum packet size"),
    "topic not UTF-8": (lambda v5: packet(0x32, b"\x00\x03a\xff/\x00\x07" + (b"\x00" if v5 else b"") + b"x"),
                        "not UTF-8|malformed PUBLISH"),
    "CONNACK after the handshake": (lambda v5: b"\x20\x02\x00\x00", "CONNACK"),
    "PUBREL although we never take QoS 2": (lambda v5: b"\x62\x02\x00\x05", "PUBREL"),
}


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_packet_is_one_warning_and_a_reconnect(start, caplog, case, protocol):
    make_bytes, says = HOSTILE[case]

    def script(conn: Conn) -> None:
        conn.handshake()
        conn.publish(1, b"before")
        conn.send(make_bytes(conn.v5))
        conn.serve()

    run = start([script], protocol=protocol)
    run.wait(lambda: b"after-1" in run.committed and b"after-1" in run.broker.acked)
    assert b"before" in run.committed  # the good message ahead of the bad one is kept
    loud = _loud(caplog)
    assert len(loud) == 1, [r.getMessage() for r in loud]
    assert loud[0].levelno == logging.WARNING
    assert "broke the MQTT protocol" in loud[0].getMessage()
    assert re.search(says, loud[0].getMessage()), loud[0].getMessage()
    assert run.source.protocol_errors == 1
    run.finish()


def test_property_length_past_the_end_is_a_protocol_error(start, caplog):
    def script(conn: Conn) -> None:
        conn.handshake()
        conn.send(_props_past_end(True))
        conn.serve()

    run = start([script])
    run.wait(lambda: b"after-1" in run.broker.acked)
    loud = _loud(caplog)
    assert len(loud) == 1 and "broke the MQTT protocol" in loud[0].getMessage()
    run.finish()


def test_200_mb_announced_is_refused_before_it_is_buffered(start, caplog):
    """The 200 MB PUBLISH is dropped from its header: the broker's send fails long before 200 MB."""
    sent = [0]

    def script(conn: Conn) -> None:
        conn.handshake()
        conn.send(bytes([0x32]) + varint(200 * 2**20))
        chunk = b"\x00" * 65536
        try:
            while sent[0] < 200 * 2**20:
                conn.sock.sendall(chunk)
                sent[0] += len(chunk)
        except OSError:
            pass

    run = start([script], max_packet_size_kb=64)
    run.wait(lambda: b"after-1" in run.broker.acked)
    assert sent[0] < 32 * 2**20  # only what the TCP buffers held before the client closed
    assert "above the maximum packet size of 65536 bytes" in _loud(caplog)[0].getMessage()
    run.finish()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_byte_by_byte_split_packets_are_read(start, caplog, protocol):
    def script(conn: Conn) -> None:
        conn.handshake(byte_by_byte=True)
        for mid in (1, 2, 3):
            conn.publish(mid, f"split-{mid}".encode(), byte_by_byte=True)
        conn.serve()

    run = start([script], protocol=protocol)
    run.wait(lambda: {b"split-1", b"split-2", b"split-3"} <= set(run.broker.acked))
    assert not _loud(caplog)
    assert len(run.broker.conns) == 1
    run.finish()


def test_no_pingresp_is_a_keepalive_timeout(start, caplog):
    def script(conn: Conn) -> None:
        conn.handshake()
        conn.serve(pingresp=False)

    run = start([script], keepalive_s=1)
    run.wait(lambda: b"after-1" in run.broker.acked)
    loud = _loud(caplog)
    assert len(loud) == 1 and "keepalive" in loud[0].getMessage()
    assert run.broker.conns[0].pings  # it did ask
    run.finish()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_suback_failure_is_one_error_and_a_retry(start, caplog, protocol):
    def script(conn: Conn) -> None:
        mid = conn.handshake(suback=False)
        conn.send(conn.suback(mid, 0x80))
        conn.serve()

    run = start([script], protocol=protocol)
    run.wait(lambda: b"after-1" in run.broker.acked)
    loud = _loud(caplog)
    assert len(loud) == 1 and "refused the subscription" in loud[0].getMessage()
    assert loud[0].levelno == logging.ERROR  # the broker's ACL needs an operator
    run.finish()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_publish_before_suback_is_stored_and_acknowledged(start, caplog, protocol):
    def script(conn: Conn) -> None:
        mid = conn.handshake(suback=False)
        for i in (1, 2, 3):
            conn.publish(i, f"early-{i}".encode())
        conn.send(conn.suback(mid))
        conn.publish(4, b"late")
        conn.serve()

    run = start([script], protocol=protocol)
    want = {b"early-1", b"early-2", b"early-3", b"late"}
    run.wait(lambda: want <= set(run.broker.acked))
    assert not _loud(caplog)
    assert len(run.broker.conns) == 1
    run.finish()


def test_suback_that_never_comes_is_a_protocol_error(start, caplog):
    def script(conn: Conn) -> None:
        conn.handshake(suback=False)
        conn.publish(1, b"early")  # so connect() returns and poll() waits for the SUBACK
        conn.serve()

    run = start([script])
    run.wait(lambda: b"after-1" in run.broker.acked, timeout=30)
    loud = _loud(caplog)
    assert len(loud) == 1 and "no SUBACK" in loud[0].getMessage()
    run.finish()


def test_connack_server_keep_alive_and_shorter_session_expiry(start, caplog):
    def script(conn: Conn) -> None:
        conn.handshake(connack=mqtt5.ConnAckPacket(server_keep_alive=1, session_expiry_interval=86400).write())
        conn.serve()

    run = start([script], keepalive_s=30)
    # With our 30 s the first PINGREQ would come after 22 s; the broker's 1 s must win.
    run.wait(lambda: bool(run.broker.conns) and len(run.broker.conns[0].pings) >= 2, timeout=15)
    assert run.source.keepalive_s == 1
    assert run.source.granted_session_expiry_s == 86400
    loud = _loud(caplog)
    assert len(loud) == 1, [r.getMessage() for r in loud]
    assert "86400 s" in loud[0].getMessage() and f"{CONFIGURED_EXPIRY} s" in loud[0].getMessage()
    assert len(run.broker.conns) == 1
    run.finish()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_reconnect_without_the_expected_session_warns_of_loss(start, caplog, protocol):
    def first(conn: Conn) -> None:
        conn.handshake(session_present=False)  # a first start: nothing expected yet
        conn.publish(1, b"one")
        while b"one" not in conn.broker.acked:
            got = conn.read()
            if got is None:
                return
            if got[0] == 0x40:
                conn.broker.acked.append(b"one")
        # then the broker goes away and comes back without our session

    def second(conn: Conn) -> None:
        conn.handshake(session_present=False)
        conn.publish(2, b"two")
        conn.serve()

    run = start([first, second], protocol=protocol)
    run.wait(lambda: b"two" in run.broker.acked)
    lost = [r.getMessage() for r in _loud(caplog) if "no session" in r.getMessage()]
    assert len(lost) == 1 and "may be lost" in lost[0]
    run.finish()


def test_broker_disconnect_with_reason_is_one_warning(start, caplog):
    def script(conn: Conn) -> None:
        conn.handshake()
        conn.send(mqtt5.DisconnectPacket(reason_code=mqtt5.DisconnectReasonCode.SERVER_SHUTTING_DOWN).write())

    run = start([script])
    run.wait(lambda: b"after-1" in run.broker.acked)
    loud = _loud(caplog)
    assert len(loud) == 1 and "0x8b" in loud[0].getMessage()
    run.finish()


def test_first_connect_without_an_expected_session_warns(start, caplog):
    """After a restart the caller may know a session should exist (the buffer holds earlier uplinks)."""
    def script(conn: Conn) -> None:
        conn.handshake(session_present=False)
        conn.publish(1, b"one")
        conn.serve()

    run = start([script], expect_session=True)
    run.wait(lambda: b"one" in run.broker.acked)
    loud = _loud(caplog)
    assert len(loud) == 1 and "no session" in loud[0].getMessage() and "may be lost" in loud[0].getMessage()
    run.finish()


def test_a_broker_that_keeps_breaking_the_protocol_is_backed_off(start, caplog):
    def bad(conn: Conn) -> None:
        conn.handshake(session_present=True)
        conn.send(_qos3(conn.v5))
        conn.serve()

    run = start([bad] * 5, reconnect_max_s=0.4)
    run.wait(lambda: b"after-5" in run.broker.acked)
    delays = [float(re.search(r"reconnecting in ([0-9.]+) s", r.getMessage()).group(1))  # type: ignore[union-attr]
              for r in _loud(caplog)]
    assert len(delays) == 5
    assert delays == sorted(delays) and delays[-1] == 0.4  # doubling from 0.05 per failure, capped
    assert run.source.protocol_errors == 5
    run.finish()
