"""The ChirpStack source's MQTT subscriber: a bounded, back-pressured read loop over maintained packet codecs.

Packets are encoded and decoded by maintained implementations: the `mqtt5` codec (Rust) for MQTT 5,
paho-mqtt's packet decoders for MQTT 3.1.1 (`mqtt5` speaks only 5). What this module adds is the
part a source needs and a general client does not give: it reads from the socket only when the
caller wants more messages (so a backlog queued at the broker stays in the broker and in TCP
buffers, whatever the broker makes of Receive Maximum), refuses a packet whose announced length is
above `max_packet_size` before buffering it, treats every malformed or protocol-violating packet as
a `ProtocolError` (the caller reconnects), and never acknowledges on its own: PUBACK is sent only
for what the caller says it committed. Packet layouts: MQTT 3.1.1 §2-3 and MQTT 5.0 §2-3 (OASIS).
"""

from __future__ import annotations

import select
import socket
import ssl
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass

import mqtt5
from paho.mqtt import _packet as paho_packet
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.exception import MalformedPacket

from edge.config import MqttEndpoint
from edge.errors import ConnectionRefused, ProtocolError
from edge.mqtt import tls_context

CONNACK, PUBLISH, SUBACK, PINGRESP, DISCONNECT = 2, 3, 9, 13, 14
_KINDS = ("reserved 0", "CONNECT", "CONNACK", "PUBLISH", "PUBACK", "PUBREC", "PUBREL", "PUBCOMP", "SUBSCRIBE",
          "SUBACK", "UNSUBSCRIBE", "UNSUBACK", "PINGREQ", "PINGRESP", "DISCONNECT", "AUTH")
READ_SIZE = 64 * 1024  # one recv; with the largest packet this bounds what is ever buffered


@dataclass(slots=True)
class Publish:
    """One received PUBLISH."""

    topic: str
    payload: bytes
    mid: int
    qos: int


@dataclass(frozen=True, slots=True)
class Granted:
    """What the broker's CONNACK granted; `session_expiry_s` is None on MQTT 3.1.1 (no expiry there)."""

    session_present: bool
    keepalive_s: int
    session_expiry_s: int | None
    receive_maximum: int
    max_packet_size: int | None


@dataclass(frozen=True, slots=True)
class _SubAck:
    mid: int
    codes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class _Disconnect:
    reason: int
    text: str


_PINGRESP = object()
_Packet = Publish | Granted | _SubAck | _Disconnect | object


def frame(buf: bytes | bytearray | memoryview, pos: int, max_packet_size: int) -> tuple[int, int] | None:
    """(start of the variable header, remaining length) of the packet at `pos`, None if incomplete.

    Raises:
        ProtocolError: a length field longer than four bytes, or a packet above `max_packet_size`
            (checked as soon as the length is known, before any of the packet is kept).
    """
    length, shift, i, end = 0, 0, pos + 1, len(buf)
    while i < end:
        byte = buf[i]
        length |= (byte & 0x7F) << shift
        i += 1
        if not byte & 0x80:
            total = i - pos + length
            if total > max_packet_size:
                raise ProtocolError(f"the broker announced a packet of {total} bytes, above the maximum packet"
                                    f" size of {max_packet_size} bytes (chirpstack.max_packet_size_kb)")
            return (i, length) if i + length <= end else None
        shift += 7
        if shift > 21:
            raise ProtocolError("malformed packet: remaining length longer than four bytes")
    return None


