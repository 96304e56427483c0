"""A minimal MQTT 3.1.1/5 subscriber for the ChirpStack source: bulk reads, batched PUBACKs.

Why not paho here: paho reads one packet per loop call with several one-byte `recv` calls and
builds a message object with parsed properties for each; at thousands of uplinks a second that
is most of the gateway's CPU. This client does only what the source needs — connect with a
persistent session, subscribe with QoS 1, receive PUBLISH packets parsed straight from a
buffer filled by large reads, answer keepalive, and acknowledge a committed batch with a single
write. It never acknowledges on its own. Upstream publishing still uses paho (edge/sinks/mqtt.py).
Packet layouts: MQTT 3.1.1 §2-3 and MQTT 5.0 §2-3 (OASIS).
"""

from __future__ import annotations

import select
import socket
import ssl
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass

from edge.config import MqttEndpoint
from edge.mqtt import tls_context

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 12, 13, 14
_READ_SIZE = 256 * 1024


class ConnectionRefused(ConnectionError):
    """The broker answered CONNECT or SUBSCRIBE with a failure reason code."""


@dataclass(slots=True)
class Publish:
    """One received PUBLISH."""

    topic: str
    payload: bytes
    mid: int
    qos: int


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(s: str | bytes) -> bytes:
    raw = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(raw)) + raw


def _packet(kind: int, flags: int, body: bytes) -> bytes:
    return bytes([kind << 4 | flags]) + _varint(len(body)) + body


