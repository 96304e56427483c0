"""The MQTT packets of the ChirpStack source's subscriber: split the broker's byte stream, decode, check.

Packets are encoded and decoded by maintained implementations: the `mqtt5` codec (Rust) for MQTT 5,
paho-mqtt's packet decoders for MQTT 3.1.1 (`mqtt5` speaks only 5). What this module adds is the
glue a bounded reader needs: a packet whose announced length is above `max_packet_size` is refused
before it is buffered, and every malformed or protocol-violating packet is a `ProtocolError` (the
caller reconnects). The session that uses it is edge/sources/mqtt_subscriber.py. Packet layouts:
MQTT 3.1.1 §2-3 and MQTT 5.0 §2-3 (OASIS).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import mqtt5
from paho.mqtt import _packet as paho_packet
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.exception import MalformedPacket

from edge.errors import ConnectionRefused, ProtocolError

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
class SubAck:
    """A SUBACK: its packet id and one reason code (granted QoS) per topic filter."""

    mid: int
    codes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Disconnect:
    """A DISCONNECT from the broker (MQTT 5): its reason code and text."""

    reason: int
    text: str


PING_RESPONSE = object()  # a PINGRESP, which carries nothing
Packet = Publish | Granted | SubAck | Disconnect | object


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


def _decode5(data: memoryview) -> Packet:
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
        return SubAck(packet.packet_id, tuple(int(c) for c in packet.reason_codes))
    if isinstance(packet, mqtt5.PingRespPacket):
        return PING_RESPONSE
    if isinstance(packet, mqtt5.DisconnectPacket):
        return Disconnect(int(packet.reason_code), packet.reason_str or packet.reason_code.name.lower())
    raise ProtocolError(f"unexpected {_KINDS[data[0] >> 4]} from the broker")


def _decode311(header: int, body: bytes) -> Packet:
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
            return SubAck(sub.mid, tuple(sub.granted_qos))
        if kind == PINGRESP and flags == 0 and not body:
            return PING_RESPONSE
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


def connect311(client_id: str, username: str, password: str | None, keepalive: int) -> bytes:
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


def subscribe311(mid: int, topic: str) -> bytes:
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

    def next(self) -> Packet | None:
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


def packet_name(packet: object) -> str:
    if packet is PING_RESPONSE:
        return "PINGRESP"
    return {Publish: "PUBLISH", Granted: "CONNACK", SubAck: "SUBACK", Disconnect: "DISCONNECT"}.get(
        type(packet), type(packet).__name__)
