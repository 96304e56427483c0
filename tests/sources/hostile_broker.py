"""A scripted MQTT 3.1.1/5 broker for tests: just enough protocol to misbehave on purpose, one script per connection."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import mqtt5

TOPIC = "application/a/device/0011223344556677/event/up"


def varint(n: int) -> bytes:
    """MQTT's variable byte integer."""
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def packet(header: int, body: bytes) -> bytes:
    """A packet with a correct remaining length."""
    return bytes([header]) + varint(len(body)) + body


def publish(v5: bool, mid: int, payload: bytes, *, qos: int = 1, topic: str = TOPIC) -> bytes:
    """A well-formed PUBLISH."""
    if v5:
        return mqtt5.PublishPacket(topic, payload, qos=mqtt5.QoS(qos), packet_id=mid if qos else None).write()
    raw = topic.encode()
    body = struct.pack("!H", len(raw)) + raw + (struct.pack("!H", mid) if qos else b"") + payload
    return packet(0x30 | qos << 1, body)


@dataclass
class Conn:
    """One accepted client connection, as a script sees it."""

    sock: socket.socket
    index: int
    broker: ScriptedBroker
    v5: bool = True
    buf: bytearray = field(default_factory=bytearray)
    sent: dict[int, bytes] = field(default_factory=dict)  # packet id -> payload of PUBLISHes sent
    pings: list[float] = field(default_factory=list)
    disconnect: bytes | None = None  # body of the client's DISCONNECT, once it came

    def send(self, data: bytes, *, byte_by_byte: bool = False) -> None:
        """Send raw bytes (one at a time if asked, each in its own TCP segment)."""
        if not byte_by_byte:
            self.sock.sendall(data)
            return
        for i in range(len(data)):
            self.sock.sendall(data[i:i + 1])
            time.sleep(0.001)

    def read(self, timeout: float = 10.0) -> tuple[int, bytes] | None:
        """The next client packet (header byte, body), or None when the client closed."""
        self.sock.settimeout(timeout)
        while True:
            if len(self.buf) >= 2:
                length, shift, i = 0, 0, 1
                while i < len(self.buf):
                    byte = self.buf[i]
                    length |= (byte & 0x7F) << shift
                    i += 1
                    if not byte & 0x80:
                        if i + length <= len(self.buf):
                            header, body = self.buf[0], bytes(self.buf[i:i + length])
                            del self.buf[:i + length]
                            return header, body
                        break
                    shift += 7
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                return None
            if not chunk:
                return None
            self.buf += chunk

    def handshake(self, *, session_present: bool = False, suback: bool = True, connack: bytes | None = None,
                  byte_by_byte: bool = False) -> int:
        """Expect CONNECT, answer CONNACK, expect SUBSCRIBE, answer SUBACK (if asked); returns its packet id."""
        first = self.read()
        assert first is not None and first[0] >> 4 == 1, first
        self.v5 = first[1][6] == 5
        if connack is None:
            connack = (mqtt5.ConnAckPacket(session_present=session_present).write() if self.v5
                       else bytes([0x20, 2, int(session_present), 0]))
        self.send(connack, byte_by_byte=byte_by_byte)
        sub = self.read()
        assert sub is not None and sub[0] == 0x82, sub
        mid = int.from_bytes(sub[1][:2], "big")
        if suback:
            self.send(self.suback(mid), byte_by_byte=byte_by_byte)
        return mid

    def suback(self, mid: int, code: int = 1) -> bytes:
        """A SUBACK with one reason code."""
        if self.v5:
            return mqtt5.SubAckPacket(mid, [mqtt5.SubAckReasonCode(code)]).write()
        return packet(0x90, struct.pack("!H", mid) + bytes([code]))

    def publish(self, mid: int, payload: bytes, *, byte_by_byte: bool = False) -> None:
        """Send a well-formed QoS 1 PUBLISH and remember it for the ack check."""
        self.sent[mid] = payload
        self.send(publish(self.v5, mid, payload), byte_by_byte=byte_by_byte)

    def serve(self, *, pingresp: bool = True) -> None:
        """Answer pings and record PUBACKs until the client closes the connection."""
        while (got := self.read(timeout=30)) is not None:
            header, body = got
            if header == 0xC0:
                self.pings.append(time.monotonic())
                if pingresp:
                    self.send(b"\xd0\x00")
            elif header == 0x40:
                mid = int.from_bytes(body[:2], "big")
                payload = self.sent.get(mid, f"unknown id {mid}".encode())
                if payload not in self.broker.committed:
                    self.broker.early.append(payload)  # acknowledged before its commit returned
                self.broker.acked.append(payload)
            elif header == 0xE0:
                self.disconnect = body
                return


Script = Callable[[Conn], None]


def well_behaved(conn: Conn) -> None:
    """A normal broker with a resumed session: one fresh message, then serve."""
    conn.handshake(session_present=True)
    conn.publish(1000 + conn.index, f"after-{conn.index}".encode())
    conn.serve()


class ScriptedBroker:
    """A loopback listener running `scripts[i]` for the i-th connection, then `well_behaved`."""

    def __init__(self, scripts: list[Script]) -> None:
        self.scripts = scripts
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.conns: list[Conn] = []
        self.acked: list[bytes] = []  # payloads whose PUBACK came, in order
        self.committed: list[bytes] = []  # what the client under test committed (the test fills it)
        self.early: list[bytes] = []  # payloads acknowledged before they were in `committed`
        self.errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        """mqtt:// URL of the listener."""
        return f"mqtt://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            conn = Conn(sock, len(self.conns), self)
            self.conns.append(conn)
            script = self.scripts[conn.index] if conn.index < len(self.scripts) else well_behaved
            threading.Thread(target=self._run, args=(script, conn), daemon=True).start()

    def _run(self, script: Script, conn: Conn) -> None:
        try:
            script(conn)
        except (OSError, AssertionError) as exc:
            self.errors.append(exc)
        finally:
            conn.sock.close()

    def close(self) -> None:
        """Stop listening and drop every connection."""
        self.listener.close()
        for conn in self.conns:
            conn.sock.close()
