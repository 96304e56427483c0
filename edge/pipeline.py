"""Composition root: builds the source, decoders, buffer, formats and sinks from config and runs them.

Threads: one for the ChirpStack source (receive → parse → decode → commit → acknowledge), one per
upstream (read → format → publish → advance). They share nothing but the buffer file; the only
in-memory signal is a per-sink Event set after each commit so idle sinks wake at once.

Poison uplinks: the source thread notes which uplink it is decoding (`Pipeline.decoding`, one
attribute store). If a decoder hangs on it, the service quarantines that uplink (edge/quarantine.py)
before the watchdog restarts us; when the broker redelivers it, it is stored raw with a decode
error instead of being decoded again, so one bad payload cannot keep the gateway in a restart loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING

from edge import quarantine
from edge.buffer import Batch, Buffer, NewUplink, open_writer, policy
from edge.buffer.adapters import BufferBacklog, BufferThinStore, DeadLetterWriter
from edge.config import Config, HttpUpstreamConfig, ShareRules, UpstreamConfig
from edge.decoders import build_registry
from edge.decoding.base import Decoder
from edge.decoding.registry import NO_HINTS, PROFILE_JS, Decoded, DeviceHints
from edge.device_cache import DeviceCache
from edge.downlinks import CommandRelay
from edge.formats import health as health_format
from edge.formats import outbound
from edge.formats.share import ShareFilter
from edge.health import HealthTracker
from edge.health_rounds import HealthRounds, load_tracker
from edge.model import ENDPOINT, DecodeStatus, DeviceEvent, Formatter, Uplink
from edge.sinks.base import Backlog
from edge.sinks.mqtt import MqttSink
from edge.sinks.topic import fields as topic_fields
from edge.sources.chirpstack_mqtt import ChirpStackSource, Message

if TYPE_CHECKING:
    from edge.sinks.http import HttpSink  # imported only when an HTTP upstream is configured (httpx is heavy)

log = logging.getLogger(__name__)

# How many recent uplink ids are remembered to drop duplicates. Redeliveries after a crash are
# bounded by the broker's in-flight window, far below this.
DEDUP_WINDOW = 8192


class RecentIds:
    """A bounded set of the most recent uplink ids (oldest forgotten first)."""

    def __init__(self, capacity: int, seed: Sequence[str] = ()) -> None:
        self.capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()
        for uplink_id in reversed(seed):
            self.add(uplink_id)

    def __contains__(self, uplink_id: str) -> bool:
        return uplink_id in self._ids

    def add(self, uplink_id: str) -> None:
        """Remember an id, forgetting the oldest beyond capacity."""
        self._ids[uplink_id] = None
        self._ids.move_to_end(uplink_id)
        if len(self._ids) > self.capacity:
            self._ids.popitem(last=False)

    def discard(self, uplink_id: str) -> None:
        """Forget an id (its batch was not committed)."""
        self._ids.pop(uplink_id, None)


def make_formatter(up: UpstreamConfig, edge_id: str) -> Formatter:
    """An MQTT upstream's formatter (edge.formats.outbound), its topics rendered from validated values."""
    return outbound.make_formatter(up, edge_id, topic_fields)


