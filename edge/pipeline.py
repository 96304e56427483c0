"""Composition root: builds the source, decoders, buffer, formats and sinks from config and runs them.

Threads: one for the ChirpStack source (receive → parse → decode → commit → acknowledge), one per
upstream (read → format → publish → advance). They share nothing but the SQLite file; the only
in-memory signal is a per-sink Event set after each commit so idle sinks wake at once.

Poison uplinks: the source thread notes which uplink it is decoding (`Pipeline.decoding`, one
attribute store). If a decoder hangs on it, the service quarantines that uplink (edge/quarantine.py)
before the watchdog restarts us; when the broker redelivers it, it is stored raw with a decode
error instead of being decoded again, so one bad payload cannot keep the gateway in a restart loop.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from edge import quarantine
from edge.buffer import health as health_store
from edge.buffer.store import Batch, Buffer, Gap, NewUplink, is_disk_full, open_writer
from edge.config import Config, HttpUpstreamConfig, UpstreamConfig
from edge.decoding.base import Decoder
from edge.decoding.catalogue import CatalogueIndex
from edge.decoding.fieldmap import default_index
from edge.decoding.registry import (
    NO_HINTS,
    PROFILE_JS,
    CoolDown,
    Decoded,
    DecoderRegistry,
    DeviceHints,
    Rule,
)
from edge.device_cache import DeviceCache
from edge.downlinks import CommandRelay
from edge.errors import EdgeError, StorageFull
from edge.formats import health as health_format
from edge.formats import senml
from edge.formats.share import ShareFilter
from edge.health import HealthTracker
from edge.health_state import DeviceHealth, Notice
from edge.model import ENDPOINT, DecodeStatus, DeviceEvent, Entry, Malformed, Uplink, radio_json, readings_json
from edge.plugins import load_decoders
from edge.sinks.base import Backlog, Formatter, OutMessage
from edge.sinks.mqtt import MqttSink
from edge.sinks.topic import fields as topic_fields

if TYPE_CHECKING:
    from edge.sinks.http import HttpSink
from edge.sources.chirpstack_events import parse
from edge.sources.chirpstack_mqtt import ChirpStackSource, Message

log = logging.getLogger(__name__)

# How many recent uplink ids are remembered to drop duplicates. Redeliveries after a crash are
# bounded by the broker's in-flight window, far below this.
DEDUP_WINDOW = 8192
# How often sensor health stores every device's statistics (changes of state are stored at once).
HEALTH_SAVE_S = 300.0
_STATUS_COUNTER = {
    DecodeStatus.DECODED: "decoded",
    DecodeStatus.CHIRPSTACK: "chirpstack",
    DecodeStatus.UNDECODED: "undecoded",
    DecodeStatus.FAILED: "decode_failed",
}


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


# Errors a record's content (not the disk) causes while it is written: a string with a lone
# surrogate, an integer beyond 64 bits, a value JSON cannot hold.
_CONTENT_ERRORS = (TypeError, ValueError, OverflowError, sqlite3.InterfaceError, sqlite3.ProgrammingError,
                   sqlite3.DataError)
_MAX_KEPT_BYTES = 64 * 1024  # what a message that could not be handled keeps of its payload


def _reason(exc: BaseException) -> str:
    """An exception as a bounded one-line reason (its text may quote foreign data)."""
    try:
        text = f"{type(exc).__name__}: {exc}"
    except Exception:  # noqa: BLE001 - str() of a hostile argument may itself fail
        text = type(exc).__name__
    text = text.replace("\n", " ")
    return text if len(text) <= 512 else text[:512] + "..."


def _safe(text: str) -> str:
    """`text` with anything UTF-8 cannot encode (lone surrogates) replaced."""
    return text.encode("utf-8", "replace").decode("utf-8")


def _storable_text(*texts: str) -> None:
    """Raise UnicodeEncodeError (a ValueError) when one of `texts` cannot be stored as UTF-8."""
    for text in texts:
        text.encode("utf-8")


def _malformed(msg: Message, reason: str) -> Malformed:
    """A message kept raw (at most _MAX_KEPT_BYTES of it) with a bounded reason."""
    payload = msg.payload if isinstance(msg.payload, bytes) else b""
    if len(payload) > _MAX_KEPT_BYTES:
        reason += f" (payload of {len(payload)} bytes kept truncated)"
        payload = payload[:_MAX_KEPT_BYTES]
    return Malformed(msg.topic, payload, reason)


def _topic_fields(entry: Entry, edge_id: str) -> Mapping[str, str]:
    # Values from data, validated: a hostile id cannot pick or break the topic (docs/records.md).
    return topic_fields(entry.dev_eui, entry.application_id, entry.gateway_id, edge_id)


def _chunks(entries: list[Entry], max_bytes: int, link: bool) -> list[list[Entry]]:
    """Split one topic's entries into runs whose SenML pack stays under max_bytes."""
    out: list[list[Entry]] = []
    current: list[Entry] = []
    size = 2
    for e in entries:
        est = senml.section_size(e, link)
        if current and size + est > max_bytes:
            out.append(current)
            current, size = [], 2
        current.append(e)
        size += est
    if current:
        out.append(current)
    return out