def _decode5(data: memoryview) -> _Packet:
    """One whole MQTT 5 packet (fixed header included) decoded by the `mqtt5` codec."""
    try:
        packet, used = mqtt5.read(data)
    except (KeyboardInterrupt, SystemExit, MemoryError):
        raise
    except BaseException as exc:  # noqa: BLE001 - the Rust codec may raise anything, even a panic
        raise ProtocolError(f"malformed {_KINDS[data[0] >> 4]}: {exc}") from None
    if used != len(data):
        raise ProtocolError(f"malformed {_KINDS[data[0] >> 4]}: {len(data) - used} bytes past its content")
    if isinstance(packet, mqtt5.PublishPacket):
        if packet.topic_alias is not None:
            raise ProtocolError("PUBLISH with a topic alias, but we allow none (Topic Alias Maximum 0)")
        return Publish(packet.topic, packet.payload, packet.packet_id or 0, int(packet.qos))
    if isinstance(packet, mqtt5.ConnAckPacket):
        if packet.reason_code != 0:
            text = f": {packet.reason_str}" if packet.reason_str else ""
            raise ConnectionRefused(f"broker refused the connection (CONNACK reason {int(packet.reason_code):#04x}"
                                    f" {packet.reason_code.name.lower().replace('_', ' ')}{text})")
        return Granted(packet.session_present, -1 if packet.server_keep_alive is None else packet.server_keep_alive,
                       packet.session_expiry_interval, packet.receive_max, packet.max_packet_size)
    if isinstance(packet, mqtt5.SubAckPacket):
        return _SubAck(packet.packet_id, tuple(int(c) for c in packet.reason_codes))
    if isinstance(packet, mqtt5.PingRespPacket):
        return _PINGRESP
    if isinstance(packet, mqtt5.DisconnectPacket):
        return _Disconnect(int(packet.reason_code), packet.reason_str or packet.reason_code.name.lower())
    raise ProtocolError(f"unexpected {_KINDS[data[0] >> 4]} from the broker")


def _decode311(header: int, body: bytes) -> _Packet:
    """One MQTT 3.1.1 packet decoded by paho-mqtt's packet decoders."""
    kind, flags = header >> 4, header & 0x0F
    v311 = MQTTProtocolVersion.MQTTv311
    try:
        if kind == PUBLISH:
            pub = paho_packet.decode_publish(header, body, v311)
            return Publish(pub.topic.decode("utf-8"), bytes(pub.payload), pub.mid, pub.qos)
        if kind == CONNACK and flags == 0:
            ack = paho_packet.decode_connack(header, body, v311)
            if ack.rc != 0:
                raise ConnectionRefused(f"broker refused the connection (CONNACK return code {ack.rc}: {ack.reason})")
            if ack.flags & 0xFE:
                raise ProtocolError(f"malformed CONNACK: reserved flags {ack.flags:#04x}")
            return Granted(bool(ack.flags & 1), -1, None, 65535, None)
        if kind == SUBACK and flags == 0:
            sub = paho_packet.decode_suback(header, body, v311)
            return _SubAck(sub.mid, tuple(sub.granted_qos))
        if kind == PINGRESP and flags == 0 and not body:
            return _PINGRESP
    except (MalformedPacket, UnicodeDecodeError, struct.error, ValueError, IndexError) as exc:
        raise ProtocolError(f"malformed {_KINDS[kind]}: {exc}") from None
    raise ProtocolError(f"unexpected {_KINDS[kind]} (flags {flags:#x}, {len(body)} bytes) from the broker")


