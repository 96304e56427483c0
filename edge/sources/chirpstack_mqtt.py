"""Receives ChirpStack integration events over MQTT and acknowledges them only after commit.

The client uses a fixed client id and a persistent session (v5: clean_start=False plus a session
expiry; v3.1.1: clean_session=False) and subscribes with QoS 1, so the broker keeps events while
the gateway is down. With paho's manual_ack, PUBACK is sent only after the `handle` callback has
returned for the batch holding the message, i.e. after the buffer committed it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.backoff import Backoff
from edge.config import ChirpStackConfig
from edge.mqtt import make_client

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
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
        self._batch: list[Message] = []
        self._mids: list[tuple[int, int]] = []
        self._deadline = 0.0
        self._client: paho.Client | None = None
        self._link_ok = False
        self.heartbeat = time.monotonic()  # last loop iteration; the service's watchdog reads it

    # paho callbacks (VERSION2 signatures) run on this source's thread inside client.loop().

    def _on_connect(self, client: paho.Client, userdata: object, flags: object, reason: object,
                    properties: object) -> None:
        if getattr(reason, "is_failure", False):
            log.error("ChirpStack broker %s refused the connection: %s", self.cfg.mqtt.url, reason)
            return
        self._link_ok = True
        client.subscribe(self.cfg.topic, qos=1)
        self.connected.set()
        log.info("Connected to ChirpStack broker %s as %s (session present: %s).", self.cfg.mqtt.url,
                 self.cfg.mqtt.client_id, getattr(flags, "session_present", "?"))

    def _on_disconnect(self, client: paho.Client, userdata: object, flags: object, reason: object,
                       properties: object) -> None:
        self._link_ok = False
        self.connected.clear()

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        if not self._batch:
            self._deadline = time.monotonic() + self.batch_s
        self._batch.append(Message(msg.topic, bytes(msg.payload), time.time()))
        self._mids.append((msg.mid, msg.qos))
        # A broker enforcing our receive maximum stops sending at batch_max unacknowledged
        # messages, so the batch must close here rather than wait for the timer.
        if len(self._batch) >= self.batch_max:
            self._flush(client)

    def _flush(self, client: paho.Client | None) -> None:
        batch, mids = self._batch, self._mids
        if not batch:
            return
        self._batch, self._mids = [], []
        try:
            self.handle(batch)
        except Exception:
            # Not committed, so not acknowledged: drop the connection so that the broker
            # redelivers the batch on the next session.
            log.exception("Could not store %d received messages; they stay unacknowledged at the"
                          " ChirpStack broker and will be redelivered.", len(batch))
            self._link_ok = False
            if client is not None:
                client.disconnect()
            return
        if client is None or not self._link_ok:
            # Packet ids belong to the connection that delivered them; the broker redelivers
            # these on the next session and the buffer drops them as duplicates.
            return
        for mid, qos in mids:
            if qos > 0:
                client.ack(mid, qos)

    def _connect(self) -> paho.Client:
        cfg = self.cfg.mqtt
        client = make_client(cfg, clean=False, manual_ack=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        if cfg.protocol == "5":
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = self.cfg.session_expiry_s
            # The broker may have this many unacknowledged QoS 1 messages in flight to us.
            props.ReceiveMaximum = min(self.batch_max, 65535)
            client.connect(cfg.host, cfg.port, cfg.keepalive_s, clean_start=False, properties=props)
        else:
            client.connect(cfg.host, cfg.port, cfg.keepalive_s)
        return client

    def run(self, stop: threading.Event) -> None:
        """Receive until `stop` is set, reconnecting with jittered, capped backoff."""
        backoff = Backoff(self.cfg.mqtt.reconnect_min_s, self.cfg.mqtt.reconnect_max_s)
        while not stop.is_set():
            self.heartbeat = time.monotonic()
            try:
                client = self._connect()
            except (OSError, ValueError) as exc:
                delay = backoff.next()
                log.warning("Cannot connect to ChirpStack broker %s (%s); retrying in %.1f s.",
                            self.cfg.mqtt.url, exc, delay)
                stop.wait(delay)
                continue
            self._client = client
            connack_by = time.monotonic() + 10
            try:
                while not stop.is_set():
                    self.heartbeat = time.monotonic()
                    timeout = max(0.0, self._deadline - time.monotonic()) if self._batch else 0.5
                    rc = client.loop(timeout=min(timeout, 0.5))
                    if self._batch and time.monotonic() >= self._deadline:
                        self._flush(client)
                    if rc != paho.MQTT_ERR_SUCCESS or (not self._link_ok and self.connected.is_set()):
                        break
                    if self._link_ok:
                        backoff.reset()
                    elif time.monotonic() > connack_by:
                        log.warning("ChirpStack broker %s did not accept the connection in time.",
                                    self.cfg.mqtt.url)
                        break
            finally:
                self._link_ok = False
                self.connected.clear()
                # Commit what was received; it is not acknowledged on this connection.
                self._flush(None)
                try:
                    client.disconnect()
                except OSError:
                    pass
                self._client = None
            if not stop.is_set():
                self.reconnects += 1
                delay = backoff.next()
                log.warning("Lost ChirpStack broker %s; reconnecting in %.1f s.", self.cfg.mqtt.url, delay)
                stop.wait(delay)