class MqttSubscriber:
    """One connection to a broker; create a new one for every (re)connect."""

    def __init__(self, endpoint: MqttEndpoint, *, session_expiry_s: int, receive_maximum: int,
                 connect_timeout: float = 10.0) -> None:
        self.endpoint = endpoint
        self.v5 = endpoint.protocol == "5"
        self.session_expiry_s = session_expiry_s
        self.receive_maximum = max(1, min(receive_maximum, 65535))
        self.timeout = connect_timeout
        self.session_present = False
        self._sock: socket.socket | None = None
        self._buf = bytearray()
        self._last_sent = time.monotonic()
        self._last_received = time.monotonic()
        self._ping_sent: float | None = None
        self._next_id = 0
        self._polling = False  # after the handshake the socket is non-blocking
        self._early: list[Publish] = []  # PUBLISH packets that came during the handshake

    # -- connection ---------------------------------------------------------------------------

    def connect(self, topic: str) -> bool:
        """Connect with a persistent session and subscribe to `topic` with QoS 1.

        Returns:
            Whether the broker still had our session.

        Raises:
            OSError: the broker cannot be reached (or TLS fails).
            ConnectionRefused: the broker refused the connection or the subscription.
        """
        try:
            return self._handshake(topic)
        except BaseException:
            if self._sock is not None:
                self._sock.close()
                self._sock = None
            raise

    def _handshake(self, topic: str) -> bool:
        ep = self.endpoint
        raw = socket.create_connection((ep.host, ep.port), timeout=self.timeout)
        self._sock = raw
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock: socket.socket = tls_context(ep).wrap_socket(raw, server_hostname=ep.host) if ep.tls else raw
        self._sock = sock
        password = ep.password()
        flags = (0x80 if ep.username else 0) | (0x40 if password is not None and ep.username else 0)
        body = _string("MQTT") + bytes([5 if self.v5 else 4, flags]) + struct.pack("!H", ep.keepalive_s)
        if self.v5:
            # Session Expiry Interval (0x11) and Receive Maximum (0x21): the broker keeps our session
            # while we are down, and stops after this many unacknowledged messages.
            props = b"\x11" + struct.pack("!I", self.session_expiry_s)
            props += b"\x21" + struct.pack("!H", self.receive_maximum)
            body += _varint(len(props)) + props
        body += _string(ep.client_id)
        if ep.username:
            body += _string(ep.username)
            if password is not None:
                body += _string(password)
        self._send(_packet(CONNECT, 0, body))
        _, _, data = self._expect({CONNACK})
        reason = data[1] if len(data) > 1 else 255
        if reason != 0:
            raise ConnectionRefused(f"broker refused the connection (CONNACK reason {reason:#04x}:"
                                    f" {_CONNACK_REASONS.get(reason, 'see the MQTT specification')})")
        self.session_present = bool(data[0] & 1)
        mid = self._mid()
        sub = struct.pack("!H", mid) + (b"\x00" if self.v5 else b"") + _string(topic) + b"\x01"
        self._send(_packet(SUBSCRIBE, 0x2, sub))
        _, _, data = self._expect({SUBACK})
        granted = data[-1] if data else 0x80
        if granted >= 0x80:
            raise ConnectionRefused(f"broker refused the subscription to {topic!r} (reason {granted:#04x})")
        self._polling = True
        sock.setblocking(False)
        return self.session_present

    def close(self) -> None:
        """Send DISCONNECT if possible and close the socket."""
        if self._sock is None:
            return
        try:
            self._sock.setblocking(True)
            self._sock.settimeout(1.0)
            self._sock.sendall(_packet(DISCONNECT, 0, b""))
        except OSError:
            pass
        self._sock.close()
        self._sock = None

    # -- receiving ----------------------------------------------------------------------------

    def poll(self, timeout: float) -> list[Publish]:
        """Wait up to `timeout` for data; return every complete PUBLISH received.

        Raises:
            ConnectionError: the connection was closed or the keepalive expired.
        """
        sock = self._require()
        if self._early:
            early, self._early = self._early, []
            return early + self._parse()
        pending = ssl.SSLSocket.pending(sock) if isinstance(sock, ssl.SSLSocket) else 0
        if not pending:
            wait = max(0.0, min(timeout, self._keepalive_due() - time.monotonic()))
            readable, _, _ = select.select([sock], [], [], wait)
        else:
            readable = [sock]
        if readable:
            self._read()
        self._keepalive()
        return self._parse()

    def _read(self) -> None:
        sock = self._require()
        while True:
            try:
                chunk = sock.recv(_READ_SIZE)
            except (BlockingIOError, ssl.SSLWantReadError):
                return
            if not chunk:
                raise ConnectionError("the broker closed the connection")
            self._buf += chunk
            self._last_received = time.monotonic()
            self._ping_sent = None
            if len(chunk) < _READ_SIZE:
                return

    @staticmethod
    def _frame(buf: bytearray, pos: int) -> tuple[int, int] | None:
        """(start of the variable header, remaining length) of the packet at `pos`, or None if incomplete."""
        length, shift, i, end = 0, 0, pos + 1, len(buf)
        while i < end:
            byte = buf[i]
            length |= (byte & 0x7F) << shift
            i += 1
            if not byte & 0x80:
                return (i, length) if i + length <= end else None
            shift += 7
            if shift > 21:
                raise ConnectionError("malformed packet length from the broker")
        return None

    def _parse(self) -> list[Publish]:
        out: list[Publish] = []
        buf = self._buf
        pos = 0
        while (frame := self._frame(buf, pos)) is not None:
            i, length = frame
            header = buf[pos]
            kind = header >> 4
            if kind == PUBLISH:
                out.append(self._publish(header & 0x0F, bytes(buf[i:i + length])))
            elif kind == DISCONNECT:
                reason = buf[i] if length else 0
                raise ConnectionError(f"the broker disconnected us (reason {reason:#04x})")
            elif kind == PUBREL:  # QoS 2 is never requested; complete it anyway
                self._send(_packet(PUBCOMP, 0, bytes(buf[i:i + 2])))
            pos = i + length
        if pos:
            del buf[:pos]
        return out

    def _publish(self, flags: int, body: bytes) -> Publish:
        qos = (flags >> 1) & 3
        tlen = int.from_bytes(body[0:2], "big")
        topic = body[2:2 + tlen].decode("utf-8", "replace")
        at = 2 + tlen
        mid = 0
        if qos:
            mid = int.from_bytes(body[at:at + 2], "big")
            at += 2
        if self.v5:
            plen, shift = 0, 0
            while True:
                byte = body[at]
                at += 1
                plen |= (byte & 0x7F) << shift
                if not byte & 0x80:
                    break
                shift += 7
            at += plen
        return Publish(topic, body[at:], mid, qos)

    # -- acknowledging ------------------------------------------------------------------------

    def ack(self, acks: Sequence[tuple[int, int]]) -> None:
        """Acknowledge committed messages (mid, qos) with one write (PUBACK; PUBREC for QoS 2)."""
        out = b"".join(struct.pack("!BBH", (PUBACK if qos == 1 else PUBREC) << 4, 2, mid)
                       for mid, qos in acks if qos)
        if out:
            self._send(out)

    # -- internals ----------------------------------------------------------------------------

    def _require(self) -> socket.socket:
        if self._sock is None:
            raise ConnectionError("not connected")
        return self._sock

    def _mid(self) -> int:
        self._next_id = self._next_id % 65535 + 1
        return self._next_id

    def _send(self, data: bytes) -> None:
        # Writes are small and rare (acks, pings); a bounded blocking send keeps them simple.
        sock = self._require()
        sock.settimeout(self.timeout)
        try:
            sock.sendall(data)
        except OSError as exc:
            raise ConnectionError(f"send to the broker failed: {exc}") from exc
        finally:
            if self._polling:
                sock.setblocking(False)
        self._last_sent = time.monotonic()

    def _expect(self, kinds: set[int]) -> tuple[int, int, bytes]:
        """Read one packet during the handshake (blocking, bounded by the connect timeout)."""
        sock = self._require()
        deadline = time.monotonic() + self.timeout
        while True:
            while (frame := self._frame(self._buf, 0)) is not None:
                i, length = frame
                header = self._buf[0]
                data = bytes(self._buf[i:i + length])
                del self._buf[:i + length]
                if header >> 4 in kinds:
                    return header >> 4, header & 0x0F, data
                if header >> 4 == PUBLISH:
                    # A resumed session's queued messages may arrive before the SUBACK: keep them,
                    # or the broker would wait forever for their acknowledgements.
                    self._early.append(self._publish(header & 0x0F, data))
            left = deadline - time.monotonic()
            if left <= 0:
                raise ConnectionError("the broker did not answer in time")
            sock.settimeout(left)
            chunk = sock.recv(_READ_SIZE)
            if not chunk:
                raise ConnectionError("the broker closed the connection during the handshake")
            self._buf += chunk

    def _keepalive_due(self) -> float:
        keepalive = self.endpoint.keepalive_s
        return (self._ping_sent + keepalive) if self._ping_sent else self._last_sent + keepalive * 0.75

    def _keepalive(self) -> None:
        now = time.monotonic()
        keepalive = self.endpoint.keepalive_s
        if self._ping_sent is not None and now - self._ping_sent > keepalive:
            raise ConnectionError(f"no answer from the broker for {keepalive} s (keepalive)")
        if self._ping_sent is None and now - self._last_sent >= keepalive * 0.75:
            self._send(_packet(PINGREQ, 0, b""))
            self._ping_sent = now


_CONNACK_REASONS = {
    1: "unacceptable protocol version", 2: "client id rejected", 3: "server unavailable",
    4: "bad username or password", 5: "not authorized", 0x84: "unsupported protocol version",
    0x85: "client id not valid", 0x86: "bad username or password", 0x87: "not authorized",
    0x88: "server unavailable", 0x89: "server busy", 0x8A: "banned", 0x97: "quota exceeded",
}