def _split_readings(entry: Entry, max_bytes: int) -> list[Entry]:
    """An uplink too large for one pack, as parts that each repeat its id record (rare)."""
    readings = entry.readings
    if senml.section_size(entry, False) <= max_bytes or len(readings) < 2:
        return [entry]
    half = len(readings) // 2
    return [part for chunk in (readings[:half], readings[half:])
            for part in _split_readings(Entry(entry.id, entry.uplink_id, entry.dev_eui, entry.application_id,
                                              entry.gateway_id, entry.time, chunk, entry.radio), max_bytes)]


def make_formatter(up: UpstreamConfig, edge_id: str) -> Formatter:
    """The formatter of one upstream: groups entries by topic and packs them (senml.py).

    Consecutive uplinks of one device share a pack while a backlog drains; a pack stays under
    `max_message_bytes` (a single uplink larger than that is split by readings).
    """
    content_type = senml.CONTENT_TYPES[up.format]
    limit = up.max_message_bytes

    def grouped(entries: Sequence[Entry], template: str) -> dict[str, list[Entry]]:
        groups: dict[str, list[Entry]] = {}
        fixed = "{" not in template
        for e in entries:
            topic = template if fixed else template.format(**_topic_fields(e, edge_id))
            groups.setdefault(topic, []).append(e)
        return groups

    def format_entries(entries: Sequence[Entry]) -> list[OutMessage]:
        out: list[OutMessage] = []
        with_readings = [part for e in entries if e.has_readings for part in _split_readings(e, limit)]
        for topic, group in grouped(with_readings, up.topic).items():
            # One uplink per message costs a message (and a PUBACK) per uplink; a packed backlog costs
            # one per max_message_bytes of a device's uplinks (docs/records.md).
            chunks = [[e] for e in group] if up.one_uplink_per_message else _chunks(group, limit, link=False)
            for chunk in chunks:
                out.append(OutMessage(topic, senml.pack(chunk, up.format), content_type))
        if up.link_topic:
            for topic, group in grouped(entries, up.link_topic).items():
                for chunk in _chunks(group, limit, link=True):
                    out.append(OutMessage(topic, senml.pack(chunk, up.format, link=True), content_type))
        return out

    return format_entries


def shared(formatter: Formatter, share: ShareFilter) -> Formatter:
    """The formatter behind an upstream's sharing rules (the formatter itself when there are none)."""
    if not share.active:
        return formatter
    return lambda entries: formatter(share.apply(entries))


def make_http_formatter(up: HttpUpstreamConfig) -> Formatter:
    """NGSI-LD upsert bodies, or one SenML pack per device, for an HTTP upstream."""
    if up.format == "ngsi-ld":
        from edge.formats import ngsi_ld, ngsi_ld_attributes

        n = up.ngsi_ld
        options = ngsi_ld.NgsiLdOptions(
            entity_type=n.entity_type or None, climate_type=n.climate_type, device_entity=n.device_entity,
            batch_size=n.batch_size, locations={dev: (lat, lon) for dev, lat, lon in n.locations},
            device_types=dict(n.device_types), attributes=ngsi_ld_attributes.attribute_table(n.attributes))
        return ngsi_ld.make_ngsi_ld_formatter(options)
    content_type = senml.CONTENT_TYPES[up.format]

    def format_entries(entries: Sequence[Entry]) -> list[OutMessage]:
        if up.one_uplink_per_message:
            return [OutMessage("", senml.pack([e], up.format), content_type) for e in entries if e.has_readings]
        by_device: dict[str, list[Entry]] = {}
        for e in entries:
            if e.has_readings:
                by_device.setdefault(e.dev_eui, []).append(e)
        return [OutMessage("", senml.pack(group, up.format), content_type) for group in by_device.values()]

    return format_entries


