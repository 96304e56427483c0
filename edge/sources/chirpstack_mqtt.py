"""Receives ChirpStack integration events over MQTT and acknowledges them only after commit.

The subscriber uses a fixed client id and a persistent session (v5: clean start off plus a
session expiry; v3.1.1: clean session off) and subscribes with QoS 1, so the broker keeps events
while the gateway is down. PUBACK is sent only after the `handle` callback has returned for the
batch holding the message, i.e. after the buffer committed it. A batch closes after `batch_max`
messages (also the receive maximum announced to the broker) or `batch_ms`, whichever is first.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from edge.backoff import Backoff
from edge.config import ChirpStackConfig
from edge.errors import StorageError
from edge.sources.mqtt_wire import ConnectionRefused, MqttSubscriber

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Message:
    """One received MQTT message."""

    topic: str
    payload: bytes
    received: float


# Called with a batch of messages; must commit them durably before returning, or raise.
Handler = Callable[[list[Message]], None]


class ChirpStackSource:
    """The ChirpStack MQTT source; `run` blocks until `stop` is set."""

    def __init__(self, cfg: ChirpStackConfig, handle: Handler, *, batch_max: int, batch_ms: int) -> None:
        self.cfg = cfg
        self.handle = handle
        self.batch_max = batch_max
        self.batch_s = batch_ms / 1000
        self.connected = threading.Event()
        self.reconnects = 0
        self.store_failures = 0  # batches in a row the buffer could not store
        self.heartbeat = time.monotonic()  # last loop iteration; the service's watchdog reads it

    def _connect(self) -> MqttSubscriber:
        sub = MqttSubscriber(self.cfg.mqtt, session_expiry_s=self.cfg.session_expiry_s,
                             receive_maximum=self.batch_max)
        try:
            present = sub.connect(self.cfg.topic)
        except BaseException:
            sub.close()
            raise
        log.info("Connected to ChirpStack broker %s as %s (session present: %s).", self.cfg.mqtt.url,
                 self.cfg.mqtt.client_id, present)
        return sub

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
        """Receive until `stop` is set, reconnecting with jittered, capped backoff."""
        backoff = Backoff(self.cfg.mqtt.reconnect_min_s, self.cfg.mqtt.reconnect_max_s)
        while not stop.is_set():
            self.heartbeat = time.monotonic()
            try:
                sub = self._connect()
            except ConnectionRefused as exc:
                delay = backoff.next()
                log.error("ChirpStack broker %s refused us: %s; retrying in %.1f s.", self.cfg.mqtt.url, exc, delay)
                stop.wait(delay)
                continue
            except (OSError, ValueError) as exc:
                delay = backoff.next()
                log.warning("Cannot connect to ChirpStack broker %s (%s); retrying in %.1f s.",
                            self.cfg.mqtt.url, exc, delay)
                stop.wait(delay)
                continue
            backoff.reset()
            self.connected.set()
            try:
                self._session(sub, stop)
            except (ConnectionError, OSError) as exc:
                log.warning("Lost ChirpStack broker %s: %s", self.cfg.mqtt.url, exc)
            finally:
                self.connected.clear()
                sub.close()
            if not stop.is_set():
                self.reconnects += 1
                delay = backoff.next()
                if self.store_failures:
                    # The broker is fine but the buffer is not: wait longer each time (capped).
                    delay = max(delay, min(30.0, self.cfg.mqtt.reconnect_min_s * 2 ** min(self.store_failures, 8)))
                log.warning("Reconnecting to ChirpStack broker %s in %.1f s.", self.cfg.mqtt.url, delay)
                stop.wait(delay)

    def _session(self, sub: MqttSubscriber, stop: threading.Event) -> None:
        batch: list[Message] = []
        acks: list[tuple[int, int]] = []
        deadline = 0.0
        try:
            while not stop.is_set():
                self.heartbeat = now = time.monotonic()
                timeout = max(0.0, deadline - now) if batch else 0.5
                for msg in sub.poll(min(timeout, 0.5)):
                    if not batch:
                        deadline = time.monotonic() + self.batch_s
                    batch.append(Message(msg.topic, msg.payload, time.time()))
                    acks.append((msg.mid, msg.qos))
                # The broker stops at batch_max unacknowledged messages (our receive maximum), so a
                # full batch is committed at once instead of waiting for the timer.
                if batch and (len(batch) >= self.batch_max or time.monotonic() >= deadline):
                    if not self._commit(batch):
                        raise ConnectionError("the buffer could not store the batch")
                    sub.ack(acks)
                    batch, acks = [], []
        finally:
            # Commit what was received; it is not acknowledged on this connection (packet ids
            # belong to it): the broker redelivers it and the buffer drops the duplicates.
            if batch:
                self._commit(batch)
