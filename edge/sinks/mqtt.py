"""Publishes formatted batches upstream over MQTT with QoS 1 and a bounded in-flight window.

Delivery is pipelined: the sink reads a batch of entries, formats it into messages and
publishes them while earlier batches still wait for PUBACKs, never exceeding `max_inflight`
unacknowledged messages. A batch is released from the buffer (cursor advanced) only once every
message of it and of all earlier batches was acknowledged. On any disconnect the in-flight state
is dropped and reading restarts from the durable cursor: at-least-once, duplicates carry the same
record ids. Each upstream runs its own thread, so one being down never holds back another.

A message the broker refuses (an MQTT 5 PUBACK with a reason code >= 0x80: not authorized by an
ACL, packet too large, quota exceeded) is never released from the buffer: a broker refuses for its
configuration, not for the data, and some brokers (Mosquitto 2.0) also drop the connection. The
sink logs an ERROR naming the topic and reason and retries with a backoff growing to
REFUSED_BACKOFF_MAX_S; once the broker's configuration is fixed, delivery resumes where it stopped.

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
from dataclasses import dataclass, field

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.backoff import Backoff
from edge.config import UpstreamConfig
from edge.mqtt import make_client
from edge.sinks.base import Backlog, Formatter, OutMessage

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
# The smallest window a flaky link shrinks reads to: about one pack per device of a large fleet.
MIN_READ_BATCH = 100


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


@dataclass(slots=True)
class SinkStats:
    """Counters a sink keeps in memory for status and metrics."""

    published: int = 0
    acknowledged: int = 0
    rejected: int = 0
    reconnects: int = 0
    connected: bool = False
    last_error: str = ""
    extra: dict[str, int] = field(default_factory=dict)


class MqttSink:
    """One MQTT upstream; `run` blocks until `stop` is set."""

    def __init__(self, cfg: UpstreamConfig, backlog_factory: Callable[[], Backlog], formatter: Formatter,
                 wake: threading.Event, on_command: Callable[[bytes], None] | None = None,
                 command_topic: str = "") -> None:
        self.cfg = cfg
        self.name = cfg.name
        self._backlog_factory = backlog_factory
        self.format = formatter
        self.wake = wake
        # Downlink commands from this destination (off unless command_topic is set): handed over as
        # raw payloads; the pipeline decides what is allowed.
        self.on_command = on_command if command_topic else None
        self.command_topic = command_topic
        self.stats = SinkStats()
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
        # mid -> (batch, or notice id for notices; the topic, to name it if the broker refuses it)
        self._by_mid: dict[int, tuple[_Batch | int, str]] = {}
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
        self.stats.connected = True
        if self.on_command is not None:
            client.subscribe(self.command_topic, qos=1)
        log.info("Connected to upstream %s (%s).", self.name, self.cfg.mqtt.url, extra={"upstream": self.name})

    def _on_disconnect(self, client: paho.Client, userdata: object, flags: object, reason: object,
                       properties: object) -> None:
        self._link_ok = False
        self.stats.connected = False

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        if self.on_command is not None:
            self.on_command(bytes(msg.payload))

    def _on_publish(self, client: paho.Client, userdata: object, mid: int, reason: object,
                    properties: object) -> None:
        found = self._by_mid.pop(mid, None)
        if found is None:
            return
        owner, topic = found
        self._inflight -= 1
        if getattr(reason, "is_failure", False):
            # The broker refused this message (MQTT 5 PUBACK reason >= 0x80). It is not released:
            # the session ends and the message is sent again after a backoff (see the module doc).
            self.stats.rejected += 1
            if not self._refused:
                code = getattr(reason, "value", 0x80)
                self._refused = True
                self._refusal = f"{reason} (PUBACK reason {code:#04x}) on topic {topic}"
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
            # from the buffer after a reconnect instead.
            client.connect(cfg.host, cfg.port, cfg.keepalive_s, clean_start=True)
        else:
            client.connect(cfg.host, cfg.port, cfg.keepalive_s)
        return client

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
                log.warning("Cannot connect to upstream %s (%s): %s; retrying in %.1f s.", self.name,
                            self.cfg.mqtt.url, exc, delay, extra={"upstream": self.name})
                stop.wait(delay)
                continue
            try:
                self._session(client, backlog, stop, backoff)
            finally:
                self._link_ok = False
                self.stats.connected = False
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
        for mid, (owner, topic) in list(self._by_mid.items()):
            if isinstance(owner, _Batch):
                self._by_mid[mid] = (stale, topic)
        self._batches.clear()
        self._committed_pos = position
        return position

    def _deliver(self, client: paho.Client, backlog: Backlog, stop: threading.Event, read_pos: int) -> None:
        last_progress = last_rewind_check = time.monotonic()
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
            if not queued and self._inflight < window and len(self._batches) < 2:
                self.wake.clear()
                last_id, count, groups = backlog.read_grouped(read_pos, self.read_limit)
                if count:
                    read_pos = last_id
                    self._batches.append(_Batch(last_id, count, (m for g in groups for m in self.format(g))))
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
            if idle and now - last_progress > 5:
                check_notices = True
                last_progress = now

    def _publish(self, client: paho.Client, message: OutMessage, owner: _Batch | int) -> bool:
        info = client.publish(message.topic, message.payload, qos=self.cfg.qos,
                              properties=self._properties(message.content_type))
        if info.rc != paho.MQTT_ERR_SUCCESS:
            self.stats.last_error = f"publish failed ({paho.error_string(info.rc)})"
            return False
        self._by_mid[info.mid] = (owner, message.topic)
        self._inflight += 1
        self.stats.published += 1
        if isinstance(owner, _Batch):
            owner.unacked += 1
        return True