class BufferThinStore:
    """An upstream's thinning decisions in the buffer (the ThinStore of edge.formats.share)."""

    def __init__(self, buffer: Buffer, sink: str, readonly: bool = False) -> None:
        self.buffer = buffer
        self.sink = sink
        self.readonly = readonly  # `edge shares explain`: look, never write

    def load(self, dev_euis: Iterable[str]) -> dict[str, list[tuple[int, int]]]:
        """Stored decisions per device."""
        return self.buffer.thinning(self.sink, dev_euis)

    def save(self, redo_from: Mapping[str, int], kept: Sequence[tuple[str, int, int]]) -> int:
        """Store new decisions; the sink's cursor."""
        if self.readonly:
            return 0
        return self.buffer.save_thinning(self.sink, redo_from, kept)

    def received(self, ids: Sequence[int]) -> dict[int, float]:
        """Local receive times of entries (thinning clamps event times to a window around them)."""
        return self.buffer.received_times(ids)


class BufferBacklog:
    """The Backlog a sink sees: its own buffer connection and cursor, and its gap notices."""

    def __init__(self, buffer: Buffer, sink: str, notice_topic: str, edge_id: str, *, health_topic: str = "",
                 health_format: str = senml.JSON, allows: Callable[[str], bool] | None = None) -> None:
        self.buffer = buffer
        self.sink = sink
        self.notice_topic = notice_topic.format(edge_id=edge_id, dev_eui="", application="",
                                                application_id="", gateway_id="")
        self.edge_id = edge_id
        self._announced: dict[int, Gap] = {}  # gap notices as last read, by id
        # Health notices (edge/health.py) ride with gap notices under negative ids; the sinks
        # treat every notice alike. Acknowledgements may come out of order, the cursor may not.
        self.health_topic = health_topic
        self.health_format = health_format
        self.allows = allows
        self._health_out: list[int] = []  # health notice rows handed out, in order, not yet delivered
        self._health_acked: set[int] = set()
        buffer.register_sink(sink)

    def cursor(self) -> int:
        """The sink's durable cursor (a rewind asked for while the sink was not reading is taken up here)."""
        cursor = self.buffer.register_sink(self.sink)
        taken = self._take_rewind()
        return cursor if taken is None else taken

    def rewound(self) -> int | None:
        """The position `edge buffer rewind` moved this sink back to, once; None when there is no request."""
        return self._take_rewind()

    def _take_rewind(self) -> int | None:
        taken = self.buffer.take_rewind(self.sink)
        if taken is None:
            return None
        cursor, label = taken
        log.warning("Upstream %s rewound to %s; %d uplinks will be sent again (same uplink ids).", self.sink, label,
                    self.buffer.count_after(cursor), extra={"upstream": self.sink})
        return cursor

    def read(self, after_id: int, limit: int) -> list[Entry]:
        """Entries after `after_id`."""
        return self.buffer.read(after_id, limit)

    def read_grouped(self, after_id: int, limit: int) -> tuple[int, int, Iterator[list[Entry]]]:
        """A window of entries after `after_id`, grouped by device."""
        return self.buffer.read_grouped(after_id, limit)

    def advance(self, upto_id: int, delivered: int) -> None:
        """Persist delivery progress; on a full disk it stays in memory until a later write fits.

        The sink keeps its position in memory, so a cursor write that does not fit costs at most
        a re-send after a restart (receivers drop repeats by id), never a stopped upstream.
        """
        try:
            self.buffer.advance(self.sink, upto_id, delivered)
        except sqlite3.OperationalError as exc:
            if not is_disk_full(exc):
                raise
            log.warning("The disk holding the buffer is full: could not record upstream %s's progress (id %d);"
                        " it is kept in memory.", self.sink, upto_id, extra={"upstream": self.sink})

    def notices(self) -> list[tuple[int, OutMessage]]:
        """Gap notices as JSON messages (docs/records.md, "Gap notices"), then health notices (docs/health.md)."""
        return self._gap_notices() + self._health_notices()

    def _health_notices(self) -> list[tuple[int, OutMessage]]:
        if not self.health_topic:
            return []
        out: list[tuple[int, OutMessage]] = []
        self._health_out = []
        for row_id, dev_eui, body in health_store.pending(self.buffer.db, self.sink):
            self._health_out.append(row_id)
            if self.allows is not None and not self.allows(dev_eui):
                self._health_acked.add(row_id)  # not shared with this upstream: nothing to send
                continue
            topic = self.health_topic if self.health_topic == ENDPOINT else self.health_topic.format(
                edge_id=self.edge_id, dev_eui=dev_eui, application="", application_id="", gateway_id="")
            payload, content_type = health_format.encode(body, self.health_format)
            out.append((-row_id, OutMessage(topic, payload, content_type)))
        self._advance_health()
        return out

    def _advance_health(self) -> None:
        done = 0
        while self._health_out and self._health_out[0] in self._health_acked:
            done = self._health_out.pop(0)
            self._health_acked.discard(done)
        if done:
            try:
                health_store.delivered(self.buffer.db, self.sink, done)
            except sqlite3.OperationalError as exc:
                if not is_disk_full(exc):
                    raise

    def _gap_notices(self) -> list[tuple[int, OutMessage]]:
        out = []
        self._announced = {}
        for gap in self.buffer.gaps(self.sink):
            self._announced[gap.id] = gap
            body: dict[str, Any] = {"type": "gap", "edge_id": self.edge_id, "upstream": self.sink,
                                    "dropped": gap.count, "first_time": gap.first_time,
                                    "last_time": gap.last_time, "reason": "buffer full"}
            out.append((gap.id, OutMessage(self.notice_topic, orjson.dumps(body), "application/json")))
        return out

    def notice_delivered(self, notice_id: int) -> None:
        """Forget a delivered notice (on a full disk a gap notice may be sent again later)."""
        if notice_id < 0:
            self._health_acked.add(-notice_id)
            self._advance_health()
            return
        try:
            self.buffer.gap_delivered(notice_id, self._announced.get(notice_id))
        except sqlite3.OperationalError as exc:
            if not is_disk_full(exc):
                raise


