"""Delivery over one MQTT connection: windows read, published within the in-flight limit, released once acknowledged.

Delivery is pipelined: the sink reads a batch of entries, formats it into messages and
publishes them while earlier batches still wait for PUBACKs, never exceeding `max_inflight`
unacknowledged messages. A batch is released from the buffer (cursor advanced) only once every
message of it and of all earlier batches was acknowledged. On any disconnect the in-flight state
is dropped and reading restarts from the durable cursor: at-least-once, duplicates carry the same
record ids.

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

import paho.mqtt.client as paho

from edge.backoff import Backoff
from edge.config import UpstreamConfig
from edge.model import Entry
from edge.sinks import topic as topics
from edge.sinks.base import Backlog, DeadLetter, Formatter, OutMessage, SinkStats, format_isolated
from edge.sinks.mqtt_client import PublishProperties, packet_size
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



class Delivery:
    """What one MQTT sink has read, in flight and acknowledged; `run` delivers over one accepted connection.

    One per sink, `reset` before each connection. Kept across connections: the read size
    (`read_limit`, module doc), the broker's packet limit, and why the broker last refused a message
    with the backoff after refusals (the sink waits on it between sessions).
    """

    def __init__(self, cfg: UpstreamConfig, formatter: Formatter, wake: threading.Event, stats: SinkStats,
                 dead_letter: DeadLetter | None) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.format = formatter
        self.wake = wake
        self.stats = stats
        self._dead_letter = dead_letter
        self._v5 = cfg.mqtt.protocol == "5"
        self._properties = PublishProperties(self._v5)
        self.max_packet = 0  # the broker's Maximum Packet Size (MQTT 5 CONNACK); 0 when it set none
        self.refused_backoff = Backoff(cfg.mqtt.reconnect_min_s, max(cfg.mqtt.reconnect_max_s, REFUSED_BACKOFF_MAX_S))
        # Why the broker last refused a message; kept across reconnects until a batch is delivered,
        # since a broker that refuses may also drop the connection before we read its PUBACK.
        self.refusal = ""
        # Uplinks per backlog read: `read_batch`, shrunk while windows are cut short (module doc).
        self.read_limit = cfg.read_batch
        self.reset()

    def reset(self) -> None:
        """Forget the last connection's windows and messages in flight (a new connection starts)."""
        self.heartbeat = time.monotonic()  # last loop iteration; the service's watchdog reads it
        self._batches: deque[_Batch] = deque()
        # mid -> (batch, or notice id for notices; the message, to name or set it aside if refused)
        self._by_mid: dict[int, tuple[_Batch | int, OutMessage]] = {}
        self.refused = False  # the broker refused a message in this session
        self._inflight = 0
        self._notices_sent: set[int] = set()
        self._acked_notices: list[int] = []
        self._delivered_pending = 0

    def on_publish(self, client: paho.Client, userdata: object, mid: int, reason: object,
                   properties: object) -> None:
        """paho's PUBACK callback (on the sink's thread, inside client.loop())."""
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
            if not self.refused:
                self.refused = True
                self.refusal = f"{reason} (PUBACK reason {code:#04x}) on topic {escape_control(message.topic)}"
            return
        self.stats.acknowledged += 1
        if isinstance(owner, int):
            self._acked_notices.append(owner)
        else:
            owner.unacked -= 1

    def run(self, client: paho.Client, backlog: Backlog, stop: threading.Event, linked: Callable[[], bool]) -> None:
        """Deliver over an accepted connection until it drops (`linked` turns False), the broker
        refuses a message, or `stop` is set; whatever was acknowledged is released."""
        read_pos = backlog.cursor()
        self._committed_pos = read_pos
        try:
            self._deliver(client, backlog, stop, read_pos, linked)
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

    def _deliver(self, client: paho.Client, backlog: Backlog, stop: threading.Event, read_pos: int,
                 linked: Callable[[], bool]) -> None:
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
            if self.refused:
                return
            if rc != paho.MQTT_ERR_SUCCESS or not linked():
                self.stats.last_error = f"connection lost ({paho.error_string(rc)})"
                return
            # Release batches that are completely acknowledged, in order.
            while self._batches and not self._batches[0].queued and self._batches[0].unacked == 0:
                done = self._batches.popleft()
                self._committed_pos = done.last_id
                self._delivered_pending += done.entries
                if done.entries >= self.read_limit and self.read_limit < self.cfg.read_batch:
                    self.read_limit = min(self.cfg.read_batch, self.read_limit * 2)
                if self.refusal:
                    log.info("Upstream %s accepts messages again.", self.name, extra={"upstream": self.name})
                    self.refusal = ""
                    self.refused_backoff.reset()
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
        if self.max_packet and len(entries) > 1 and any(packet_size(m, self._v5) > self.max_packet for m in messages):
            messages = [m for entry in entries for m in format_isolated(self.format, [entry], failed)]
        return messages

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
        if self.max_packet:
            size = packet_size(message, self._v5)
            if size > self.max_packet:
                return (f"the message ({size} bytes) is larger than the broker's maximum packet size"
                        f" ({self.max_packet} bytes)")
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
