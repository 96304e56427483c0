"""Receives ChirpStack integration events over MQTT and acknowledges them only after commit.

The subscriber uses a fixed client id and a persistent session (v5: clean start off plus a
session expiry; v3.1.1: clean session off) and subscribes with QoS 1, so the broker keeps events
while the gateway is down. PUBACK is sent only after the `handle` callback has returned for the
batch holding the message, i.e. after the buffer committed it. A batch closes after `batch_max`
messages (also the receive maximum announced to the broker) or `batch_ms`, whichever is first,
and the socket is read only while the batch has room: a backlog queued at the broker stays there
(TCP back-pressure) instead of in memory. A broken connection, a protocol error or a bug ends in
one log line and a reconnect with backoff; the thread only ends when `stop` is set.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from edge.backoff import Backoff
from edge.config import ChirpStackConfig
from edge.errors import ConnectionRefused, ProtocolError, StorageError, certificate_problem
from edge.model import Event
from edge.sources.chirpstack_events import MAX_PAYLOAD_BYTES, parse
from edge.sources.mqtt_subscriber import MqttSubscriber

log = logging.getLogger(__name__)


class Message:
    """One received MQTT message, parsed once on arrival: what the pipeline stores and the source acknowledges.

    `event` is what `parse` made of it (an Uplink, DeviceEvent or Malformed); `topic`, `payload`
    and `received` are stored with it as received, and `ack` is the (packet id, QoS) the source
    acknowledges once the batch holding the message is committed (None when it did not come from
    a broker session: tools and tests).
    """

    __slots__ = ("ack", "event", "payload", "received", "topic")

    def __init__(self, topic: str, payload: bytes, received: float, *, max_payload_bytes: int = MAX_PAYLOAD_BYTES,
                 ack: tuple[int, int] | None = None) -> None:
        self.topic = topic
        self.payload = payload
        self.received = received
        self.event: Event = parse(topic, payload, received, max_payload_bytes)
        self.ack = ack

    def __repr__(self) -> str:
        return f"Message({self.topic[:200]!r}, {len(self.payload)} bytes, {type(self.event).__name__})"


# Called with a batch of parsed messages; must commit them durably before returning, or raise.
Handler = Callable[[list[Message]], None]


class ChirpStackSource:
    """The ChirpStack MQTT source; `run` blocks until `stop` is set."""

    def __init__(self, cfg: ChirpStackConfig, handle: Handler, *, batch_max: int, batch_ms: int,
                 expect_session: bool = False) -> None:
        """`expect_session`: the broker should already hold our session (e.g. the buffer shows an earlier run)."""
        self.cfg = cfg
        self.handle = handle
        self.batch_max = batch_max
        self.batch_s = batch_ms / 1000
        self.connected = threading.Event()
        self.reconnects = 0
        self.store_failures = 0  # batches in a row the buffer could not store
        self.heartbeat = time.monotonic()  # last loop iteration; the service's watchdog reads it
        self.protocol_errors = 0  # connections dropped because the broker broke the protocol
        self._broken_streak = 0  # of those, in a row without a committed batch in between
        self.keepalive_s = cfg.mqtt.keepalive_s  # in force: the broker's Server Keep Alive wins
        self.granted_session_expiry_s: int | None = None  # from the last CONNACK (MQTT 5)
        # After a session was set up, a reconnect that finds none means the broker lost what it queued.
        self._session_expected = expect_session and (cfg.mqtt.protocol != "5" or cfg.session_expiry_s > 0)

    def _connect(self) -> MqttSubscriber:
        cfg = self.cfg
        sub = MqttSubscriber(cfg.mqtt, session_expiry_s=cfg.session_expiry_s, receive_maximum=self.batch_max,
                             max_packet_size=cfg.max_packet_size_kb * 1024)
        try:
            present = sub.connect(cfg.topic)
        except BaseException:
            sub.close()
            raise
        log.info("Connected to ChirpStack broker %s as %s (session present: %s).", cfg.mqtt.url,
                 cfg.mqtt.client_id, present)
        self._check_grant(sub)
        if self._session_expected and not present:
            log.warning("ChirpStack broker %s had no session for %s: events queued there while we"
                        " were disconnected may be lost (session expired, taken over, or the broker restarted"
                        " without persistence).", cfg.mqtt.url, cfg.mqtt.client_id)
        # This connection set a session up (3.1.1: clean session off; 5: a non-zero expiry).
        self._session_expected = not sub.v5 or cfg.session_expiry_s > 0
        return sub

    def _check_grant(self, sub: MqttSubscriber) -> None:
        """Note what the broker granted; a shorter session expiry than configured is a WARNING (once per value)."""
        granted = sub.granted
        if granted is None:
            return
        configured = self.cfg.session_expiry_s
        if sub.keepalive_s != self.cfg.mqtt.keepalive_s and sub.keepalive_s != self.keepalive_s:
            log.info("ChirpStack broker %s set the keep alive to %d s (configured %d s).", self.cfg.mqtt.url,
                     sub.keepalive_s, self.cfg.mqtt.keepalive_s)
        self.keepalive_s = sub.keepalive_s
        expiry = granted.session_expiry_s
        if expiry is not None and expiry < configured and expiry != self.granted_session_expiry_s:
            log.warning("ChirpStack broker %s granted a session expiry of %d s, shorter than the %d s configured"
                        " (chirpstack.session_expiry_s): events queued while the gateway is down longer than that"
                        " are lost. Raise the broker's limit.", self.cfg.mqtt.url, expiry, configured)
        self.granted_session_expiry_s = expiry

    def _commit(self, batch: list[Message]) -> bool:
        """Hand a batch to the pipeline; False (logged) when it could not be stored."""
        try:
            self.handle(batch)
        except StorageError as exc:
            # An expected condition (a full disk): one line, no traceback, and a growing pause
            # before the retry instead of a tight reconnect loop.
            self.store_failures += 1
            log.error("Could not store %d received messages (%s); they stay unacknowledged at the"
                      " ChirpStack broker and will be redelivered.", len(batch), exc)
            return False
        except Exception:
            # Not committed, so not acknowledged: the connection is dropped so that the broker
            # redelivers the batch on the next session.
            self.store_failures += 1
            log.exception("Could not store %d received messages; they stay unacknowledged at the"
                          " ChirpStack broker and will be redelivered.", len(batch))
            return False
        self.store_failures = 0
        return True

    def run(self, stop: threading.Event) -> None:
        """Receive until `stop` is set, reconnecting with jittered, capped backoff; never raises."""
        backoff = Backoff(self.cfg.mqtt.reconnect_min_s, self.cfg.mqtt.reconnect_max_s)
        url = self.cfg.mqtt.url
        while not stop.is_set():
            self.heartbeat = time.monotonic()
            try:
                sub = self._connect()
            except ConnectionRefused as exc:
                delay = backoff.next()
                log.error("ChirpStack broker %s refused us: %s; retrying in %.1f s.", url, exc, delay)
                stop.wait(delay)
                continue
            except ProtocolError as exc:
                self.protocol_errors += 1
                delay = backoff.next()
                log.warning("ChirpStack broker %s broke the MQTT protocol while connecting (%s); reconnecting in"
                            " %.1f s.", url, exc, delay)
                stop.wait(delay)
                continue
            except (OSError, ValueError) as exc:
                delay = backoff.next()
                tls = certificate_problem(exc)
                if tls:
                    log.error("The TLS certificate of ChirpStack broker %s is not trusted (%s): check [chirpstack]"
                              " ca_file and the broker's certificate (expiry, host name); retrying in %.1f s.",
                              url, tls, delay)
                else:
                    log.warning("Cannot connect to ChirpStack broker %s (%s); retrying in %.1f s.", url, exc, delay)
                stop.wait(delay)
                continue
            except Exception:  # a bug must not stop intake for good
                delay = backoff.next()
                log.exception("Connecting to ChirpStack broker %s failed unexpectedly; retrying in %.1f s.", url,
                              delay)
                stop.wait(delay)
                continue
            backoff.reset()
            self.connected.set()
            why: str | None = None
            level = logging.WARNING
            try:
                self._session(sub, stop)
            except ConnectionRefused as exc:
                why, level = str(exc), logging.ERROR  # the broker's ACL needs an operator
            except ProtocolError as exc:
                self.protocol_errors += 1
                self._broken_streak += 1
                why = f"it broke the MQTT protocol: {exc}"
            except (ConnectionError, OSError) as exc:
                why = str(exc)
            except Exception as exc:  # a bug must not stop intake; the broker redelivers
                log.exception("ChirpStack source failed unexpectedly; reconnecting.")
                why = f"{type(exc).__name__} in the source"
            finally:
                self.connected.clear()
                sub.close()
            if not stop.is_set():
                self.reconnects += 1
                delay = backoff.next()
                if self.store_failures:
                    # The broker is fine but the buffer is not: wait longer each time (capped).
                    delay = max(delay, min(30.0, self.cfg.mqtt.reconnect_min_s * 2 ** min(self.store_failures, 8)))
                if self._broken_streak:
                    # A broker that breaks the protocol right after accepting us would otherwise be
                    # reconnected to at the minimum delay forever: back off until a batch gets through.
                    delay = max(delay, min(self.cfg.mqtt.reconnect_max_s,
                                           self.cfg.mqtt.reconnect_min_s * 2 ** min(self._broken_streak, 8)))
                # One line per lost connection: what happened and when we try again.
                log.log(level, "Lost ChirpStack broker %s (%s); reconnecting in %.1f s.", url,
                        why or "session ended", delay)
                stop.wait(delay)

    def _session(self, sub: MqttSubscriber, stop: threading.Event) -> None:
        batch: list[Message] = []
        deadline = 0.0
        max_payload_bytes = self.cfg.max_payload_bytes
        try:
            while not stop.is_set():
                self.heartbeat = now = time.monotonic()
                timeout = max(0.0, deadline - now) if batch else 0.5
                # Never more than fits in the batch: the socket is read no faster than we commit,
                # so a backlog queued at the broker stays there (TCP back-pressure) whatever the
                # broker does with our Receive Maximum.
                for msg in sub.poll(min(timeout, 0.5), limit=self.batch_max - len(batch)):
                    if not batch:
                        deadline = time.monotonic() + self.batch_s
                    # Parsed here, once, on its way from the socket to the buffer.
                    batch.append(Message(msg.topic, msg.payload, time.time(), max_payload_bytes=max_payload_bytes,
                                         ack=(msg.mid, msg.qos)))
                if batch and (len(batch) >= self.batch_max or time.monotonic() >= deadline):
                    if not self._commit(batch):
                        raise ConnectionError("the buffer could not store the batch")
                    sub.ack([m.ack for m in batch if m.ack is not None])
                    self._broken_streak = 0
                    batch = []
        finally:
            # Commit what was received; it is not acknowledged on this connection (packet ids
            # belong to it): the broker redelivers it and the buffer drops the duplicates.
            if batch:
                self._commit(batch)