def build_registry(cfg: Config, decoders: Sequence[Decoder] | None = None) -> DecoderRegistry:
    """The decoder registry the config asks for: built-ins, allowed plugins, rules."""
    if decoders is None:
        loaded = load_decoders(cfg.decoding.plugins_allow, cfg.decoding.plugins_block)
        decoders = [info.decoder for info in loaded.decoders]
        decoders += js_codecs(cfg, decoders)
    return DecoderRegistry(
        decoders,
        rules=[Rule(r.decoder, frozenset(r.dev_eui), frozenset(r.device_profile), frozenset(r.application))
               for r in cfg.decoding.rules],
        use_object=cfg.decoding.use_chirpstack_object,
        tag=cfg.decoding.tag,
        js_time_limit_s=cfg.decoding.js_time_limit_ms / 1000,
        js_memory_limit=cfg.decoding.js_memory_limit_mb << 20,
        catalogue=CatalogueIndex.open_for(cfg.buffer.path),  # what `edge codecs import` read, if anything
        cooldown=CoolDown(slow_s=cfg.decoding.js_time_limit_ms / 1000, after=cfg.decoding.cooldown_timeouts,
                          window_s=cfg.decoding.cooldown_window_s, rest_s=cfg.decoding.cooldown_s),
        object_maps=cfg.decoding.object_maps,
        maps=default_index(Path(p) for p in cfg.decoding.map_paths) if cfg.decoding.map_paths else None,
    )


def js_codecs(cfg: Config, natives: Sequence[Decoder]) -> list[Decoder]:
    """The TTN codec YAMLs named in `decoding.codec_paths`, each run by its own JavaScript codec.

    Each is normalised by the field map of its codec id (`ttn:<vendor>/<stem>`); a native decoder's
    map that lists the same TTN codec serves it too, since both return the same `data`. Without a
    map the codec's keys pass through unit-less and are counted as unmapped.
    """
    if not cfg.decoding.codec_paths:
        return []
    from edge.decoding.examples import codec_files
    from edge.decoding.js.codec import JsCodecDecoder
    from edge.decoding.js.runtime import JsLimits

    limits = JsLimits(time_limit=cfg.decoding.js_time_limit_ms / 1000,
                      memory_limit=cfg.decoding.js_memory_limit_mb << 20)
    found: list[Decoder] = []
    for path in codec_files(Path(p) for p in cfg.decoding.codec_paths):
        try:
            found.append(JsCodecDecoder.from_yaml(path, limits=limits))
        except EdgeError as exc:
            log.error("JS codec %s cannot be used: %s", path, exc)
    return found


