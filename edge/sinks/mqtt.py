"""Publishes formatted batches upstream over MQTT with QoS 1 and a bounded in-flight window.

Delivery is pipelined: the sink reads a batch of entries, formats it into messages and
publishes them while earlier batches still wait for PUBACKs, never exceeding `max_inflight`
unacknowledged messages. A batch is released from the buffer (cursor advanced) only once every
message of it and of all earlier batches was acknowledged. On any disconnect the in-flight state
is dropped and reading restarts from the durable cursor: at-least-once, duplicates carry the same
record ids. Each upstream runs its own thread, so one being down never holds back another.

A message the broker refuses (an MQTT 5 PUBACK with a reason code >= 0x80: not authorized by an
ACL, quota exceeded, unspecified) is never released from the buffer: a broker refuses for its
configuration, not for the data, and some brokers (Mosquitto 2.0) also drop the connection. The
sink logs an ERROR naming the topic and reason and retries with a backoff growing to
REFUSED_BACKOFF_MAX_S; once the broker's configuration is fixed, delivery resumes where it stopped.

One message that can never be published is set aside instead, so it cannot stall the queue or
crash-loop the service: a topic that is not a valid MQTT topic name (edge/sinks/topic.py), a
single uplink larger than the broker's Maximum Packet Size (MQTT 5 CONNACK; packs of several uplinks
that are too large are sent again one uplink per pack), a formatter that raises for
an uplink, and the two PUBACK reasons that are about the message itself, 0x90 (Topic Name
invalid) and 0x99 (Payload format invalid). Each goes to `dead_letter` with the reason (`edge
deadletter list`), is counted (`rejected`, `dead_letters`) and the window moves on.

Rewinds (`edge buffer rewind`): about once a second the sink asks the buffer whether the operator
moved it back. If so it forgets every window read or in flight (their late PUBACKs release
nothing) and reads on from the new position on the same connection.

Progress on a flaky backhaul: a window is released only as a whole, so a link that drops more
often than one window takes to send would resend the same window forever. After a session ends
with a window unfinished, the next windows are half that size (down to MIN_READ_BATCH); each
window delivered whole doubles the size again, up to `read_batch`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import replace

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge.backoff import Backoff
from edge.config import UpstreamConfig
from edge.errors import certificate_problem
from edge.model import Entry
from edge.mqtt import make_client
from edge.sinks import topic as topics
from edge.sinks.base import Backlog, Formatter, OutMessage, SinkStats, format_isolated
from edge.telemetry import escape_control

log = logging.getLogger(__name__)

# How often delivered progress is written to the buffer while busy. Losing it (crash) only
# re-sends what was delivered since; writing per batch would cost an SD write per batch.
PROGRESS_INTERVAL_S = 0.25
# Retry delays after the broker refused a message: from the reconnect minimum up to this, so a
# misconfigured broker costs one ERROR line a minute, not a reconnect storm.
REFUSED_BACKOFF_MAX_S = 60.0
# How often a running sink asks the buffer whether the operator rewound it (`edge buffer rewind`):
# one indexed single-row read, so a rewind takes effect about a second later at most.
REWIND_CHECK_S = 1.0
# How long a sink lets committed uplinks gather after a read that found some (Kafka's linger.ms):
# small against any sensor's interval, long enough for several ingest commits to share packs.
LINGER_S = 0.05
# The smallest window a flaky link shrinks reads to: about one pack per device of a large fleet.
MIN_READ_BATCH = 100
# PUBACK reasons that judge the message itself, not the broker's configuration (MQTT 5 §3.4.2.1):
# sending it again can never succeed, so it becomes a dead letter instead of stalling the queue.
PER_MESSAGE_REFUSALS = {0x90: "Topic Name invalid", 0x99: "Payload format invalid"}
# Bytes of a PUBLISH besides topic, payload and content type: fixed header (at most 5), topic
# length (2), packet id (2), property length (at most 4) and the content type's id and length (3).
PUBLISH_OVERHEAD = 16

# The largest packet this sink accepts from its broker (announced in CONNECT on MQTT 5).
MAX_INBOUND_PACKET = 64 * 1024
# Receives a message that can never be published, the MQTT reason code (0 when refused before
# sending) and why; the pipeline keeps it as a dead letter.
DeadLetter = Callable[[OutMessage, int, str], None]


class _Batch:
    """One window of the backlog: its messages are produced lazily, one device group at a time."""

    __slots__ = ("_messages", "_next", "entries", "last_id", "unacked")

    def __init__(self, last_id: int, entries: int, messages: Iterator[OutMessage]) -> None:
        self.last_id = last_id
        self.entries = entries
        self.unacked = 0
        self._messages: Iterator[OutMessage] | None = messages
        self._next: OutMessage | None = None

    @property
    def queued(self) -> bool:
        """True while messages of this window may still be waiting to go out."""
        if self._next is None and self._messages is not None:
            self._next = next(self._messages, None)
            if self._next is None:
                self._messages = None
        return self._next is not None

    def take(self) -> OutMessage:
        """The next message; call only when `queued` is True."""
        message, self._next = self._next, None
        assert message is not None
        return message


class MqttSink:
    """One MQTT upstream; `run` blocks until `stop` is set."""

    def __init__(self, cfg: UpstreamConfig, backlog_factory: Callable[[], Backlog], formatter: Formatter,
                 wake: threading.Event, on_command: Callable[[bytes, bool], None] | None = None,
                 command_topic: str = "", dead_letter: DeadLetter | None = None) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self._backlog_factory = backlog_factory
        self.format = formatter
        self.wake = wake
        # Downlink commands from this destination (off unless command_topic is set): handed over as
        # raw payloads; the pipeline decides what is allowed.
        self.on_command = on_command if command_topic else None
        self.command_topic = command_topic
        self._dead_letter = dead_letter
        self.stats = SinkStats()
        self.stats.extra["dead_letters"] = 0
        self._max_packet = 0  # the broker's Maximum Packet Size (MQTT 5 CONNACK); 0 when it set none
        self._warned_size = False
        self._v5 = cfg.mqtt.protocol == "5"
        self._props: dict[str, Properties] = {}
        self.heartbeat = time.monotonic()  # last loop iteration; the service's watchdog reads it
        self._refused_backoff = Backoff(cfg.mqtt.reconnect_min_s, max(cfg.mqtt.reconnect_max_s, REFUSED_BACKOFF_MAX_S))
        # Why the broker last refused a message; kept across reconnects until a batch is delivered,
        # since a broker that refuses may also drop the connection before we read its PUBACK.
        self._refusal = ""
        # Uplinks per backlog read: `read_batch`, shrunk while windows are cut short (module doc).
        self.read_limit = cfg.read_batch
        self._reset()

    def _reset(self) -> None:
        self._batches: deque[_Batch] = deque()
        # mid -> (batch, or notice id for notices; the message, to name or set it aside if refused)
        self._by_mid: dict[int, tuple[_Batch | int, OutMessage]] = {}
        self._refused = False  # the broker refused a message in this session
        self._inflight = 0
        self._link_ok = False
        self._notices_sent: set[int] = set()

    def _properties(self, content_type: str) -> Properties | None:
        if not self._v5:
            return None
        props = self._props.get(content_type)
        if props is None:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.ContentType = content_type
            self._props[content_type] = props
        return props

    # paho callbacks run on this sink's thread, inside client.loop().

    def _on_connect(self, client: paho.Client, userdata: object, flags: object, reason: object,
                    properties: object) -> None:
        if getattr(reason, "is_failure", False):
            self.stats.last_error = f"connection refused: {reason}"
            log.error("Upstream %s (%s) refused the connection: %s", self.name, self.cfg.mqtt.url, reason)
            return
        self._link_ok = True
        self.stats.link(True)
        self._max_packet = int(getattr(properties, "MaximumPacketSize", 0) or 0)
        if self._max_packet and self.cfg.max_message_bytes + 512 > self._max_packet and not self._warned_size:
            self._warned_size = True
            log.warning("Upstream %s accepts packets of at most %d bytes, less than max_message_bytes (%d): a"
                        " backlog leaves one uplink per pack, and an uplink larger than that becomes a dead letter."
                        " Set max_message_bytes to %d or less.", self.name, self._max_packet,
                        self.cfg.max_message_bytes, max(1024, self._max_packet - 512), extra={"upstream": self.name})
        if self.on_command is not None:
            if self._v5:
                # Retain As Published (MQTT 5 §3.8.3.1): a retained command keeps its flag even when
                # delivered live, so the relay can refuse it (on 3.1.1 only the copies a new
                # subscription gets are flagged; the relay's id check stops those).
                client.subscribe(self.command_topic, options=SubscribeOptions(qos=1, retainAsPublished=True))
            else:
                client.subscribe(self.command_topic, qos=1)
        log.info("Connected to upstream %s (%s).", self.name, self.cfg.mqtt.url, extra={"upstream": self.name})

    def _on_disconnect(self, client: paho.Client, userdata: object, flags: object, reason: object,
                       properties: object) -> None:
        self._link_ok = False
        self.stats.link(False)

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        if self.on_command is not None:
            # The relay judges retained flags, ids and content; a command it cannot parse is its
            # business, never a reason to lose this upstream's delivery thread.
            try:
                self.on_command(bytes(msg.payload), bool(msg.retain))
            except Exception:
                log.exception("Upstream %s: a downlink command could not be handled.", self.name,
                              extra={"upstream": self.name})

    def _on_publish(self, client: paho.Client, userdata: object, mid: int, reason: object,
                    properties: object) -> None:
        found = self._by_mid.pop(mid, None)
        if found is None:
            return
        owner, message = found
        self._inflight -= 1
        if getattr(reason, "is_failure", False):
            code = int(getattr(reason, "value", 0x80))
            if code in PER_MESSAGE_REFUSALS and isinstance(owner, _Batch):
                # About this message alone: set it aside, the rest of the window goes on.
                self._set_aside(message, code, f"the broker refused it: {PER_MESSAGE_REFUSALS[code]}"
                                f" (PUBACK reason {code:#04x})")
                owner.unacked -= 1
                return
            # The broker refused this message (MQTT 5 PUBACK reason >= 0x80). It is not released:
            # the session ends and the message is sent again after a backoff (see the module doc).
            self.stats.rejected += 1
            if not self._refused:
                self._refused = True
                self._refusal = f"{reason} (PUBACK reason {code:#04x}) on topic {escape_control(message.topic)}"
            return
        self.stats.acknowledged += 1
        if isinstance(owner, int):
            self._acked_notices.append(owner)
        else:
            owner.unacked -= 1

    def _connect(self) -> paho.Client:
        cfg = self.cfg.mqtt
        client = make_client(cfg, clean=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.max_inflight_messages_set(self.cfg.max_inflight)
        # We never queue beyond the window ourselves; paho's queue bound is a safety net whose
        # overflow (MQTT_ERR_QUEUE_SIZE) we check on every publish.
        client.max_queued_messages_set(self.cfg.max_inflight * 2)
        if self._v5:
            # Clean start: the broker keeps no state for us; unacknowledged messages are re-read
            # from the buffer after a reconnect instead. Maximum Packet Size: all the broker sends
            # us are acknowledgements and downlink commands (at most 8 KiB), so it must drop
            # anything larger instead of making us buffer it (MQTT 5 §3.1.2.11.4).
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.MaximumPacketSize = MAX_INBOUND_PACKET
            client.connect(cfg.host, cfg.port, cfg.keepalive_s, clean_start=True, properties=props)
        else:
            client.connect(cfg.host, cfg.port, cfg.keepalive_s)
        return client

    def publish_once(self, messages: list[OutMessage], timeout_s: float = 10.0) -> list[str]:
        """Publish messages now, outside the delivery loop (`edge deadletter replay`).

        Connects with its own client id (the running service's connection stays up), publishes
        each message and waits for its acknowledgement.

        Returns:
            Per message, '' when the broker acknowledged it, else why not.
        """
        cfg = replace(self.cfg.mqtt, client_id=f"{self.cfg.mqtt.client_id}-replay")
        client = make_client(cfg, clean=True)
        reasons: dict[int, str] = {}
        client.on_publish = lambda c, u, mid, reason, p: reasons.__setitem__(
            mid, f"refused: {reason}" if getattr(reason, "is_failure", False) else "")
        client.connect(cfg.host, cfg.port, cfg.keepalive_s)
        client.loop_start()
        out: list[str] = []
        try:
            for message in messages:
                why = topics.problem(message.topic)
                if why:
                    out.append(f"cannot be published: {why}")
                    continue
                try:
                    info = client.publish(message.topic, message.payload, qos=self.cfg.qos,
                                          properties=self._properties(message.content_type))
                    info.wait_for_publish(timeout_s)
                except (ValueError, RuntimeError) as exc:
                    out.append(f"cannot be published: {exc}")
                    continue
                end = time.monotonic() + timeout_s
                while info.mid not in reasons and time.monotonic() < end:
                    time.sleep(0.01)
                out.append(reasons.get(info.mid, "no acknowledgement in time"))
        finally:
            client.disconnect()
            client.loop_stop()
        return out

    def run(self, stop: threading.Event) -> None:
        """Deliver until `stop` is set."""
        backlog = self._backlog_factory()
        backoff = Backoff(self.cfg.mqtt.reconnect_min_s, self.cfg.mqtt.reconnect_max_s)
        while not stop.is_set():
            self.heartbeat = time.monotonic()
            self._reset()
            try:
                client = self._connect()
            except (OSError, ValueError) as exc:
                self.stats.last_error = str(exc)
                delay = backoff.next()
                tls = certificate_problem(exc)
                if tls:
                    self.stats.last_error = f"TLS: {tls}"
                    log.error("The TLS certificate of upstream %s (%s) is not trusted (%s): check its ca_file and"
                              " the broker's certificate (expiry, host name); retrying in %.1f s.", self.name,
                              self.cfg.mqtt.url, tls, delay, extra={"upstream": self.name})
                else:
                    log.warning("Cannot connect to upstream %s (%s): %s; retrying in %.1f s.", self.name,
                                self.cfg.mqtt.url, exc, delay, extra={"upstream": self.name})
                stop.wait(delay)
                continue
            try:
                self._session(client, backlog, stop, backoff)
            finally:
                self._link_ok = False
                self.stats.link(False)
                try:
                    client.disconnect()
                    client.loop(timeout=0)
                except OSError:
                    pass
            if self._refusal and not stop.is_set():
                ended, self.stats.last_error = self.stats.last_error, f"refused a message: {self._refusal}"
                delay = self._refused_backoff.next()
                if self._refused:
                    log.error("Upstream %s (%s) refused a message: %s. Nothing is released from the buffer;"
                              " fix the broker's configuration (ACL, maximum packet size, quotas) or this"
                              " upstream's topics and max_message_bytes. Retrying in %.1f s.", self.name,
                              self.cfg.mqtt.url, self._refusal, delay, extra={"upstream": self.name})
                else:
                    log.warning("Upstream %s (%s) still refuses messages (%s; last: %s); retrying in %.1f s.",
                                self.name, self.cfg.mqtt.url, ended, self._refusal, delay,
                                extra={"upstream": self.name})
                stop.wait(delay)
            elif not stop.is_set():
                self.stats.reconnects += 1
                delay = backoff.next()
                log.warning("Lost upstream %s (%s): %s; reconnecting in %.1f s.", self.name, self.cfg.mqtt.url,
                            self.stats.last_error or "closed", delay, extra={"upstream": self.name})
                stop.wait(delay)

    def _session(self, client: paho.Client, backlog: Backlog, stop: threading.Event, backoff: Backoff) -> None:
        deadline = time.monotonic() + 10
        while not self._link_ok:
            if client.loop(timeout=0.1) != paho.MQTT_ERR_SUCCESS or stop.is_set():
                return
            if time.monotonic() > deadline:
                log.warning("Upstream %s did not accept the connection in time.", self.name)
                return
        backoff.reset()
        self._acked_notices: list[int] = []
        read_pos = backlog.cursor()
        self._delivered_pending = 0
        self._committed_pos = read_pos
        try:
            self._deliver(client, backlog, stop, read_pos)
        finally:
            # Whatever was completely acknowledged stays delivered, however the session ended, so a
            # reconnect does not send it again.
            self._save_progress(backlog)
            if self._batches and self._batches[0].entries > MIN_READ_BATCH and not stop.is_set():
                cut = self._batches[0].entries
                self.read_limit = max(MIN_READ_BATCH, min(self.read_limit, cut // 2))
                log.info("Upstream %s: the connection ended before a window of %d uplinks was delivered;"
                         " reading %d at a time until windows get through.", self.name, cut, self.read_limit,
                         extra={"upstream": self.name})

    def _save_progress(self, backlog: Backlog) -> None:
        """Write the windows released since the last write (if any) to the buffer's cursor."""
        if self._delivered_pending:
            backlog.advance(self._committed_pos, self._delivered_pending)
            self._delivered_pending = 0

    def _rewind(self, backlog: Backlog) -> int | None:
        """Take up a rewind, if the operator asked for one: the position to read on from, else None."""
        self._save_progress(backlog)  # counted as delivered; the cursor stays where the rewind put it
        position = backlog.rewound()
        if position is None:
            return None
        # Messages already published stay in paho's window until acknowledged; from now on their
        # PUBACKs only free the window. The entries they carry are read and sent again.
        stale = _Batch(position, 0, iter(()))
        for mid, (owner, message) in list(self._by_mid.items()):
            if isinstance(owner, _Batch):
                self._by_mid[mid] = (stale, message)
        self._batches.clear()
        self._committed_pos = position
        return position

    def _deliver(self, client: paho.Client, backlog: Backlog, stop: threading.Event, read_pos: int) -> None:
        last_progress = last_rewind_check = time.monotonic()
        read_after = 0.0  # no read before this (LINGER_S after a read that found data)
        check_notices = True
        window = self.cfg.max_inflight
        while not stop.is_set():
            self.heartbeat = time.monotonic()
            # Gap notices first: a receiver learns about a hole before the data after it.
            if check_notices:
                check_notices = False
                for notice_id, message in backlog.notices():
                    if notice_id in self._notices_sent:
                        continue
                    if self._inflight >= window:
                        check_notices = True  # the rest once acknowledgements free the window
                        break
                    if not self._publish(client, message, notice_id):
                        return
                    self._notices_sent.add(notice_id)
            # Read ahead while the window has room and nothing read is still waiting to go out.
            # A window is grouped by device, so a backlog leaves in large packs; its messages are
            # formatted only as the in-flight window frees up, so memory stays flat.
            queued = any(b.queued for b in self._batches)
            if not queued and self._inflight < window and len(self._batches) < 2 and time.monotonic() >= read_after:
                self.wake.clear()
                last_id, count, groups = backlog.read_grouped(read_pos, self.read_limit)
                if count:
                    read_pos = last_id
                    self._batches.append(_Batch(last_id, count, (m for g in groups for m in self._format(g))))
                    # While data flows, the next read waits a moment so that several commits leave
                    # together: a device's consecutive uplinks then share a pack (far fewer messages
                    # under load). An idle sink reads at once when woken.
                    read_after = time.monotonic() + (LINGER_S if count < self.read_limit else 0.0)
            # Publish what fits in the window.
            for batch in self._batches:
                while self._inflight < window and batch.queued:
                    if not self._publish(client, batch.take(), batch):
                        return
                if self._inflight >= window:
                    break
            can_send = self._inflight < window and any(b.queued for b in self._batches)
            idle = not self._batches and self._inflight == 0
            # Waiting for PUBACKs: select() returns as soon as one arrives, so the timeout only
            # bounds how late keepalive work runs. Idle: poll the socket, then sleep on `wake`,
            # which the pipeline sets after each commit.
            rc = client.loop(timeout=0.0 if (can_send or idle) else 0.05)
            if self._refused:
                return
            if rc != paho.MQTT_ERR_SUCCESS or not self._link_ok:
                self.stats.last_error = f"connection lost ({paho.error_string(rc)})"
                return
            # Release batches that are completely acknowledged, in order.
            while self._batches and not self._batches[0].queued and self._batches[0].unacked == 0:
                done = self._batches.popleft()
                self._committed_pos = done.last_id
                self._delivered_pending += done.entries
                if done.entries >= self.read_limit and self.read_limit < self.cfg.read_batch:
                    self.read_limit = min(self.cfg.read_batch, self.read_limit * 2)
                if self._refusal:
                    log.info("Upstream %s accepts messages again.", self.name, extra={"upstream": self.name})
                    self._refusal = ""
                    self._refused_backoff.reset()
            for notice_id in self._acked_notices:
                backlog.notice_delivered(notice_id)
                self._notices_sent.discard(notice_id)  # a gap extended meanwhile is announced again
                check_notices = True
            self._acked_notices.clear()
            now = time.monotonic()
            if self._delivered_pending and (now - last_progress >= PROGRESS_INTERVAL_S or not self._batches):
                self._save_progress(backlog)
                last_progress = now
            if now - last_rewind_check >= REWIND_CHECK_S:
                last_rewind_check = now
                # Notices made while data flows (sensor health) go out within a second, not only when idle.
                check_notices = True
                position = self._rewind(backlog)
                if position is not None:
                    read_pos = position
                    continue
            if idle and not self.wake.is_set():
                self.wake.wait(0.05)
            elif idle and now < read_after:
                stop.wait(read_after - now)  # lingering: let more commits gather, without spinning
            if idle and now - last_progress > 5:
                check_notices = True
                last_progress = now

    def _format(self, entries: list[Entry]) -> list[OutMessage]:
        """The messages of one device group; an uplink the formatter fails on becomes a dead letter.

        A broker that takes smaller packets than `max_message_bytes` gets the group again one uplink
        per pack, so a backlog drain still gets through; only an uplink too large on its own is set
        aside (by `_publish`).
        """
        def failed(message: OutMessage, why: str) -> None:
            self._set_aside(message, 0, why)

        messages = format_isolated(self.format, entries, failed)
        if self._max_packet and len(entries) > 1 and any(self._packet_size(m) > self._max_packet for m in messages):
            messages = [m for entry in entries for m in format_isolated(self.format, [entry], failed)]
        return messages

    def _packet_size(self, message: OutMessage) -> int:
        """About the size of the PUBLISH packet carrying `message` (never less)."""
        return (PUBLISH_OVERHEAD + len(message.topic.encode("utf-8", "replace")) + len(message.payload)
                + (len(message.content_type) if self._v5 else 0))

    def _set_aside(self, message: OutMessage, code: int, reason: str) -> None:
        """Keep a message that can never be published as a dead letter, count it and go on."""
        self.stats.rejected += 1
        self.stats.extra["dead_letters"] += 1
        reason = escape_control(reason)[:500]
        if self._dead_letter is None:
            log.error("Upstream %s: a message for topic %s cannot be published and is dropped: %s", self.name,
                      escape_control(message.topic)[:200], reason, extra={"upstream": self.name})
            return
        try:
            self._dead_letter(message, code, reason)
        except Exception:
            log.exception("Upstream %s: could not keep a message as a dead letter (%s); it is dropped.",
                          self.name, reason, extra={"upstream": self.name})

    def _unpublishable(self, message: OutMessage) -> str:
        """Why `message` can never be published to this broker ('' when it can)."""
        why = topics.problem(message.topic)
        if why:
            return why
        if self._max_packet:
            size = self._packet_size(message)
            if size > self._max_packet:
                return (f"the message ({size} bytes) is larger than the broker's maximum packet size"
                        f" ({self._max_packet} bytes)")
        return ""

    def _publish(self, client: paho.Client, message: OutMessage, owner: _Batch | int) -> bool:
        why = self._unpublishable(message)
        if not why:
            try:
                info = client.publish(message.topic, message.payload, qos=self.cfg.qos,
                                      properties=self._properties(message.content_type))
            except ValueError as exc:  # paho's own checks (wildcards, sizes): as above
                why = str(exc)
        if why:
            self._set_aside(message, 0, f"not published: {why}")
            return True
        if info.rc != paho.MQTT_ERR_SUCCESS:
            self.stats.last_error = f"publish failed ({paho.error_string(info.rc)})"
            return False
        self._by_mid[info.mid] = (owner, message)
        self._inflight += 1
        self.stats.published += 1
        if isinstance(owner, _Batch):
            owner.unacked += 1
        return True
