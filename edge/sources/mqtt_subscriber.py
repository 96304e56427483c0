"""The ChirpStack source's MQTT subscriber: one bounded, back-pressured session over the packet codecs.

It reads from the socket only when the caller wants more messages (so a backlog queued at the
broker stays in the broker and in TCP buffers, whatever the broker makes of Receive Maximum), keeps
the keepalive and SUBACK deadlines, and never acknowledges on its own: PUBACK is sent only for
what the caller says it committed. Packets are split, decoded and checked by edge/sources/mqtt_wire.py.
"""

from __future__ import annotations

import select
import socket
import ssl
import time
from collections.abc import Sequence

import mqtt5

from edge.config import MqttEndpoint
from edge.errors import ConnectionRefused, ProtocolError
from edge.mqtt import tls_context
from edge.sources.mqtt_wire import (
    PING_RESPONSE,
    READ_SIZE,
    Disconnect,
    Granted,
    Packet,
    PacketReader,
    Publish,
    SubAck,
    check_publish,
    connect311,
    packet_name,
    subscribe311,
)


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
            self._send(connect311(ep.client_id, ep.username, password, ep.keepalive_s))
        deadline = time.monotonic() + self.timeout
        first = self._blocking_packet(deadline)
        if not isinstance(first, Granted):
            raise ProtocolError(f"the broker answered CONNECT with {packet_name(first)}, not CONNACK")
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
            self._send(subscribe311(self._sub_mid, topic))
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

    def _blocking_packet(self, deadline: float) -> Packet:
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

    def _dispatch(self, packet: Packet) -> None:
        """Handle a packet that is not a PUBLISH."""
        if packet is PING_RESPONSE:
            return
        if isinstance(packet, SubAck):
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
        if isinstance(packet, Disconnect):
            raise ConnectionError(f"the broker disconnected us (reason {packet.reason:#04x}: {packet.text})")
        raise ProtocolError(f"unexpected {packet_name(packet)} from the broker")

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