def redecode(cfg: Config, *, dev_eui: str | None = None, decoder: str | None = None, since: float | None = None,
             until: float | None = None, everything: bool = False, dry_run: bool = False,
             registry: DecoderRegistry | None = None) -> dict[str, int]:
    """Re-run the current decoders over stored raw uplinks and queue the new readings upstream.

    By default only uplinks that failed to decode or had no decoder are taken; `everything` takes
    all matching ones. Each re-decoded uplink is stored as a new row (so every upstream's cursor
    reaches it and sends it, under the same uplink id) and the old row is marked superseded in the
    same transaction. Safe while `edge run` is running: SQLite serialises the writers. Quarantined
    uplinks (a decoder hung on them) that now decode leave the quarantine file.
    """
    registry = registry or build_registry(cfg)
    held_path = quarantine.path_for(cfg.buffer.path)
    held = quarantine.load(held_path) if held_path.exists() else {}
    buffer = Buffer(cfg.buffer.path, max_bytes=int(cfg.buffer.max_size_mb * 1024 * 1024))
    # The device registry cache (tags, variables, profile tags and codec) decides the decoder as in
    # `edge run`; read from the buffer file, so it works with ChirpStack's API down.
    devices = DeviceCache(cfg.chirpstack, cfg.buffer.path) if cfg.chirpstack.api_url else None
    totals = {name: 0 for name in ("seen", *_STATUS_COUNTER.values())}
    statuses = None if everything else (DecodeStatus.FAILED, DecodeStatus.UNDECODED)
    try:
        for rows in buffer.raw_uplinks(dev_eui=dev_eui, decoder=decoder, since=since, until=until,
                                       statuses=statuses, upto=buffer.last_id()):
            batch = Batch()
            for row_id, topic, payload, received in rows:
                event = parse(topic, payload, received, cfg.chirpstack.max_payload_bytes)
                if not isinstance(event, Uplink):
                    continue
                hints = devices.hints(event.device.dev_eui) if devices is not None else NO_HINTS
                if event.uplink_id in held:
                    log.warning("Decoding uplink %s of device %s, which decoder %s hung on before; if this does not"
                                " return, that decoder is not fixed yet (Ctrl-C stops).", event.uplink_id,
                                event.device.dev_eui, held[event.uplink_id].decoder)
                decoded = registry.decode(event, hints)
                totals["seen"] += 1
                totals[_STATUS_COUNTER[decoded.status]] += 1
                if decoded.status in (DecodeStatus.FAILED, DecodeStatus.UNDECODED) and not everything:
                    continue  # nothing new to send; keep the row as it is
                batch.uplinks.append(NewUplink(event, topic, payload, received, decoded.status, decoded.decoder,
                                               decoded.error, decoded.readings))
                batch.supersedes.append(row_id)
            batch.count("redecoded", len(batch.uplinks))
            if batch.uplinks and not dry_run:
                buffer.append(batch)
                fixed = [u.uplink.uplink_id for u in batch.uplinks
                         if u.uplink.uplink_id in held and u.status in (DecodeStatus.DECODED, DecodeStatus.CHIRPSTACK)]
                if fixed:
                    quarantine.remove(held_path, fixed)
    finally:
        buffer.close()
    return totals


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
        self.health: HealthTracker | None = None
        self._health_conn: Buffer | None = None  # the health round's own connection (its thread's)
        self._health_saved = time.time()
        if cfg.health.enabled:
            stored = health_store.load_states(self.buffer.db)
            self.health = HealthTracker(cfg.health, {d: DeviceHealth.from_dict(v) for d, v in stored.items()})
            health_store.start_at_newest(self.buffer.db, [u.name for u in cfg.upstreams]
                                         + [h.name for h in cfg.http_upstreams if h.format == "ngsi-ld"])
        self.sinks: list[MqttSink | HttpSink] = []
        # Downlink commands from destinations (issue #4/#6): only when some upstream enables them.
        self.commands = (CommandRelay(cfg.chirpstack, lambda: Buffer(cfg.buffer.path, max_bytes=self.max_bytes))
                         if any(u.command_topic for u in cfg.upstreams) else None)
        for up in cfg.upstreams:
            share = ShareFilter(up.share)
            formatter = make_formatter(up if up.share.radio else replace(up, link_topic=""), cfg.edge_id)
            on_command = None
            if self.commands is not None and up.command_topic:
                on_command = self.commands.handler(up.name, frozenset(up.command_devices), share.allows_device,
                                                   up.command_max_age_s, up.command_max_per_hour)
            self.sinks.append(MqttSink(up, self._backlog_factory(up.name, up.notice_topic, share, up),
                                       shared(formatter, share), threading.Event(), on_command,
                                       up.command_topic.replace("{edge_id}", cfg.edge_id),
                                       dead_letter=self._dead_letter_writer(up.name, "MQTT")))
        for http in cfg.http_upstreams:
            # Imported here: httpx costs memory on gateways that only publish over MQTT.
            from edge.sinks.http import HttpSink

            share = ShareFilter(http.share)
            self.sinks.append(HttpSink(http, self._backlog_factory(http.name, "", share, http=http),
                                       shared(make_http_formatter(http), share), threading.Event(),
                                       dead_letter=self._dead_letter_writer(http.name, "HTTP")))
        self.commits = 0
        self.failed = False
        self.on_commit: Callable[[], None] | None = None

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

    def _backlog_factory(self, name: str, notice_topic: str, share: ShareFilter,
                         up: UpstreamConfig | None = None, http: HttpUpstreamConfig | None = None
                         ) -> Callable[[], Backlog]:
        # Health notices: SenML on an MQTT upstream's health topic; the Device entity's deviceState
        # at an NGSI-LD upstream's own endpoint (docs/health.md).
        health_topic, health_fmt = "", senml.JSON
        if self.health is not None and up is not None:
            health_topic, health_fmt = up.health_topic, up.format
        elif self.health is not None and http is not None and http.format == health_format.NGSI_LD:
            health_topic, health_fmt = ENDPOINT, health_format.NGSI_LD

        def factory() -> Backlog:
            # NORMAL: a lost cursor update after power loss only re-sends delivered records.
            conn = Buffer(self.cfg.buffer.path, max_bytes=self.max_bytes, synchronous="NORMAL")
            share.lookup = conn.device_meta  # runs on the sink's thread, like the connection
            share.store = BufferThinStore(conn, name)
            return BufferBacklog(conn, name, notice_topic, self.cfg.edge_id, health_topic=health_topic,
                                 health_format=health_fmt, allows=share.allows_device)

        return factory

    def _dead_letter_writer(self, sink: str, kind: str) -> Callable[[OutMessage, int, str], None]:
        conn: list[Buffer] = []

        def write(message: OutMessage, status: int, detail: str) -> None:
            if not conn:  # opened lazily, on the sink's own thread
                conn.append(Buffer(self.cfg.buffer.path, max_bytes=self.max_bytes))
            dropped = conn[0].add_dead_letter(sink, status, message.content_type, message.topic, message.payload,
                                              detail)
            if kind == "HTTP" and status:
                log.error("Upstream %s rejected a message (HTTP %d); kept as a dead letter: %s", sink, status, detail)
            else:
                log.error("Upstream %s: a message could not be published (%s); kept as a dead letter"
                          " (`edge deadletter list`): %s", sink, f"reason {status:#04x}" if status else "refused"
                          " before sending", detail, extra={"upstream": sink})
            if dropped:
                log.error("Dead letters fill their share of the buffer; dropped the %d oldest. Fix the upstream"
                          " and replay (`edge deadletter replay`).", dropped, extra={"count": dropped})

        return write

    def handle(self, messages: list[Message]) -> None:
        """Parse, drop duplicates, decode and commit one batch (runs on the source thread).

        One message can only ever affect itself: whatever goes wrong while parsing, decoding or
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
                self._add_malformed(batch, _malformed(msg, f"not handled: {_reason(exc)}"), msg.received)
        try:
            self._store(batch)
        except _CONTENT_ERRORS as exc:
            # Something in one record cannot be written (a string SQLite or JSON refuses): set it
            # aside and commit the rest, rather than failing (and redelivering) the batch forever.
            log.warning("A record of this batch could not be stored (%s); it is kept raw instead.", _reason(exc))
            self._scrub(batch)
            self._store(batch)
        self.commits += 1
        for uplink in batch.uplinks:
            self.seen.add(uplink.uplink.uplink_id)
        if self.health is not None:  # committed uplinks only: a few dictionary updates each, no query
            self.health.observe_all(batch.uplinks)
        if released:
            self._release(released)
        if self.buffer.used_bytes() > self.buffer.max_bytes:  # the bound in force, disk included
            try:
                self.buffer.enforce_size()
            except sqlite3.OperationalError as exc:
                # The batch is committed; the next batch makes room the full-disk way.
                if not is_disk_full(exc):
                    raise
        for sink in self.sinks:
            sink.wake.set()
        if self.on_commit is not None:
            self.on_commit()

    def _health_loop(self, stop: threading.Event) -> None:
        """Judge silence and store changed states with their notices, every `health.check_interval_s`."""
        health = self.health
        assert health is not None
        self._health_conn = Buffer(self.cfg.buffer.path, max_bytes=self.max_bytes)
        self.health_heartbeat = time.monotonic()
        listening_since: float | None = None  # the source's current connection to ChirpStack's broker
        try:
            while True:
                now = time.time()
                if not self.source.connected.is_set():
                    listening_since = None
                elif listening_since is None:
                    listening_since = now
                self.health_round(now, listening_since)
                self.health_heartbeat = time.monotonic()
                if stop.wait(self.cfg.health.check_interval_s):
                    break
            self.health_round(time.time(), None)  # what changed since the last round, at shutdown
        finally:
            self._health_conn.close()

    def health_round(self, now: float, listening_since: float | None) -> None:
        """One round of sensor health: judge silence and fresh readings, store changes with their notices."""
        health = self.health
        assert health is not None
        if self._health_conn is None:
            self._health_conn = Buffer(self.cfg.buffer.path, max_bytes=self.max_bytes)
        health.check(now, self.devices.known() if self.devices is not None else (), listening_since)
        # Every device's statistics only every few minutes (and at shutdown); changes every round.
        everything = listening_since is None or now - self._health_saved >= HEALTH_SAVE_S
        changed, notices = health.take(now, everything)
        if everything:
            self._health_saved = now
        try:
            health_store.save(self._health_conn.db, [(d.dev_eui, d.state, d.changed_at, d.data) for d in changed],
                              [(n.id, n.dev_eui, n.time, _notice_body(n)) for n in notices])
        except sqlite3.OperationalError as exc:
            health.give_back(changed, notices)
            if not is_disk_full(exc):
                raise
        if notices:
            log.info("%d device health change(s): %s", len(notices),
                     ", ".join(f"{n.dev_eui} {n.previous or 'new'}->{n.state}"
                               f"{' (' + ','.join(n.problems) + ')' if n.problems else ''}"
                               for n in notices[:5]), extra={"count": len(notices)})
            for sink in self.sinks:
                sink.wake.set()

    def _take(self, msg: Message, batch: Batch, fresh: set[str], released: list[str]) -> None:
        """Parse and decode one message into the batch."""
        event = parse(msg.topic, msg.payload, msg.received, self.cfg.chirpstack.max_payload_bytes)
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
            batch.count(_STATUS_COUNTER[decoded.status])
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
            self._add_malformed(batch, event, msg.received)

    @staticmethod
    def _add_malformed(batch: Batch, event: Malformed, received: float) -> None:
        batch.count("malformed")
        batch.malformed.append((event, received))
        log.warning("Malformed message on %s stored for inspection: %s", event.topic[:200], event.error,
                    extra={"topic": event.topic[:200]})

    def _scrub(self, batch: Batch) -> None:
        """Make every record of a batch storable: offenders become failed decodes or malformed messages."""
        uplinks = []
        for new in batch.uplinks:
            try:
                readings_json(new.readings)
                radio_json(new.uplink.radio)
                orjson.dumps(new.uplink.device.tags)
                _storable_text(new.uplink.uplink_id, new.uplink.device.dev_eui, new.uplink.device.application_id,
                               new.uplink.device.device_name, new.uplink.device.application_name,
                               new.uplink.device.device_profile_name, new.uplink.device.device_profile_id,
                               new.decoder, new.error, new.topic)
                uplinks.append(new)
            except _CONTENT_ERRORS as exc:
                batch.count(_STATUS_COUNTER[new.status], -1)  # counted as malformed instead
                self._add_malformed(batch, _malformed(Message(_safe(new.topic), new.payload, new.received),
                                                      f"could not be stored: {_reason(exc)}"), new.received)
        batch.uplinks = uplinks
        events = []
        for event, topic, payload in batch.events:
            try:
                _storable_text(event.kind, event.dev_eui, event.application_id, event.summary, event.event_id, topic)
                events.append((event, topic, payload))
            except _CONTENT_ERRORS as exc:
                batch.count("events", -1)
                self._add_malformed(batch, _malformed(Message(_safe(topic), payload, event.time),
                                                      f"could not be stored: {_reason(exc)}"), event.time)
        batch.events = events
        batch.malformed = [(Malformed(_safe(m.topic), m.payload, _safe(m.error)), received)
                           for m, received in batch.malformed]

    def _store(self, batch: Batch) -> None:
        """Commit a batch, making room by the size policy first when the bound or the disk requires it.

        Raises:
            StorageFull: the disk is so full that not even dropping the oldest uplinks made room;
                the batch stays unacknowledged at the broker and the source retries after a backoff.
        """
        buf = self.buffer
        was_short = buf.max_bytes < buf.limit_bytes
        is_short = buf.fit_to_disk() < buf.limit_bytes
        if is_short and not was_short:
            log.error("The disk holding the buffer is almost full: the buffer is now bounded at %.1f MB instead"
                      " of buffer.max_size_mb (%.0f MB); past that the oldest uplinks are dropped. Free space"
                      " on the disk or lower buffer.max_size_mb.", buf.max_bytes / 1e6, buf.limit_bytes / 1e6)
        elif was_short and not is_short:
            log.warning("The disk holding the buffer has room again; the buffer is bounded by buffer.max_size_mb"
                        " (%.0f MB) again.", buf.limit_bytes / 1e6)
        # About what the batch takes in the database (raw message, records, indexes): room is made
        # before appending, so that freed pages are reused and the file does not grow.
        reserve = sum(2 * len(u.payload) + 512 for u in batch.uplinks) if is_short else 0
        try:
            if self.buffer.used_bytes() + reserve > self.buffer.max_bytes:
                self.buffer.enforce_size(reserve)
            self.buffer.append(batch)
            return
        except sqlite3.OperationalError as exc:
            if not is_disk_full(exc):
                raise
        # Disk (or quota) full: make room by the size policy, oldest first, counted, with gap
        # notices, a growing share at a time. Every step checkpoints and truncates the WAL first,
        # because on a full disk even a DELETE needs WAL space.
        dropped, fraction = 0, 0.05
        for _ in range(6):
            try:
                dropped += self.buffer.make_room(fraction)
                self.buffer.append(batch)
                break
            except sqlite3.OperationalError as again:
                if not is_disk_full(again):
                    raise
                fraction = min(0.5, fraction * 2)
        else:
            raise StorageFull(f"the disk holding {self.cfg.buffer.path} is full and dropping the oldest"
                              f" uplinks ({dropped}) did not make room")
        log.error("The disk holding the buffer is full; dropped the %d oldest uplinks to keep"
                  " receiving. Free space or lower buffer.max_size_mb.", dropped, extra={"count": dropped})

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
        threads = [threading.Thread(target=self._guard, args=(self.source.run, stop, "source"),
                                    name="source", daemon=True)]
        for sink in self.sinks:
            threads.append(threading.Thread(target=self._guard, args=(sink.run, stop, f"upstream {sink.name}"),
                                            name=f"sink-{sink.name}", daemon=True))
        if self.devices is not None:
            threads.append(threading.Thread(target=self._guard, args=(self.devices.run, stop, "device registry"),
                                            name="device-registry", daemon=True))
        if self.commands is not None:
            threads.append(threading.Thread(target=self._guard, args=(self.commands.run, stop, "downlink commands"),
                                            name="downlink-commands", daemon=True))
        if self.health is not None:
            threads.append(threading.Thread(target=self._guard, args=(self._health_loop, stop, "sensor health"),
                                            name="sensor-health", daemon=True))
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

    def _guard(self, target: Callable[[threading.Event], None], stop: threading.Event, what: str) -> None:
        # A thread that dies must not leave a half-working gateway: stop everything, so systemd
        # (Restart=on-failure) restarts the whole process from the durable buffer.
        try:
            target(stop)
        except Exception:
            log.exception("The %s thread failed; stopping lorawan-edge so it restarts cleanly.", what)
            self.failed = True
            stop.set()


def _notice_body(notice: Notice) -> dict[str, Any]:
    """A health notice as stored and formatted (edge.formats.health)."""
    return {"id": notice.id, "dev_eui": notice.dev_eui, "time": notice.time, "state": notice.state,
            "previous": notice.previous, "problems": list(notice.problems), "summary": notice.summary}


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll `predicate` until true or `timeout` seconds passed (tools and tests)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
