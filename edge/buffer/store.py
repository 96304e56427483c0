"""SQLite store-and-forward: batched appends, per-sink progress, size bound with gap records.

Durability contract (docs/reliability.md): `append` returns only after the batch is committed
with synchronous=FULL in WAL mode, so whatever the source acknowledges afterwards survives a
crash or power cut. Sinks read in id order and move their own cursor only after delivery; a
cursor write may be lost on power loss (synchronous=NORMAL on sink connections), which at worst
re-sends records that receivers drop by id.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from edge.buffer import location
from edge.buffer.migrations import migrate
from edge.errors import StorageCorrupt, StorageError
from edge.model import (
    TRUSTED_FUTURE_S,
    DecodeStatus,
    DeviceEvent,
    Entry,
    Malformed,
    Reading,
    Uplink,
    control_time,
    radio_json,
    readings_json,
)

log = logging.getLogger(__name__)

# Free space kept on the buffer's filesystem (at least; 5 % of it up to 64 MiB on larger disks):
# a full WAL before its auto-checkpoint (1000 pages) plus a large batch, so a checkpoint and the
# deletes that make room always have somewhere to go.
DISK_HEADROOM = 6 << 20

# Windows up to this many uplinks are read with one range query (see read_grouped).
SMALL_WINDOW = 4096
_IN_SIZES = (1, 4, 16, 64, 256, 1000)
_IN_LISTS = {n: ",".join("?" * n) for n in _IN_SIZES}
_ENTRY_COLUMNS = "id, uplink_id, dev_eui, application_id, gateway_id, time, readings, radio"

COUNTERS = ("received", "duplicates", "decoded", "chirpstack", "undecoded", "decode_failed",
            "malformed", "events", "dropped", "redecoded")


@dataclass(slots=True)
class NewUplink:
    """An uplink to store, with the outcome of decoding it and the message it came in."""

    uplink: Uplink
    topic: str
    payload: bytes
    received: float
    status: int
    decoder: str
    error: str
    readings: Sequence[Reading]


@dataclass(slots=True)
class Batch:
    """Everything one commit writes: uplinks, device events, malformed messages, counter deltas."""

    uplinks: list[NewUplink] = field(default_factory=list)
    events: list[tuple[DeviceEvent, str, bytes]] = field(default_factory=list)
    malformed: list[tuple[Malformed, float]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    supersedes: list[int] = field(default_factory=list)  # rows this batch's uplinks re-decode

    def count(self, name: str, n: int = 1) -> None:
        """Add n to a counter in this batch."""
        self.counts[name] = self.counts.get(name, 0) + n

    def __len__(self) -> int:
        return len(self.uplinks) + len(self.events) + len(self.malformed)


@dataclass(frozen=True, slots=True)
class Gap:
    """Records dropped for one sink because the buffer was full."""

    id: int
    sink: str
    first_id: int
    last_id: int
    count: int
    first_time: float | None
    last_time: float | None


@dataclass(frozen=True, slots=True)
class Rewind:
    """What `Buffer.rewind` did for one sink."""

    sink: str
    cursor: int  # the sink's cursor now
    before: int  # its cursor before
    again: int  # uplinks delivered before that will be sent again
    pending: int  # uplinks after the new cursor that had not been delivered yet anyway
    first_time: float | None  # receive time of the oldest uplink it will be sent (None: nothing)
    oldest_time: float | None  # receive time of the oldest uplink held at all (None: the buffer is empty)
    held: int  # uplinks held at all
    dropped: int  # rows the size bound has dropped so far (all older than any held)


@dataclass(frozen=True, slots=True)
class Stored:
    """One stored uplink as `edge buffer list` shows it (readings and radio as stored SenML records)."""

    id: int
    uplink_id: str
    dev_eui: str
    application_id: str
    gateway_id: str
    time: float
    status: int
    decoder: str
    error: str | None
    readings: bytes
    radio: bytes
    topic: str | None = None  # the original ChirpStack message, when asked for
    message: bytes | None = None
    received: float | None = None


# Rows `edge redecode` replaced with a newer decode; interpolated into SQL (a constant, never input).
_SUPERSEDED = DecodeStatus.SUPERSEDED

# The share of the size bound (`buffer.max_size_mb`) dead letters may take; the oldest go beyond it.
DEAD_LETTER_SHARE = 0.1
# The same for malformed messages (kept for inspection, never sent anywhere), and what one row
# takes by that measure (its bytes and characters plus the row itself).
MALFORMED_SHARE = 0.05
_MALFORMED_SIZE = "length(payload) + length(error) + length(topic) + 64"


def is_disk_full(exc: sqlite3.Error) -> bool:
    """True for SQLITE_FULL: the disk (or the database's page limit) has no room for the write."""
    return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "database or disk is full" in str(exc)


def connect(path: str | Path, *, readonly: bool = False, synchronous: str = "FULL") -> sqlite3.Connection:
    """Open the buffer database with the settings this module relies on."""
    if readonly:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False)
    else:
        db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA busy_timeout = 10000")
    if not readonly:
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise StorageError(f"cannot switch {path} to WAL mode (got {mode})")
        # FULL on the writer: a commit is on disk before the source acknowledges the broker.
        db.execute(f"PRAGMA synchronous = {synchronous}")
        # Keep the WAL from growing without bound while sinks hold read transactions.
        db.execute("PRAGMA journal_size_limit = 67108864")
    db.execute("PRAGMA cache_size = -2048")  # 2 MiB per connection keeps RSS flat on a Pi
    return db