def _string(s: str | bytes) -> bytes:
    raw = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(raw)) + raw


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _connect311(client_id: str, username: str, password: str | None, keepalive: int) -> bytes:
    # paho encodes packets only inside its Client, so the two packets we send on 3.1.1 are built
    # here from our own values (§3.1, §3.8); everything read from the broker goes through a codec.
    flags = 0x80 if username else 0
    if username and password is not None:
        flags |= 0x40
    body = _string("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive) + _string(client_id)
    if username:
        body += _string(username)
        if password is not None:
            body += _string(password)
    return b"\x10" + _varint(len(body)) + body


def _subscribe311(mid: int, topic: str) -> bytes:
    body = struct.pack("!H", mid) + _string(topic) + b"\x01"
    return b"\x82" + _varint(len(body)) + body


class PacketReader:
    """The read path: splits the broker's byte stream into packets and decodes them.

    It holds at most one partial packet (never more than `max_packet_size`) plus what one read
    brought; the caller decides when to read more.
    """

    def __init__(self, v5: bool, max_packet_size: int) -> None:
        self.v5 = v5
        self.max_packet_size = max_packet_size
        self.buf = bytearray()

    def feed(self, data: bytes) -> None:
        """Append bytes read from the socket."""
        self.buf += data

    def next(self) -> _Packet | None:
        """Take the next complete packet out of the buffer, decoded; None if there is none yet.

        Raises:
            ProtocolError: the packet is malformed or too large.
            ConnectionRefused: a CONNACK with a failure reason.
        """
        buf = self.buf
        if not buf:
            return None
        where = frame(buf, 0, self.max_packet_size)
        if where is None:
            return None
        start, length = where
        end = start + length
        if self.v5:
            if buf[0] >> 4 == PUBLISH and length >= 2:
                # mqtt5 0.8 panics (caught, but with a Rust backtrace on stderr) on a topic that is
                # not UTF-8; the most likely such string is checked first so it stays one WARNING.
                topic = bytes(buf[start + 2:start + 2 + (buf[start] << 8 | buf[start + 1])])
                try:
                    topic.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise ProtocolError(f"malformed PUBLISH: topic name is not UTF-8 ({exc.reason})") from None
            with memoryview(buf) as view, view[:end] as data:
                packet = _decode5(data)
        else:
            packet = _decode311(buf[0], bytes(buf[start:end]))
        del buf[:end]
        return packet


def check_publish(pub: Publish) -> Publish:
    """`pub` if the broker may send it on our QoS 1 subscription.

    Raises:
        ProtocolError: QoS 2 or 3 (§3.8.4, §3.3.1.2), packet id 0 (§2.3.1), or a topic name that
            is empty or holds wildcards or NUL (§4.7).
    """
    if pub.qos not in (0, 1):
        raise ProtocolError(f"PUBLISH with QoS {pub.qos} on a QoS 1 subscription")
    if pub.qos and not pub.mid:
        raise ProtocolError("PUBLISH with packet id 0")
    if not pub.topic or "+" in pub.topic or "#" in pub.topic or "\x00" in pub.topic:
        raise ProtocolError(f"PUBLISH with an invalid topic name {pub.topic[:80]!r}")
    return pub


class MqttSubscriber:
    """One connection to a broker; create a new one for every (re)connect."""

    def __init__(self, endpoint: MqttEndpoint, *, session_expiry_s: int, receive_maximum: int,
                 max_packet_size: int = 256 * 1024, connect_timeout: float = 10.0) -> None:
        self.endpoint = endpoint
        self.v5 = endpoint.protocol == "5"
        self.session_expiry_s = session_expiry_s
        self.receive_maximum = max(1, min(receive_maximum, 65535))
        self.max_packet_size = max_packet_size
        self.timeout = connect_timeout
        self.granted: Granted | None = None
        self.keepalive_s = endpoint.keepalive_s
        self._sock: socket.socket | None = None
        self._reader = PacketReader(self.v5, max_packet_size)
        self._last_sent = time.monotonic()
        self._ping_sent: float | None = None
        self._sub_mid = 0
        self._topic = ""
        self._failure: ConnectionError | None = None  # raised by the next poll
        self._suback_due: float | None = None  # while the SUBACK is outstanding
        self._early: list[Publish] = []  # PUBLISHes read while waiting for the SUBACK in connect()

    @property
    def session_present(self) -> bool:
        """Whether the broker still had our session at connect."""
        return self.granted.session_present if self.granted else False

    # -- connection ---------------------------------------------------------------------------

    def connect(self, topic: str) -> bool:
        """Connect with a persistent session and subscribe to `topic` with QoS 1.

        Returns once the SUBACK came, or earlier if a resumed session's PUBLISHes come first (they
        are kept for `poll`, which also checks the SUBACK when it arrives).

        Returns:
            Whether the broker still had our session.

        Raises:
            OSError: the broker cannot be reached (or TLS fails).
            ProtocolError: the broker broke the protocol.
            ConnectionRefused: the broker refused the connection or the subscription.
        """
        try:
            return self._handshake(topic)
        except BaseException:
            self._drop()
            raise

    def _handshake(self, topic: str) -> bool:
        ep = self.endpoint
        raw = socket.create_connection((ep.host, ep.port), timeout=self.timeout)
        self._sock = raw
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock: socket.socket = tls_context(ep).wrap_socket(raw, server_hostname=ep.host) if ep.tls else raw
        self._sock = sock
        password = ep.password()
        if self.v5:
            # Clean start off with a session expiry: the broker keeps our session while we are down.
            # Receive Maximum asks it to stop at that many unacknowledged messages; Maximum Packet
            # Size asks it not to send anything larger (we refuse it anyway).
            self._send(mqtt5.ConnectPacket(
                ep.client_id, username=ep.username or None,
                password=password.encode() if password is not None and ep.username else None,
                clean_start=False, keep_alive=ep.keepalive_s, session_expiry_interval=self.session_expiry_s,
                receive_max=self.receive_maximum, max_packet_size=self.max_packet_size).write())
        else:
            self._send(_connect311(ep.client_id, ep.username, password, ep.keepalive_s))
        deadline = time.monotonic() + self.timeout
        first = self._blocking_packet(deadline)
        if not isinstance(first, Granted):
            raise ProtocolError(f"the broker answered CONNECT with {_name(first)}, not CONNACK")
        if first.keepalive_s >= 0:
            self.keepalive_s = first.keepalive_s  # MQTT 5 §3.2.2.3.14: the Server Keep Alive wins
        expiry = first.session_expiry_s if first.session_expiry_s is not None else (
            self.session_expiry_s if self.v5 else None)
        self.granted = Granted(first.session_present, self.keepalive_s, expiry, first.receive_maximum,
                               first.max_packet_size)
        self._sub_mid = 1
        if self.v5:
            self._send(mqtt5.SubscribePacket(self._sub_mid, [mqtt5.TopicFilter(
                topic, max_qos=mqtt5.QoS.AT_LEAST_ONCE, retain_as_published=False)]).write())
        else:
            self._send(_subscribe311(self._sub_mid, topic))
        self._suback_due = time.monotonic() + self.timeout
        self._topic = topic
        while self._suback_due is not None:
            packet = self._blocking_packet(deadline)
            if isinstance(packet, Publish):
                # A resumed session's queued messages may come before the SUBACK: stop waiting and
                # let poll() take them (and the SUBACK after them) at the pace of the commits.
                self._early.append(check_publish(packet))
                break
            self._dispatch(packet)
        sock.setblocking(False)
        return self.granted.session_present

    def close(self) -> None:
        """Send DISCONNECT if possible and close the socket."""
        if self._sock is None:
            return
        try:
            self._sock.setblocking(True)
            self._sock.settimeout(1.0)
            self._sock.sendall(mqtt5.DisconnectPacket().write())  # the same two bytes in 3.1.1
        except OSError:
            pass
        self._drop()

    def _drop(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    # -- receiving ----------------------------------------------------------------------------

    def poll(self, timeout: float, limit: int = 1000) -> list[Publish]:
        """Return up to `limit` PUBLISHes, waiting up to `timeout` for the first.

        The socket is read only while no complete packet is buffered and fewer than `limit`
        messages were taken, so a caller that polls after each commit reads no faster than it
        commits: the rest waits in TCP buffers and at the broker.

        Raises:
            ConnectionError: the connection was closed, the keepalive expired, or the broker
                broke the protocol (ProtocolError) or refused the subscription (ConnectionRefused).
        """
        sock = self._require()
        if self._failure is not None:
            raise self._failure
        out: list[Publish] = []
        if self._early:
            out, self._early = self._early[:limit], self._early[limit:]
        try:
            self._fill(sock, out, limit, time.monotonic() + timeout)
        except ConnectionError as exc:
            if not out:
                raise
            # The good messages before the failure go to the caller first (to be committed, not
            # acknowledged); the next poll raises.
            self._failure = exc
        return out

    def _fill(self, sock: socket.socket, out: list[Publish], limit: int, deadline: float) -> None:
        while len(out) < limit:
            packet = self._reader.next()
            if packet is not None:
                if isinstance(packet, Publish):
                    out.append(check_publish(packet))
                else:
                    self._dispatch(packet)
                continue
            pending = sock.pending() if isinstance(sock, ssl.SSLSocket) else 0
            if not pending:
                now = time.monotonic()
                wait = 0.0 if out else max(0.0, min(deadline, self._next_due()) - now)
                readable, _, _ = select.select([sock], [], [], wait)
                if not readable:
                    self._timers(idle=True)
                    if out or time.monotonic() >= deadline:
                        break
                    continue
            if not self._recv():
                break  # TLS: a record not yet complete
        self._timers(idle=False)

    def _recv(self) -> bool:
        sock = self._require()
        try:
            chunk = sock.recv(READ_SIZE)
        except (BlockingIOError, ssl.SSLWantReadError):
            return False
        if not chunk:
            raise ConnectionError("the broker closed the connection")
        self._reader.feed(chunk)
        self._ping_sent = None  # any packet shows the broker is alive
        return True

    def _blocking_packet(self, deadline: float) -> _Packet:
        """Read one packet during the handshake (blocking, bounded by the connect timeout)."""
        sock = self._require()
        while True:
            packet = self._reader.next()
            if packet is not None:
                return packet
            left = deadline - time.monotonic()
            if left <= 0:
                raise ConnectionError("the broker did not answer in time")
            sock.settimeout(left)
            chunk = sock.recv(READ_SIZE)
            if not chunk:
                raise ConnectionError("the broker closed the connection during the handshake")
            self._reader.feed(chunk)

    def _dispatch(self, packet: _Packet) -> None:
        """Handle a packet that is not a PUBLISH."""
        if packet is _PINGRESP:
            return
        if isinstance(packet, _SubAck):
            if self._suback_due is None or packet.mid != self._sub_mid:
                raise ProtocolError(f"unexpected SUBACK for packet id {packet.mid}")
            if len(packet.codes) != 1:
                raise ProtocolError(f"SUBACK with {len(packet.codes)} reason codes for one topic filter")
            if packet.codes[0] >= 0x80:
                raise ConnectionRefused(f"broker refused the subscription to {self._topic!r}"
                                        f" (reason {packet.codes[0]:#04x})")
            if packet.codes[0] > 1:
                raise ProtocolError(f"SUBACK granted QoS {packet.codes[0]} above the QoS 1 asked for")
            self._suback_due = None
            return
        if isinstance(packet, _Disconnect):
            raise ConnectionError(f"the broker disconnected us (reason {packet.reason:#04x}: {packet.text})")
        raise ProtocolError(f"unexpected {_name(packet)} from the broker")

    # -- acknowledging ------------------------------------------------------------------------

    def ack(self, acks: Sequence[tuple[int, int]]) -> None:
        """Acknowledge committed messages (mid, qos) with one write; QoS 0 needs none."""
        out = b"".join(mqtt5.PubAckPacket(mid).write() for mid, qos in acks if qos)
        if out:
            self._send(out)

    # -- internals ----------------------------------------------------------------------------

    def _require(self) -> socket.socket:
        if self._sock is None:
            raise ConnectionError("not connected")
        return self._sock

    def _send(self, data: bytes) -> None:
        # Writes are small and rare (acks, pings); a bounded blocking send keeps them simple.
        sock = self._require()
        blocking = sock.getblocking()
        sock.settimeout(self.timeout)
        try:
            sock.sendall(data)
        except OSError as exc:
            raise ConnectionError(f"send to the broker failed: {exc}") from exc
        finally:
            if not blocking:
                sock.setblocking(False)
        self._last_sent = time.monotonic()

    def _next_due(self) -> float:
        """When the timers next need a look."""
        due = self._suback_due if self._suback_due is not None else float("inf")
        keepalive = self.keepalive_s
        if keepalive:
            due = min(due, (self._ping_sent + keepalive) if self._ping_sent is not None
                      else self._last_sent + keepalive * 0.75)
        return due

    def _timers(self, *, idle: bool) -> None:
        """Keepalive and SUBACK deadlines; `idle` when the socket was just found empty."""
        now = time.monotonic()
        if self._suback_due is not None and idle and now > self._suback_due:
            raise ProtocolError(f"no SUBACK within {self.timeout:.0f} s")
        keepalive = self.keepalive_s
        if not keepalive:
            return
        # Only an empty socket proves silence: while a backlog waits in TCP buffers the PINGRESP
        # sits behind it, and reading it sooner would mean reading faster than we commit.
        if idle and self._ping_sent is not None and now - self._ping_sent > keepalive:
            raise ConnectionError(f"no answer from the broker for {keepalive} s (keepalive)")
        if self._ping_sent is None and now - self._last_sent >= keepalive * 0.75:
            self._send(mqtt5.PingReqPacket().write())  # the same two bytes in 3.1.1
            self._ping_sent = now


def _name(packet: object) -> str:
    if packet is _PINGRESP:
        return "PINGRESP"
    return {Publish: "PUBLISH", Granted: "CONNACK", _SubAck: "SUBACK", _Disconnect: "DISCONNECT"}.get(
        type(packet), type(packet).__name__)