class Pipeline:
    """Everything `edge run` runs."""

    def __init__(self, cfg: Config, decoders: Sequence[Decoder] | None = None) -> None:
        self.cfg = cfg
        self.registry = build_registry(cfg, decoders)
        self.max_bytes = int(cfg.buffer.max_size_mb * 1024 * 1024)
        self.buffer = open_writer(cfg.buffer.path, self.max_bytes)
        self.seen = RecentIds(DEDUP_WINDOW, self.buffer.recent_uplink_ids(DEDUP_WINDOW))
        # The uplink being decoded right now and its device hints, or None: set and cleared around
        # each decode on the source thread; the service reads it when that thread stalls.
        self.decoding: tuple[Uplink, DeviceHints] | None = None
        self.quarantine_path = quarantine.path_for(cfg.buffer.path)
        self.quarantined = self._load_quarantine()
        # The ChirpStack device registry cache (variables, profile codecs), when an API is configured.
        self.devices = DeviceCache(cfg.chirpstack, cfg.buffer.path) if cfg.chirpstack.api_url else None
        self._warned: set[tuple[str, str]] = set()
        # A buffer that has received before means the broker should hold our session: if it does not,
        # events queued while we were down may be gone, and the source says so.
        self.source = ChirpStackSource(cfg.chirpstack, self.handle, batch_max=cfg.buffer.batch_max,
                                       batch_ms=cfg.buffer.batch_ms,
                                       expect_session=self.buffer.counters().get("received", 0) > 0)
        # Sensor health (edge/health.py): states load from the buffer, so a restart judges on.
        self.health: HealthTracker | None = None if not cfg.health.enabled else load_tracker(
            cfg.health, self.buffer, [u.name for u in cfg.upstreams]
            + [h.name for h in cfg.http_upstreams if h.format == "ngsi-ld"])
        self.health_rounds = None if self.health is None else HealthRounds(
            self.health, cfg.health.check_interval_s, lambda: Buffer(cfg.buffer.path, max_bytes=self.max_bytes),
            self.devices.known if self.devices is not None else lambda: (), self.source.connected, self._wake_sinks)
        # Downlink commands from destinations (issue #4/#6): only when some upstream enables them.
        self.commands = (CommandRelay(cfg.chirpstack, lambda: Buffer(cfg.buffer.path, max_bytes=self.max_bytes))
                         if any(u.command_topic for u in cfg.upstreams) else None)
        self.sinks: list[MqttSink | HttpSink] = [*map(self._mqtt_sink, cfg.upstreams),
                                                 *map(self._http_sink, cfg.http_upstreams)]
        self.commits = 0
        self.failed = False
        self.on_commit: Callable[[], None] | None = None

    def _mqtt_sink(self, up: UpstreamConfig) -> MqttSink:
        # Health notices: SenML on the upstream's health topic (docs/health.md).
        backlog, share = self._backlog(up.name, up.share, up.notice_topic, up.health_topic, up.format)
        formatter = make_formatter(up if up.share.radio else replace(up, link_topic=""), self.cfg.edge_id)
        on_command = None if self.commands is None or not up.command_topic else self.commands.handler(
            up.name, frozenset(up.command_devices), lambda dev_eui: share().allows_device(dev_eui),
            up.command_max_age_s, up.command_max_per_hour)
        return MqttSink(up, backlog, outbound.shared(formatter, share), threading.Event(), on_command,
                        up.command_topic.replace("{edge_id}", self.cfg.edge_id),
                        dead_letter=DeadLetterWriter(self.cfg.buffer.path, self.max_bytes, up.name, "MQTT"))

    def _http_sink(self, http: HttpUpstreamConfig) -> HttpSink:
        from edge.sinks.http import HttpSink  # here: httpx costs memory on gateways that only publish over MQTT

        # Health notices: the Device entity's deviceState at an NGSI-LD upstream's own endpoint.
        health_topic = ENDPOINT if http.format == health_format.NGSI_LD else ""
        backlog, share = self._backlog(http.name, http.share, "", health_topic, health_format.NGSI_LD)
        return HttpSink(http, backlog, outbound.shared(outbound.make_http_formatter(http), share), threading.Event(),
                        dead_letter=DeadLetterWriter(self.cfg.buffer.path, self.max_bytes, http.name, "HTTP"))

    def _backlog(self, name: str, rules: ShareRules, notice_topic: str, health_topic: str,
                 health_fmt: str) -> tuple[Callable[[], Backlog], Callable[[], ShareFilter]]:
        """An upstream's backlog factory, and its sharing rules in force.

        The factory opens the sink's own buffer connection on the sink's thread; from then on the
        sharing rules read device metadata and keep thinning decisions through it.
        """
        share = [ShareFilter(rules)]  # until then: the rules alone
        encode = partial(health_format.encode, fmt=health_fmt) if self.health is not None and health_topic else None

        def factory() -> Backlog:
            # NORMAL: a lost cursor update after power loss only re-sends delivered records.
            conn = Buffer(self.cfg.buffer.path, max_bytes=self.max_bytes, synchronous="NORMAL")
            share[0] = ShareFilter(rules, conn.device_meta, BufferThinStore(conn, name))
            return BufferBacklog(conn, name, notice_topic, self.cfg.edge_id, health_topic=health_topic,
                                 encode_health=encode, allows=lambda dev_eui: share[0].allows_device(dev_eui))

        return factory, lambda: share[0]

    def _load_quarantine(self) -> dict[str, quarantine.Quarantined]:
        """The quarantined uplinks still awaited from the broker; the file is pruned on the way."""
        if not self.quarantine_path.exists():
            return {}
        entries = quarantine.load(self.quarantine_path)  # without those older than MAX_AGE_S
        # Not stored raw, yet committed: a slow decoder finished before the restart, nothing to remind of.
        kept = {uid: e for uid, e in entries.items() if e.stored or uid not in self.seen}
        try:
            quarantine.save(self.quarantine_path, kept.values())
        except OSError as exc:
            log.warning("Could not rewrite the quarantine file %s: %s", self.quarantine_path, exc)
        pending = {uid: e for uid, e in kept.items() if not e.stored}
        if pending:
            log.warning("%d uplink(s) are quarantined because a decoder hung on them; when the broker redelivers"
                        " them they are stored raw, not decoded (%s).", len(pending), self.quarantine_path,
                        extra={"count": len(pending)})
        return pending

    def quarantine_hung(self) -> quarantine.Quarantined | None:
        """Quarantine the uplink the source thread is decoding, if any (the service calls this on a stall).

        Returns:
            The entry written to the quarantine file, or None when no decode is under way (the
            thread hangs elsewhere, e.g. in the disk, where a restart is the right cure).
        """
        current = self.decoding
        if current is None:
            return None
        uplink, hints = current
        decoder = self.registry.choose(uplink, hints)
        if decoder == PROFILE_JS:
            decoder = f"{PROFILE_JS}/{hints.profile_id}"
        entry = quarantine.Quarantined(uplink.uplink_id, uplink.device.dev_eui, decoder or "-", time.time())
        quarantine.add(self.quarantine_path, entry)
        self.quarantined[entry.uplink_id] = entry
        return entry

    def handle(self, messages: list[Message]) -> None:
        """Drop duplicates, decode and commit one batch of parsed messages (runs on the source thread).

        One message can only ever affect itself: whatever goes wrong while decoding or
        normalising it, it is kept (malformed, or raw as a failed decode, with the reason) and the
        rest of the batch is committed. Only a storage failure fails the batch (the broker then
        redelivers all of it), and uplink ids join the duplicate memory only once committed.
        """
        batch = Batch()
        batch.count("received", len(messages))
        fresh: set[str] = set()  # uplink ids of this batch, remembered once it is committed
        released: list[str] = []  # quarantined uplinks in this batch, let go once it is committed
        for msg in messages:
            try:
                self._take(msg, batch, fresh, released)
            except Exception as exc:  # noqa: BLE001 - a bug or a surprise costs this message only
                why = f"not handled: {policy.reason(exc)}"
                policy.add_malformed(batch, policy.kept_raw(msg.topic, msg.payload, why), msg.received)
        try:
            policy.store(self.buffer, batch)
        except policy.CONTENT_ERRORS as exc:
            # Something in one record cannot be written (a string SQLite or JSON refuses): set it
            # aside and commit the rest, rather than failing (and redelivering) the batch forever.
            log.warning("A record of this batch could not be stored (%s); it is kept raw instead.", policy.reason(exc))
            policy.scrub(batch)
            policy.store(self.buffer, batch)
        self.commits += 1
        for uplink in batch.uplinks:
            self.seen.add(uplink.uplink.uplink_id)
        if self.health is not None:  # committed uplinks only: a few dictionary updates each, no query
            self.health.observe_all(batch.uplinks)
        if released:
            self._release(released)
        if self.buffer.used_bytes() > self.buffer.max_bytes:  # the bound in force, disk included
            # The batch is committed; the next batch makes room the full-disk way.
            with policy.unless_disk_full():
                self.buffer.enforce_size()
        self._wake_sinks()
        if self.on_commit is not None:
            self.on_commit()

    def health_round(self, now: float, listening_since: float | None) -> None:
        """One round of sensor health (edge.health_rounds); the tools and tests call it directly."""
        assert self.health_rounds is not None
        self.health_rounds.round(now, listening_since)

    def _take(self, msg: Message, batch: Batch, fresh: set[str], released: list[str]) -> None:
        """Decode one parsed message into the batch."""
        event = msg.event
        if isinstance(event, Uplink):
            if event.uplink_id in self.seen or event.uplink_id in fresh:
                batch.count("duplicates")
                return
            hints = self.devices.hints(event.device.dev_eui) if self.devices is not None else NO_HINTS
            held = self.quarantined.get(event.uplink_id) if self.quarantined else None
            if held is None:
                self.decoding = (event, hints)
                try:
                    decoded = self.registry.decode(event, hints)
                finally:  # never left pointing at an uplink a later, unrelated stall would blame
                    self.decoding = None
            else:
                # A decoder hung on this very uplink before: keep it raw, do not run it again.
                decoded = Decoded(DecodeStatus.FAILED, [], held.decoder, held.error())
                released.append(event.uplink_id)
            fresh.add(event.uplink_id)
            batch.count(policy.STATUS_COUNTER[decoded.status])
            if decoded.unmapped:  # fields no map covered yet, per codec (`edge status`, metrics)
                batch.count(f"unmapped:{decoded.codec}", decoded.unmapped)
            if decoded.error:
                self._decode_failed(event, decoded.decoder, decoded.error)
            batch.uplinks.append(NewUplink(event, msg.topic, msg.payload, msg.received, decoded.status,
                                           decoded.decoder, decoded.error, decoded.readings))
        elif isinstance(event, DeviceEvent):
            batch.count("events")
            batch.events.append((event, msg.topic, msg.payload))
        else:
            policy.add_malformed(batch, event, msg.received)

    def _release(self, uplink_ids: list[str]) -> None:
        """Quarantined uplinks are committed raw: no longer awaited (the file keeps them as a reminder)."""
        for uplink_id in uplink_ids:
            self.quarantined.pop(uplink_id, None)
        try:
            quarantine.mark_stored(self.quarantine_path, uplink_ids)
        except OSError as exc:
            # Harmless: a later redelivery is dropped as a duplicate, and the entry ages out.
            log.warning("Could not update the quarantine file %s: %s", self.quarantine_path, exc)
        log.info("Stored %d quarantined uplink(s) raw without decoding; `edge redecode` decodes them once the"
                 " decoder is fixed.", len(uplink_ids), extra={"count": len(uplink_ids)})

    def _decode_failed(self, uplink: Uplink, decoder: str, error: str) -> None:
        key = (uplink.device.dev_eui, decoder)
        # Once per device and decoder at WARNING; every further failure is only counted.
        if key not in self._warned and len(self._warned) < 10000:
            self._warned.add(key)
            log.warning("Decoder %s failed for device %s (raw uplink kept for `edge redecode`): %s",
                        decoder, uplink.device.dev_eui, error,
                        extra={"dev_eui": uplink.device.dev_eui, "decoder": decoder})
        else:
            log.debug("Decoder %s failed for device %s: %s", decoder, uplink.device.dev_eui, error)

    def run(self, stop: threading.Event, ready: Callable[[], None] | None = None) -> None:
        """Run the source and every sink until `stop` is set, then drain and return."""
        # (what runs, what a failure log calls it, the thread's name)
        jobs: list[tuple[Callable[[threading.Event], None], str, str]] = [(self.source.run, "source", "source")]
        jobs += [(sink.run, f"upstream {sink.name}", f"sink-{sink.name}") for sink in self.sinks]
        if self.devices is not None:
            jobs.append((self.devices.run, "device registry", "device-registry"))
        if self.commands is not None:
            jobs.append((self.commands.run, "downlink commands", "downlink-commands"))
        if self.health_rounds is not None:
            jobs.append((self.health_rounds.run, "sensor health", "sensor-health"))
        threads = [threading.Thread(target=self._guard, args=(run, stop, what), name=name, daemon=True)
                   for run, what, name in jobs]
        for t in threads:
            t.start()
        log.info("lorawan-edge %s running: %d upstream(s), buffer %s.", self.cfg.edge_id, len(self.sinks),
                 self.cfg.buffer.path)
        if ready is not None:
            ready()
        while not stop.wait(1.0):
            pass
        for t in threads:
            t.join(timeout=10)
        self.buffer.close()

    def _wake_sinks(self) -> None:
        for sink in self.sinks:
            sink.wake.set()

    def _guard(self, target: Callable[[threading.Event], None], stop: threading.Event, what: str) -> None:
        # A thread that dies must not leave a half-working gateway: stop everything, so systemd
        # (Restart=on-failure) restarts the whole process from the durable buffer.
        try:
            target(stop)
        except Exception:
            log.exception("The %s thread failed; stopping lorawan-edge so it restarts cleanly.", what)
            self.failed = True
            stop.set()


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll `predicate` until true or `timeout` seconds passed (tools and tests)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