def open_writer(path: str | Path, max_bytes: int) -> Buffer:
    """The writer's connection, after making sure the file is sound.

    After an unclean shutdown (no clean-close marker) the file gets a `PRAGMA quick_check`. A file
    that is corrupt or truncated is moved aside (with its WAL) under `<name>.corrupt-<time>`, an
    ERROR tells the operator where, and a fresh buffer starts, so the gateway keeps receiving
    instead of crash-looping on a damaged file.
    """
    p = Path(path)
    blocked = location.problem(p)
    if blocked:
        raise StorageError(blocked)  # one clear line from `edge run`, not a traceback in a restart loop
    marker = p.with_name(p.name + ".clean")
    check = p.exists() and not marker.exists()
    try:
        buf = Buffer(p, max_bytes=max_bytes)
        if check:
            try:
                result = buf.db.execute("PRAGMA quick_check").fetchone()[0]
            except sqlite3.DatabaseError as exc:
                # Damage bad enough that the check itself stops ("database disk image is malformed").
                result = str(exc)
            if result != "ok":
                buf.db.close()
                raise StorageCorrupt(f"{p}: integrity check failed: {result}")
    except StorageCorrupt as exc:
        aside = p.with_name(f"{p.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(p) + suffix)
            if src.exists():
                src.rename(Path(str(aside) + suffix))
        log.error("The buffer %s is damaged (%s). It was moved to %s for inspection and a new, empty buffer"
                  " was started; uplinks not yet delivered from the old file are not sent automatically.",
                  p, exc, aside)
        buf = Buffer(p, max_bytes=max_bytes)
    marker.unlink(missing_ok=True)
    buf.clean_marker = marker
    return buf


class Buffer:
    """One connection to the buffer. Use one instance per thread."""

    clean_marker: Path | None = None  # set on the writer: written on a clean close

    def __init__(self, path: str | Path, *, max_bytes: int = 1 << 30, readonly: bool = False,
                 synchronous: str = "FULL") -> None:
        self.path = Path(path)
        self.limit_bytes = max_bytes  # buffer.max_size_mb, as configured
        self._malformed_bytes: int | None = None  # malformed rows' size (MALFORMED_SHARE), once summed
        self._malformed_warned = -1e9  # monotonic time of the last WARNING about that share
        self.max_bytes = max_bytes  # the bound in force: lower while the disk is short of space
        if not readonly:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not self.path.exists():
                # Created owner-only: the buffer holds every reading of the city's sensors.
                self.path.touch(mode=0o600)
        try:
            self.db = connect(self.path, readonly=readonly, synchronous=synchronous)
            if not readonly:
                migrate(self.db)
                self.db.execute("INSERT OR IGNORE INTO counters(name, value) VALUES "
                                + ",".join(f"('{c}', 0)" for c in COUNTERS))
        except sqlite3.DatabaseError as exc:
            if "malformed" in str(exc) or "not a database" in str(exc) or "corrupt" in str(exc):
                raise StorageCorrupt(f"{self.path}: {exc}") from exc
            raise StorageError(f"{self.path}: {exc}") from exc
        self.page_size = int(self.db.execute("PRAGMA page_size").fetchone()[0])
        self._default_page_cap = self._page_cap = int(self.db.execute("PRAGMA max_page_count").fetchone()[0])

    def close(self) -> None:
        """Close the connection (the writer also checkpoints and leaves its clean-close marker)."""
        if self.clean_marker is not None:
            try:
                self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                self.clean_marker.touch(mode=0o600)
            except (sqlite3.Error, OSError) as exc:
                log.warning("Could not checkpoint the buffer at shutdown: %s", exc)
        self.db.close()

    def fit_to_disk(self) -> int:
        """Bound the database by what the disk can still hold; returns the bound now in force.

        The file may grow only while the filesystem keeps `DISK_HEADROOM` free (room for the WAL
        and for the checkpoints and deletes that make room), so the size policy drops the oldest
        uplinks before SQLite ever meets a full disk. Pages freed by dropping are reused, so a
        buffer at the limit stops growing instead of shrinking further. When space returns, the
        bound goes back up to `buffer.max_size_mb` by itself.
        """
        try:
            st = os.statvfs(self.path.parent)
            # The file as it is on disk: pages still only in the WAL already take their room there.
            file_bytes = self.path.stat().st_size
        except OSError:
            return self.max_bytes
        free = st.f_bavail * st.f_frsize
        # On a disk too small for that, the buffer still gets half of what it could have.
        headroom = min(max(DISK_HEADROOM, min(64 << 20, st.f_blocks * st.f_frsize // 20)), (file_bytes + free) // 2)
        self.max_bytes = min(self.limit_bytes, file_bytes + max(0, free - headroom))
        # SQLite itself refuses to grow the database past that (SQLITE_FULL, which the caller
        # answers by dropping the oldest), so a checkpoint never needs room the disk lacks.
        cap = self.max_bytes // self.page_size if self.max_bytes < self.limit_bytes else self._default_page_cap
        if cap != self._page_cap:
            self._page_cap = int(self.db.execute(f"PRAGMA max_page_count = {int(cap)}").fetchone()[0])
        return self.max_bytes

    def make_room(self, fraction: float = 0.05) -> int:
        """Drop the oldest `fraction` of uplinks (counted, with gap notices); for a full disk.

        Every write goes through the WAL first, so on a full disk even a DELETE needs WAL space: the
        WAL is checkpointed and truncated before and after, which also lets the freed pages be reused.
        """
        # From now on the database must not grow: new rows reuse the pages freed here.
        self.max_bytes = min(self.max_bytes, int(self.used_bytes() * (1 - fraction)))
        self._checkpoint()
        n = self.db.execute("SELECT count(*) FROM uplinks").fetchone()[0]
        if not n:
            self._trim("events")
            self._trim("malformed")
            self._checkpoint()
            return 0
        # Small steps, each committed and checkpointed: one large DELETE would itself need more WAL
        # space than a full disk has. A step that still does not fit is halved; when even a single
        # uplink cannot be deleted, the disk is too full for SQLite to do anything and we give up.
        target, dropped, step = max(1, int(n * fraction)), 0, 64
        while target > 0:
            lo = self.db.execute("SELECT min(id) FROM uplinks").fetchone()[0]
            if lo is None:
                break
            step = min(step, target)
            try:
                dropped += self._drop_through(lo + step - 1)
            except sqlite3.OperationalError as exc:
                if not is_disk_full(exc) or step == 1:
                    raise
                step //= 2
                self._checkpoint()
                continue
            target -= step
            self._checkpoint()
        return dropped

    def _checkpoint(self) -> None:
        try:
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.OperationalError as exc:
            log.warning("Buffer checkpoint failed: %s", exc)

    # -- writing (source side) ------------------------------------------------------------

    def append(self, batch: Batch) -> list[int]:
        """Commit a batch in one transaction; returns the ids given to its uplinks."""
        db = self.db
        ids: list[int] = []
        db.execute("BEGIN IMMEDIATE")
        try:
            if batch.uplinks:
                # AUTOINCREMENT gives the next ids in sequence and this transaction holds the write
                # lock, so the batch's ids are known up front and both tables take one executemany.
                first = self.last_id() + 1
                ids = list(range(first, first + len(batch.uplinks)))
                devices: dict[str, tuple[Any, ...]] = {}
                rows = []
                for row_id, new in zip(ids, batch.uplinks, strict=True):
                    up = new.uplink
                    readings = readings_json(new.readings)
                    rows.append((row_id, up.uplink_id, up.device.dev_eui, up.device.application_id,
                                 up.radio.gateway_id or "", up.time, new.status, new.decoder, new.error or None,
                                 readings, radio_json(up.radio)))
                    d = up.device
                    # The receive-clamped time: an uplink dated 2099 must not freeze the device's row.
                    devices[d.dev_eui] = (d.dev_eui, d.device_name, d.application_id, d.application_name,
                                          d.device_profile_name, row_id, control_time(up.time, new.received),
                                          up.radio.fcnt, up.radio.rssi,
                                          up.radio.snr, up.radio.gateway_id, new.decoder, new.status, readings,
                                          d.device_profile_id, orjson.dumps(d.tags))
                db.executemany("INSERT INTO uplinks(id, uplink_id, dev_eui, application_id, gateway_id, time, status,"
                               " decoder, error, readings, radio) VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows)
                db.executemany("INSERT INTO raw(id, topic, payload, received) VALUES (?,?,?,?)",
                               [(row_id, new.topic, new.payload, new.received)
                                for row_id, new in zip(ids, batch.uplinks, strict=True)])
                # One upsert per device per batch, not per uplink: fewer page writes on the SD card.
                db.executemany(
                    "INSERT INTO devices VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT(dev_eui) DO UPDATE SET"
                    " name=excluded.name, application_id=excluded.application_id,"
                    " application_name=excluded.application_name, device_profile=excluded.device_profile,"
                    " last_uplink=excluded.last_uplink, last_time=excluded.last_time, fcnt=excluded.fcnt,"
                    " rssi=excluded.rssi, snr=excluded.snr, gateway_id=excluded.gateway_id,"
                    " decoder=excluded.decoder, status=excluded.status, readings=excluded.readings,"
                    " device_profile_id=excluded.device_profile_id, tags=excluded.tags"
                    # A re-decoded older uplink must not replace the device's newest one.
                    " WHERE excluded.last_time >= devices.last_time",
                    devices.values(),
                )
            if batch.events:
                db.executemany(
                    "INSERT INTO events(kind, dev_eui, application_id, time, summary, topic, payload)"
                    " VALUES (?,?,?,?,?,?,?)",
                    [(e.kind, e.dev_eui, e.application_id, e.time, e.summary, topic, payload)
                     for e, topic, payload in batch.events],
                )
            if batch.malformed:
                db.executemany(
                    "INSERT INTO malformed(received, topic, error, payload) VALUES (?,?,?,?)",
                    [(received, m.topic, m.error, m.payload) for m, received in batch.malformed],
                )
                self._bound_malformed([(m.topic, m.error, m.payload) for m, _ in batch.malformed])
            if batch.supersedes:
                db.executemany(f"UPDATE uplinks SET status = {_SUPERSEDED} WHERE id = ?",
                               [(i,) for i in batch.supersedes])
            if batch.counts:
                # An upsert: per-codec counters (`unmapped:<codec>`) appear as codecs are seen.
                db.executemany("INSERT INTO counters(name, value) VALUES (?, ?)"
                               " ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                               [(name, n) for name, n in batch.counts.items()])
            db.execute("COMMIT")
        except BaseException:
            self._malformed_bytes = None  # what the rolled-back batch added is gone again
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return ids

    def used_bytes(self) -> int:
        """Bytes of the database in use (pages not on the free list)."""
        pages = int(self.db.execute("PRAGMA page_count").fetchone()[0])
        free = int(self.db.execute("PRAGMA freelist_count").fetchone()[0])
        return (pages - free) * self.page_size

    def enforce_size(self, reserve: int = 0) -> int:
        """Drop the oldest rows while the database (plus `reserve` bytes about to be written) is over
        its size bound; returns rows dropped.

        Oldest first means rows every sink has delivered go first. Rows still undelivered for a
        sink are recorded as a gap for that sink (sent upstream as a notice) and counted.
        """
        dropped_total = 0
        while self.used_bytes() + reserve > self.max_bytes:
            lo, hi, n = self.db.execute("SELECT min(id), max(id), count(*) FROM uplinks").fetchone()
            if not n:
                # Only events and malformed rows left: trim those instead.
                self._trim("events")
                self._trim("malformed")
                if self.used_bytes() + reserve > self.max_bytes:
                    break
                continue
            upto = lo + max(1, n // 20) - 1  # 5 % per round keeps each round's transaction short
            dropped_total += self._drop_through(min(upto, hi))
            self._trim("events")
            self._trim("malformed")
        return dropped_total

    def _bound_malformed(self, added: Sequence[tuple[str, str, bytes]]) -> None:
        """Keep malformed messages within MALFORMED_SHARE of the size bound, oldest dropped first.

        Anyone who can publish to ChirpStack's broker can send malformed messages; kept without a
        bound of their own, a flood of them would push out uplinks an upstream still waits for.
        Runs inside append's transaction; the table's size is summed once, then kept up to date.
        """
        limit = int(self.max_bytes * MALFORMED_SHARE)
        if self._malformed_bytes is None:
            self._malformed_bytes = int(self.db.execute(
                f"SELECT coalesce(sum({_MALFORMED_SIZE}), 0) FROM malformed").fetchone()[0])
        else:
            self._malformed_bytes += sum(len(p) + len(e) + len(t) + 64 for t, e, p in added)
        if self._malformed_bytes <= limit:
            return
        excess, cut, dropped = self._malformed_bytes - limit, 0, 0
        rows = self.db.execute(f"SELECT id, {_MALFORMED_SIZE} FROM malformed ORDER BY id")
        try:
            for row_id, size in rows:
                excess -= int(size)
                cut, dropped = int(row_id), dropped + 1
                if excess <= 0:
                    break
        finally:
            rows.close()
        self.db.execute("DELETE FROM malformed WHERE id <= ?", (cut,))
        self._malformed_bytes = None  # summed again next time (rare: only while a flood lasts)
        # While a flood lasts this happens at every batch: one WARNING a minute, the rest at DEBUG.
        now = time.monotonic()
        level = logging.WARNING if now - self._malformed_warned >= 60 else logging.DEBUG
        if level == logging.WARNING:
            self._malformed_warned = now
        log.log(level, "Malformed messages fill their share of the buffer (%.1f MB); dropped the %d oldest.",
                limit / 1e6, dropped, extra={"count": dropped})

    def _trim(self, table: str) -> None:
        self._malformed_bytes = None
        lo, n = self.db.execute(f"SELECT min(id), count(*) FROM {table}").fetchone()
        if n:
            self.db.execute(f"DELETE FROM {table} WHERE id < ?", (lo + max(1, n // 20),))

    def _drop_through(self, upto: int) -> int:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            now = time.time()
            dropped = 0
            lost: list[tuple[int, str, int, int]] = []
            for name, cursor in db.execute("SELECT name, cursor FROM sinks WHERE cursor < ?", (upto,)).fetchall():
                first, last, count, t0, t1 = db.execute(
                    "SELECT min(id), max(id), count(*), min(time), max(time) FROM uplinks WHERE id > ? AND id <= ?",
                    (cursor, upto),
                ).fetchone()
                if count:
                    # A gap that directly continues the sink's last undelivered gap extends it, so an
                    # outage produces one notice, not one per trimming round.
                    prev = db.execute("SELECT id, last_id FROM gaps WHERE sink = ? ORDER BY id DESC LIMIT 1",
                                      (name,)).fetchone()
                    if prev is not None and prev[1] == cursor:
                        db.execute("UPDATE gaps SET last_id = ?, count = count + ?, last_time = ? WHERE id = ?",
                                   (last, count, t1, prev[0]))
                    else:
                        db.execute("INSERT INTO gaps(sink, first_id, last_id, count, first_time, last_time, created)"
                                   " VALUES (?,?,?,?,?,?,?)", (name, first, last, count, t0, t1, now))
                    db.execute("UPDATE sinks SET cursor = max(cursor, ?), dropped = dropped + ? WHERE name = ?",
                               (upto, count, name))
                    dropped = max(dropped, count)
                    lost.append((count, name, first, last))
            db.execute("DELETE FROM uplinks WHERE id <= ?", (upto,))
            db.execute("DELETE FROM raw WHERE id <= ?", (upto,))
            db.execute("UPDATE counters SET value = value + ? WHERE name = 'dropped'", (dropped,))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        # Logged once committed: a rolled-back drop (e.g. no room even for that) lost nothing.
        for count, name, first, last in lost:
            log.error("Buffer full: dropped %d undelivered uplinks for upstream %s (ids %d-%d);"
                      " a gap notice will be sent.", count, name, first, last,
                      extra={"upstream": name, "count": count})
        return dropped

    def raw_uplinks(self, *, dev_eui: str | None = None, decoder: str | None = None, since: float | None = None,
                    until: float | None = None, statuses: Sequence[int] | None = None,
                    upto: int | None = None, batch: int = 500) -> Iterator[list[tuple[int, str, bytes, float]]]:
        """Stored raw uplinks (id, topic, payload, received) matching the filters, in id batches.

        Rows already superseded by a re-decode are never returned.
        """
        where = [f"u.status != {_SUPERSEDED}"]
        args: list[Any] = []
        filters = (("u.id <= ?", upto), ("u.dev_eui = ?", dev_eui), ("u.decoder = ?", decoder),
                   ("u.time >= ?", since), ("u.time < ?", until))
        for clause, value in filters:
            if value is not None:
                where.append(clause)
                args.append(value)
        if statuses is not None:
            where.append(f"u.status IN ({','.join('?' * len(statuses))})")
            args.extend(statuses)
        after = 0
        while True:
            rows = self.db.execute(
                "SELECT u.id, r.topic, r.payload, r.received FROM uplinks u JOIN raw r ON r.id = u.id"
                f" WHERE u.id > ? AND {' AND '.join(where)} ORDER BY u.id LIMIT ?", (after, *args, batch)).fetchall()
            if not rows:
                return
            yield [(int(r[0]), str(r[1]), bytes(r[2]), float(r[3])) for r in rows]
            after = rows[-1][0]

    def recent_uplink_ids(self, n: int) -> list[str]:
        """The ids of the last n stored uplinks, to seed duplicate detection after a restart."""
        return [r[0] for r in self.db.execute("SELECT uplink_id FROM uplinks ORDER BY id DESC LIMIT ?", (n,))]

    # -- reading (sink side) ----------------------------------------------------------------

    def register_sink(self, name: str) -> int:
        """Make sure a sink has a cursor row; returns its cursor.

        A new sink starts at the oldest retained uplink, so nothing buffered before it was
        configured is skipped.
        """
        self.db.execute("INSERT OR IGNORE INTO sinks(name, cursor) VALUES (?, 0)", (name,))
        return int(self.db.execute("SELECT cursor FROM sinks WHERE name = ?", (name,)).fetchone()[0])

    def read(self, after_id: int, limit: int, max_bytes: int = 1 << 62) -> list[Entry]:
        """Stored uplinks with id > after_id, oldest first: at most `limit`, and stopping once their
        record blobs add up to `max_bytes` (at least one is returned), so memory stays bounded."""
        cursor = self.db.execute(
            "SELECT id, uplink_id, dev_eui, application_id, gateway_id, time, readings, radio FROM uplinks"
            " WHERE id > ? ORDER BY id LIMIT ?",
            (after_id, limit),
        )
        out: list[Entry] = []
        size = 0
        for r in cursor:
            out.append(Entry(r[0], r[1], r[2], r[3], r[4], r[5], readings_blob=r[6], radio_blob=r[7]))
            size += len(r[6]) + len(r[7]) + 200  # + the row's ids and the Python objects around them
            if size >= max_bytes:
                break
        cursor.close()
        return out

    def read_grouped(self, after_id: int, limit: int,
                     group_max: int = 1000) -> tuple[int, int, Iterator[list[Entry]]]:
        """A window of up to `limit` uplinks after `after_id`, grouped by device (see Backlog).

        Only (id, dev_eui) of the window are held in memory; each group of at most `group_max`
        uplinks of one device is fetched when the iterator reaches it. Rows trimmed meanwhile are
        simply missing from their group.
        """
        rows = self.db.execute("SELECT id, dev_eui FROM uplinks WHERE id > ? ORDER BY id LIMIT ?",
                               (after_id, limit)).fetchall()
        if not rows:
            return after_id, 0, iter(())
        last_id, count = int(rows[-1][0]), len(rows)
        if count <= SMALL_WINDOW:
            # Live traffic: one range query, grouped in memory (a few thousand rows at most).
            grouped: dict[str, list[Entry]] = {}
            for entry in self._fetch_range(after_id, last_id):
                grouped.setdefault(entry.dev_eui, []).append(entry)
            return last_id, count, iter(list(grouped.values()))
        by_device: dict[str, list[int]] = {}
        for row_id, dev_eui in rows:
            by_device.setdefault(dev_eui, []).append(row_id)
        del rows

        def groups() -> Iterator[list[Entry]]:
            for ids in by_device.values():
                for start in range(0, len(ids), group_max):
                    group = self._fetch(ids[start:start + group_max])
                    if group:
                        yield group

        return last_id, count, groups()

    def _fetch_range(self, after_id: int, last_id: int) -> list[Entry]:
        rows = self.db.execute(f"SELECT {_ENTRY_COLUMNS} FROM uplinks WHERE id > ? AND id <= ? ORDER BY id",
                               (after_id, last_id)).fetchall()
        return [Entry(r[0], r[1], r[2], r[3], r[4], r[5], readings_blob=r[6], radio_blob=r[7]) for r in rows]

    def _fetch(self, ids: Sequence[int]) -> list[Entry]:
        # IN lists are padded (repeating the last id) to a few fixed lengths, so that sqlite3's
        # statement cache is hit instead of preparing a new statement for every group size.
        size = next(b for b in _IN_SIZES if b >= len(ids))
        args = [*ids, *([ids[-1]] * (size - len(ids)))]
        rows = self.db.execute(f"SELECT {_ENTRY_COLUMNS} FROM uplinks WHERE id IN ({_IN_LISTS[size]})",
                               args).fetchall()
        rows.sort(key=lambda r: int(r[0]))
        return [Entry(r[0], r[1], r[2], r[3], r[4], r[5], readings_blob=r[6], radio_blob=r[7]) for r in rows]

    def advance(self, sink: str, upto_id: int, delivered: int) -> None:
        """Record that a sink has delivered everything up to `upto_id`.

        While a rewind request is pending (`rewind`), the cursor stays where the rewind put it: the
        sink still reads from its old position until it takes the request (`take_rewind`).
        """
        self.db.execute(
            "UPDATE sinks SET cursor = CASE WHEN rewind IS NULL THEN max(cursor, ?) ELSE cursor END,"
            " delivered = delivered + ?, last_delivery = ? WHERE name = ?",
            (upto_id, delivered, time.time(), sink),
        )

    def rewind(self, sink: str, since: float | None, label: str) -> Rewind:
        """Move a sink's cursor back so every uplink held that was received at or after `since` (every
        uplink held when None) is sent to it again, and leave a request for a running sink to take up.

        The cursor only ever goes back: uplinks not yet delivered stay pending whatever `since` says.
        Uplinks superseded by a re-decode do not decide the position (their newer row is sent).

        Args:
            sink: the upstream's name (a row is made for an upstream that never ran).
            since: POSIX time, or None for everything held.
            label: what the service's log line names as the rewind point.

        Returns:
            What the rewind does (see Rewind).
        """
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            oldest, held = db.execute(
                f"SELECT min(time), count(*) FROM uplinks WHERE status != {_SUPERSEDED}").fetchone()
            if since is None:
                first = db.execute("SELECT min(id) FROM uplinks").fetchone()[0]
            else:
                first = db.execute(f"SELECT min(id) FROM uplinks WHERE time >= ? AND status != {_SUPERSEDED}",
                                   (since,)).fetchone()[0]
            target = self.last_id() if first is None else int(first) - 1
            row = db.execute("SELECT cursor FROM sinks WHERE name = ?", (sink,)).fetchone()
            before = 0 if row is None else int(row[0])
            cursor = min(before, target)
            # Written even when the cursor does not move: a running sink may be ahead of its durable
            # cursor (progress is written a moment after the acknowledgements), and taking the request
            # brings it back to the cursor, so nothing from `since` on is skipped.
            db.execute("INSERT INTO sinks(name, cursor, rewind) VALUES (?, ?, ?) ON CONFLICT(name) DO UPDATE"
                       " SET cursor = excluded.cursor, rewind = excluded.rewind", (sink, cursor, label))
            again, pending, first_time = db.execute(
                "SELECT count(*) FILTER (WHERE id <= ?1), count(*) FILTER (WHERE id > ?1), min(time) FROM uplinks"
                f" WHERE id > ?2 AND status != {_SUPERSEDED}", (before, cursor)).fetchone()
            # Ids are never reused and only the size bound deletes rows, oldest first: every id below
            # the smallest held is an uplink it dropped (delivered or not).
            low = db.execute("SELECT min(id) FROM uplinks").fetchone()[0]
            dropped = (self.last_id() if low is None else int(low)) - (0 if low is None else 1)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return Rewind(sink, cursor, before, int(again), int(pending), first_time, oldest, int(held), dropped)

    def take_rewind(self, sink: str) -> tuple[int, str] | None:
        """A sink takes up a pending rewind: (the cursor to read from, what it was rewound to), or None.

        One indexed read when there is none, so a sink may ask every second.
        """
        row = self.db.execute("SELECT rewind FROM sinks WHERE name = ?", (sink,)).fetchone()
        if row is None or row[0] is None:
            return None
        # The cursor is read in the same statement that clears the request: the rewind's own, or
        # higher if the size bound dropped uplinks since (those are a gap, announced as usual).
        taken = self.db.execute("UPDATE sinks SET rewind = NULL WHERE name = ? AND rewind IS NOT NULL"
                                " RETURNING cursor", (sink,)).fetchone()
        return None if taken is None else (int(taken[0]), str(row[0]))

    def count_after(self, after_id: int) -> int:
        """Uplinks held after `after_id`, not counting rows superseded by a re-decode."""
        return int(self.db.execute(f"SELECT count(*) FROM uplinks WHERE id > ? AND status != {_SUPERSEDED}",
                                   (after_id,)).fetchone()[0])

    def stored(self, *, dev_eui: str | None = None, since: float | None = None, until: float | None = None,
               statuses: Sequence[int] | None = None, limit: int | None = None, raw: bool = False,
               page: int = 200) -> Iterator[Stored]:
        """Stored uplinks matching the filters, newest stored first, for `edge buffer list`.

        Read a page at a time by id (each page its own short read, so a long export neither holds
        the whole table in memory nor keeps a snapshot that stops the WAL from being checkpointed).
        Ordered by id, not by time: id order is storage order, no sort and no index on time needed;
        it is receive order except for re-decoded uplinks, which sit where they were stored again.

        Args:
            dev_eui, since, until: filters (receive time: at or after `since`, before `until`).
            statuses: DecodeStatus values to list; None for all but superseded rows.
            limit: at most this many (None: all).
            raw: also read the original ChirpStack message (topic and payload).
        """
        where: list[str] = []
        args: list[Any] = []
        for clause, value in (("u.dev_eui = ?", dev_eui), ("u.time >= ?", since), ("u.time < ?", until)):
            if value is not None:
                where.append(clause)
                args.append(value)
        wanted = list(statuses) if statuses is not None else [
            s for s in range(len(DecodeStatus.NAMES)) if s != _SUPERSEDED]
        where.append(f"u.status IN ({','.join('?' * len(wanted))})")
        args.extend(wanted)
        columns = ("u.id, u.uplink_id, u.dev_eui, u.application_id, u.gateway_id, u.time, u.status, u.decoder,"
                   " u.error, u.readings, u.radio")
        join = ""
        if raw:
            columns += ", r.topic, r.payload, r.received"
            join = " LEFT JOIN raw r ON r.id = u.id"
        before = self.last_id() + 1
        left = limit
        while left is None or left > 0:
            n = page if left is None else min(page, left)
            rows = self.db.execute(f"SELECT {columns} FROM uplinks u{join} WHERE u.id < ? AND {' AND '.join(where)}"
                                   " ORDER BY u.id DESC LIMIT ?", (before, *args, n)).fetchall()
            for r in rows:
                yield Stored(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10],
                             *((r[11], r[12], r[13]) if raw else ()))
            if len(rows) < n:
                return
            before = rows[-1][0]
            if left is not None:
                left -= len(rows)

    def gaps(self, sink: str) -> list[Gap]:
        """Gap notices not yet delivered to this sink."""
        return [Gap(*r) for r in self.db.execute(
            "SELECT id, sink, first_id, last_id, count, first_time, last_time FROM gaps WHERE sink = ? ORDER BY id",
            (sink,))]

    def gap_delivered(self, gap_id: int, sent: Gap | None = None) -> None:
        """Forget a gap once its notice was acknowledged.

        With `sent` (the gap as it was announced), only that much is forgotten: drops that
        extended the gap while its notice was on its way stay, to be announced next.
        """
        if sent is None:
            self.db.execute("DELETE FROM gaps WHERE id = ?", (gap_id,))
            return
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.execute("DELETE FROM gaps WHERE id = ? AND count <= ?", (gap_id, sent.count))
            self.db.execute("UPDATE gaps SET count = count - ?, first_id = ?, first_time = ? WHERE id = ?",
                            (sent.count, sent.last_id + 1, sent.last_time, gap_id))
            self.db.execute("COMMIT")
        except BaseException:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise

    def last_id(self) -> int:
        """The largest uplink id ever given (0 if none)."""
        row = self.db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'uplinks'").fetchone()
        return int(row[0]) if row else 0

    # -- status ------------------------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        """Every counter by name."""
        return {str(n): int(v) for n, v in self.db.execute("SELECT name, value FROM counters")}

    def sinks(self, configured: Sequence[str] = ()) -> list[dict[str, Any]]:
        """Per-sink progress: cursor, backlog, oldest undelivered age, delivered, dropped.

        `configured` names upstreams that may not have started yet; they are listed with
        everything buffered as their backlog.
        """
        out: list[dict[str, Any]] = []
        now = time.time()
        rows = self.db.execute("SELECT name, cursor, delivered, dropped, last_delivery FROM sinks").fetchall()
        known = {r[0] for r in rows}
        rows += [(name, 0, 0, 0, None) for name in configured if name not in known]
        for name, cursor, delivered, dropped, last in sorted(rows):
            # Age by the event time capped just after the local receive time (control_time): one
            # event dated in the future must not hide an upstream outage.
            backlog = self.db.execute("SELECT count(*) FROM uplinks WHERE id > ?", (cursor,)).fetchone()[0]
            oldest = self.db.execute(
                f"SELECT min(min(u.time, r.received + {TRUSTED_FUTURE_S}))"
                " FROM uplinks u JOIN raw r ON r.id = u.id WHERE u.id > ?", (cursor,)).fetchone()[0]
            out.append({
                "name": name, "cursor": cursor, "backlog": backlog,
                "oldest_undelivered_age_s": round(now - oldest, 1) if oldest is not None else None,
                "delivered": delivered, "dropped": dropped, "last_delivery": last,
            })
        return out

    def first_control_time_after(self, cursor: int) -> float | None:
        """The control time (edge.model.control_time) of the first uplink after `cursor`, or None."""
        row = self.db.execute("SELECT u.time, r.received FROM uplinks u JOIN raw r ON r.id = u.id WHERE u.id > ?"
                              " ORDER BY u.id LIMIT 1", (cursor,)).fetchone()
        return None if row is None else control_time(float(row[0]), float(row[1]))

    def received_times(self, ids: Sequence[int]) -> dict[int, float]:
        """Local receive time of each of these uplinks (ids no longer held are left out)."""
        out: dict[int, float] = {}
        for start in range(0, len(ids), 500):
            chunk = list(ids[start:start + 500])
            out.update((int(i), float(r)) for i, r in self.db.execute(
                f"SELECT id, received FROM raw WHERE id IN ({','.join('?' * len(chunk))})", chunk))
        return out

    def devices(self, limit: int = 1000) -> list[dict[str, Any]]:
        """The last uplink of each device, most recent first."""
        cols = ("dev_eui", "name", "application_name", "last_time", "fcnt", "rssi", "snr", "gateway_id",
                "decoder", "status", "readings")
        rows = self.db.execute(
            f"SELECT {', '.join(cols)} FROM devices ORDER BY last_time DESC LIMIT ?", (limit,)).fetchall()
        result = []
        for row in rows:
            item = dict(zip(cols, row, strict=True))
            item["readings"] = orjson.loads(item["readings"])
            result.append(item)
        return result

    def activity(self, dev_euis: Iterable[str], since: float) -> dict[str, dict[str, Any]]:
        """What each device did since `since`, for `edge devices verify`: join, first and last uplink.

        Keys per device: joined (time of the first join event or None), first_uplink (receive time or
        None), and from its last uplink: last_time, decoder, status, readings, rssi, snr, gateway_id.
        Devices with nothing since `since` are absent. One pass over each table from `since` on.
        """
        wanted = set(dev_euis)
        out: dict[str, dict[str, Any]] = {}
        for dev, joined in self.db.execute(
                "SELECT dev_eui, min(time) FROM events WHERE kind = 'join' AND time >= ? GROUP BY dev_eui", (since,)):
            if dev in wanted:
                out.setdefault(dev, {})["joined"] = joined
        for dev, first in self.db.execute(
                "SELECT dev_eui, min(time) FROM uplinks WHERE time >= ? GROUP BY dev_eui", (since,)):
            if dev in wanted:
                out.setdefault(dev, {})["first_uplink"] = first
        cols = ("dev_eui", "last_time", "decoder", "status", "readings", "rssi", "snr", "gateway_id", "fcnt")
        for row in self.db.execute(f"SELECT {', '.join(cols)} FROM devices WHERE last_time >= ?", (since,)):
            if row[0] in wanted:
                item = dict(zip(cols[1:], row[1:], strict=True))
                item["readings"] = orjson.loads(item["readings"])
                out.setdefault(row[0], {}).update(item)
        return out

    def device_meta(self, dev_euis: Iterable[str]) -> dict[str, dict[str, Any]]:
        """What sharing rules select on, per device: application, profile (name and id), tags."""
        wanted = sorted(set(dev_euis))
        out: dict[str, dict[str, Any]] = {}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start:start + 500]
            for dev, name, app_id, app_name, profile, profile_id, tags in self.db.execute(
                    "SELECT dev_eui, name, application_id, application_name, device_profile, device_profile_id,"
                    f" tags FROM devices WHERE dev_eui IN ({','.join('?' * len(chunk))})", chunk):
                out[dev] = {"applications": {app_id, app_name}, "device_profiles": {profile, profile_id},
                            "tags": orjson.loads(tags), "name": name, "application": app_name or app_id,
                            "device_profile": profile or profile_id}
        return out

    def thinning(self, sink: str, dev_euis: Iterable[str]) -> dict[str, list[tuple[int, int]]]:
        """A sink's stored thinning decisions per device: (entry id, interval number) kept, oldest first."""
        wanted = sorted(set(dev_euis))
        out: dict[str, list[tuple[int, int]]] = {}
        try:
            for start in range(0, len(wanted), 500):
                chunk = wanted[start:start + 500]
                for dev, entry_id, bucket in self.db.execute(
                        "SELECT dev_eui, entry_id, bucket FROM share_thinning WHERE sink = ?"
                        f" AND dev_eui IN ({','.join('?' * len(chunk))}) ORDER BY dev_eui, entry_id", [sink, *chunk]):
                    out.setdefault(dev, []).append((int(entry_id), int(bucket)))
        except sqlite3.OperationalError as exc:
            # A read-only look (`edge shares explain`) at a buffer not yet migrated by `edge run`.
            if "no such table" not in str(exc):
                raise
        return out

    def save_thinning(self, sink: str, redo_from: Mapping[str, int], kept: Sequence[tuple[str, int, int]]) -> int:
        """Store a sink's new thinning decisions in one transaction; returns the sink's cursor.

        Decisions of a device from `redo_from[dev]` on are replaced (those entries were read again
        after a reconnect or restart and decided anew). Of the decisions at or below the cursor only
        the newest per device is kept: entries up to the cursor are never read again.
        """
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany("DELETE FROM share_thinning WHERE sink = ? AND dev_eui = ? AND entry_id >= ?",
                           [(sink, dev, i) for dev, i in redo_from.items()])
            db.executemany("INSERT OR REPLACE INTO share_thinning(sink, dev_eui, entry_id, bucket) VALUES (?,?,?,?)",
                           [(sink, dev, i, b) for dev, i, b in kept])
            row = db.execute("SELECT cursor FROM sinks WHERE name = ?", (sink,)).fetchone()
            cursor = int(row[0]) if row else 0
            db.executemany(
                "DELETE FROM share_thinning WHERE sink = ?1 AND dev_eui = ?2 AND entry_id < (SELECT max(entry_id)"
                " FROM share_thinning WHERE sink = ?1 AND dev_eui = ?2 AND entry_id <= ?3)",
                [(sink, dev, cursor) for dev in {*redo_from, *(k[0] for k in kept)}])
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return cursor

    def add_dead_letter(self, sink: str, status: int, content_type: str, topic: str, payload: bytes,
                        detail: str) -> int:
        """Keep a message a destination rejected, for `edge deadletter list|replay`.

        Dead letters may fill at most DEAD_LETTER_SHARE of the buffer's size bound: a destination
        that refuses everything (a wrong path, a schema it rejects) must not crowd out the uplinks
        other destinations still wait for. Beyond that the oldest dead letters go first.

        Returns:
            How many older dead letters were dropped to make room (0 normally).
        """
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            new_id = db.execute(
                "INSERT INTO dead_letters(sink, created, status, content_type, topic, payload, detail)"
                " VALUES (?,?,?,?,?,?,?)", (sink, time.time(), status, content_type, topic, payload, detail)).lastrowid
            limit = int(self.max_bytes * DEAD_LETTER_SHARE)
            total = int(db.execute("SELECT coalesce(sum(length(payload) + length(detail)), 0)"
                                   " FROM dead_letters").fetchone()[0])
            dropped = 0
            for letter_id, size in db.execute("SELECT id, length(payload) + length(detail) FROM dead_letters"
                                              " WHERE id < ? ORDER BY id", (new_id,)).fetchall():
                if total <= limit:
                    break
                db.execute("DELETE FROM dead_letters WHERE id = ?", (letter_id,))
                total -= int(size)
                dropped += 1
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return dropped

    def dead_letters(self, sink: str | None = None) -> list[dict[str, Any]]:
        """Rejected messages, oldest first."""
        cols = ("id", "sink", "created", "status", "content_type", "topic", "payload", "detail")
        where, args = ("WHERE sink = ?", (sink,)) if sink else ("", ())
        return [dict(zip(cols, r, strict=True)) for r in self.db.execute(
            f"SELECT {', '.join(cols)} FROM dead_letters {where} ORDER BY id", args)]

    def remove_dead_letter(self, letter_id: int) -> None:
        """Forget a dead letter (replayed successfully)."""
        self.db.execute("DELETE FROM dead_letters WHERE id = ?", (letter_id,))

    def remember_command(self, upstream: str, command_id: str, now: float, keep_s: float) -> bool:
        """Note a downlink command's id; False when this upstream sent that id before (a redelivery).

        Ids older than `keep_s` are forgotten on the way: a command that old is refused as stale
        before its id is looked at, so remembering it longer would only grow the table.
        """
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("DELETE FROM command_ids WHERE received < ?", (now - keep_s,))
            fresh = db.execute("INSERT OR IGNORE INTO command_ids(upstream, id, received) VALUES (?,?,?)",
                               (upstream, command_id, now)).rowcount == 1
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return fresh

    def forget_command(self, upstream: str, command_id: str) -> None:
        """Forget a command id (its enqueue failed, so the same command may be sent again)."""
        self.db.execute("DELETE FROM command_ids WHERE upstream = ? AND id = ?", (upstream, command_id))

    def recent_events(self, limit: int = 20) -> list[dict[str, Any]]:
        """The newest device events (join, status, log, ack, txack, location)."""
        cols = ("id", "kind", "dev_eui", "time", "summary")
        return [dict(zip(cols, r, strict=True)) for r in self.db.execute(
            f"SELECT {', '.join(cols)} FROM events ORDER BY id DESC LIMIT ?", (limit,))]

    def recent_malformed(self, limit: int = 20) -> list[dict[str, Any]]:
        """The newest malformed messages (payload left out)."""
        cols = ("id", "received", "topic", "error")
        return [dict(zip(cols, r, strict=True)) for r in self.db.execute(
            f"SELECT {', '.join(cols)} FROM malformed ORDER BY id DESC LIMIT ?", (limit,))]

    def uplink_ids_of(self, ids: Iterable[int]) -> list[str]:
        """uplink_id of the given row ids (tests and tools)."""
        wanted = list(ids)
        q = ",".join("?" * len(wanted))
        return [r[0] for r in self.db.execute(f"SELECT uplink_id FROM uplinks WHERE id IN ({q})", wanted)]
