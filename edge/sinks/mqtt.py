"""Publishes formatted batches upstream over MQTT with QoS 1: the connection, its session and the reconnect policy.

Each upstream runs its own thread, so one being down never holds back another. The sink connects
(clean start), waits for CONNACK and hands the accepted connection to its Delivery
(edge/sinks/mqtt_delivery.py: pipelined QoS 1 publishing within `max_inflight`, at-least-once,
dead letters, rewinds); when the connection drops it reconnects with a jittered, capped backoff.

A message the broker refuses (an MQTT 5 PUBACK with a reason code >= 0x80: not authorized by an
ACL, quota exceeded, unspecified) is never released from the buffer: a broker refuses for its
configuration, not for the data, and some brokers (Mosquitto 2.0) also drop the connection. The
sink logs an ERROR naming the topic and reason and retries with a backoff growing to
REFUSED_BACKOFF_MAX_S (edge/sinks/mqtt_delivery.py); once the broker's configuration is fixed,
delivery resumes where it stopped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import paho.mqtt.client as paho
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge.backoff import Backoff
from edge.config import UpstreamConfig
from edge.errors import certificate_problem
from edge.sinks.base import Backlog, DeadLetter, Formatter, OutMessage, SinkStats
from edge.sinks.mqtt_client import connect, publish_once, sink_client
from edge.sinks.mqtt_delivery import Delivery

log = logging.getLogger(__name__)


class MqttSink:
    """One MQTT upstream; `run` blocks until `stop` is set."""

    def __init__(self, cfg: UpstreamConfig, backlog_factory: Callable[[], Backlog], formatter: Formatter,
                 wake: threading.Event, on_command: Callable[[bytes, bool], None] | None = None,
                 command_topic: str = "", dead_letter: DeadLetter | None = None) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self._backlog_factory = backlog_factory
        self.wake = wake
        # Downlink commands from this destination (off unless command_topic is set): handed over as
        # raw payloads; the pipeline decides what is allowed.
        self.on_command = on_command if command_topic else None
        self.command_topic = command_topic
        self.stats = SinkStats()
        self.stats.extra["dead_letters"] = 0
        self._warned_size = False
        self._v5 = cfg.mqtt.protocol == "5"
        self._link_ok = False
        self._delivery = Delivery(cfg, formatter, wake, self.stats, dead_letter)

    @property
    def heartbeat(self) -> float:
        """The last loop iteration (time.monotonic()); the service's watchdog reads it."""
        return self._delivery.heartbeat

    @property
    def format(self) -> Formatter:
        """Turns entries into the messages to publish; the delivery uses whatever is set here."""
        return self._delivery.format

    @format.setter
    def format(self, formatter: Formatter) -> None:
        self._delivery.format = formatter

    def _linked(self) -> bool:
        return self._link_ok

    # paho callbacks run on this sink's thread, inside client.loop().

    def _on_connect(self, client: paho.Client, userdata: object, flags: object, reason: object,
                    properties: object) -> None:
        if getattr(reason, "is_failure", False):
            self.stats.last_error = f"connection refused: {reason}"
            log.error("Upstream %s (%s) refused the connection: %s", self.name, self.cfg.mqtt.url, reason)
            return
        self._link_ok = True
        self.stats.link(True)
        max_packet = self._delivery.max_packet = int(getattr(properties, "MaximumPacketSize", 0) or 0)
        if max_packet and self.cfg.max_message_bytes + 512 > max_packet and not self._warned_size:
            self._warned_size = True
            log.warning("Upstream %s accepts packets of at most %d bytes, less than max_message_bytes (%d): a"
                        " backlog leaves one uplink per pack, and an uplink larger than that becomes a dead letter."
                        " Set max_message_bytes to %d or less.", self.name, max_packet,
                        self.cfg.max_message_bytes, max(1024, max_packet - 512), extra={"upstream": self.name})
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

    def _connect(self) -> paho.Client:
        client = sink_client(self.cfg)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._delivery.on_publish
        client.on_message = self._on_message
        connect(client, self.cfg.mqtt)
        return client

    def publish_once(self, messages: list[OutMessage], timeout_s: float = 10.0) -> list[str]:
        """Publish messages now, outside the delivery loop (`edge deadletter replay`): per message, '' when
        the broker acknowledged it, else why not (edge.sinks.mqtt_client.publish_once)."""
        return publish_once(self.cfg, messages, timeout_s)

    def run(self, stop: threading.Event) -> None:
        """Deliver until `stop` is set."""
        backlog = self._backlog_factory()
        backoff = Backoff(self.cfg.mqtt.reconnect_min_s, self.cfg.mqtt.reconnect_max_s)
        delivery = self._delivery
        while not stop.is_set():
            self._link_ok = False
            delivery.reset()
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
            if delivery.refusal and not stop.is_set():
                ended, self.stats.last_error = self.stats.last_error, f"refused a message: {delivery.refusal}"
                delay = delivery.refused_backoff.next()
                if delivery.refused:
                    log.error("Upstream %s (%s) refused a message: %s. Nothing is released from the buffer;"
                              " fix the broker's configuration (ACL, maximum packet size, quotas) or this"
                              " upstream's topics and max_message_bytes. Retrying in %.1f s.", self.name,
                              self.cfg.mqtt.url, delivery.refusal, delay, extra={"upstream": self.name})
                else:
                    log.warning("Upstream %s (%s) still refuses messages (%s; last: %s); retrying in %.1f s.",
                                self.name, self.cfg.mqtt.url, ended, delivery.refusal, delay,
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
        self._delivery.run(client, backlog, stop, self._linked)
