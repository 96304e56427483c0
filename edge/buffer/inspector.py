"""Read-only looks at what the buffer holds, for the status page, `edge status`, doctor, the CLI and re-decoding."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from edge.buffer import health
from edge.buffer.db import SUPERSEDED, Connected, connect, reported
from edge.errors import StorageError
from edge.model import DecodeStatus


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


class Inspection(Connected):
    """Queries that only read: stored uplinks and raw messages, devices, events, counters, decode failures."""

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
            s for s in range(len(DecodeStatus.NAMES)) if s != SUPERSEDED]
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

    def raw_uplinks(self, *, dev_eui: str | None = None, decoder: str | None = None, since: float | None = None,
                    until: float | None = None, statuses: Sequence[int] | None = None,
                    upto: int | None = None, batch: int = 500) -> Iterator[list[tuple[int, str, bytes, float]]]:
        """Stored raw uplinks (id, topic, payload, received) matching the filters, in id batches.

        Rows already superseded by a re-decode are never returned.
        """
        where = [f"u.status != {SUPERSEDED}"]
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

    def uplink_ids_of(self, ids: Iterable[int]) -> list[str]:
        """uplink_id of the given row ids (tests and tools)."""
        wanted = list(ids)
        q = ",".join("?" * len(wanted))
        return [r[0] for r in self.db.execute(f"SELECT uplink_id FROM uplinks WHERE id IN ({q})", wanted)]

    @reported
    def counters(self) -> dict[str, int]:
        """Every counter by name."""
        return {str(n): int(v) for n, v in self.db.execute("SELECT name, value FROM counters")}

    @reported
    def decode_failures(self, limit: int) -> tuple[dict[str, int], list[dict[str, Any]]]:
        """Failed decodes: the count per decoder, and the newest `limit` (time, DevEUI, decoder, error)."""
        # The literal status (not a bound parameter) lets SQLite use a partial index on failed
        # rows, should the schema get one.
        by_decoder = {str(decoder): int(n) for decoder, n in self.db.execute(
            f"SELECT decoder, count(*) FROM uplinks WHERE status = {DecodeStatus.FAILED:d} GROUP BY decoder")}
        cols = ("time", "dev_eui", "decoder", "error")
        recent = [dict(zip(cols, r, strict=True)) for r in self.db.execute(
            f"SELECT {', '.join(cols)} FROM uplinks WHERE status = {DecodeStatus.FAILED:d}"
            " ORDER BY id DESC LIMIT ?", (limit,))]
        return by_decoder, recent

    # -- devices --------------------------------------------------------------------------------

    @reported
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

    def last_uplink_row(self, dev_eui: str) -> int | None:
        """The row id of the device's last stored uplink (None: none stored); DevEUIs are stored in lower case."""
        row = self.db.execute("SELECT last_uplink FROM devices WHERE dev_eui = ?", (dev_eui,)).fetchone()
        return None if row is None else int(row[0])

    @reported
    def last_uplink_message(self, dev_eui: str) -> tuple[str, bytes, float] | None:
        """The ChirpStack message (topic, payload, receive time) of the device's last uplink, if still held."""
        row = self.db.execute("SELECT r.topic, r.payload, r.received FROM devices d JOIN raw r ON r.id = d.last_uplink"
                              " WHERE d.dev_eui = ?", (dev_eui,)).fetchone()
        return None if row is None else (row[0], row[1], row[2])

    @reported
    def newest_device_time(self) -> float | None:
        """ChirpStack time of the newest uplink any device sent (None: none stored)."""
        row = self.db.execute("SELECT max(last_time) FROM devices").fetchone()
        return float(row[0]) if row and row[0] is not None else None

    @reported
    def health_states(self) -> list[dict[str, Any]]:
        """Every stored device health state (edge.buffer.health.states)."""
        return health.states(self.db)

    # -- events and malformed messages ----------------------------------------------------------

    def recent_events(self, limit: int = 20) -> list[dict[str, Any]]:
        """The newest device events (join, status, log, ack, txack, location)."""
        cols = ("id", "kind", "dev_eui", "time", "summary")
        return [dict(zip(cols, r, strict=True)) for r in self.db.execute(
            f"SELECT {', '.join(cols)} FROM events ORDER BY id DESC LIMIT ?", (limit,))]

    @reported
    def queue_event(self, queue_id: str, kinds: Sequence[str]) -> dict[str, Any] | None:
        """The first event of these kinds (ack, txack) about a queued downlink, as {id, kind, dev_eui, time, summary}.

        The pipeline stores ChirpStack's ack and txack events with the summary
        "queueItemId=<id> acknowledged=<bool>".
        """
        marks = ",".join("?" * len(kinds))
        # The trailing space stops one id from matching another that it prefixes.
        params = (*kinds, f"queueItemId={queue_id} %")
        row = self.db.execute(f"SELECT id, kind, dev_eui, time, summary FROM events WHERE kind IN ({marks})"
                              " AND summary LIKE ? ORDER BY id LIMIT 1", params).fetchone()
        return dict(zip(("id", "kind", "dev_eui", "time", "summary"), row, strict=True)) if row else None

    @reported
    def recent_malformed(self, limit: int = 20) -> list[dict[str, Any]]:
        """The newest malformed messages (payload left out)."""
        cols = ("id", "received", "topic", "error")
        return [dict(zip(cols, r, strict=True)) for r in self.db.execute(
            f"SELECT {', '.join(cols)} FROM malformed ORDER BY id DESC LIMIT ?", (limit,))]

    # -- the file -------------------------------------------------------------------------------

    @reported
    def quick_check(self) -> list[str]:
        """The rows of SQLite's `PRAGMA quick_check`: ["ok"] for a sound file."""
        return [str(row[0]) for row in self.db.execute("PRAGMA quick_check")]

    @reported
    def schema_version(self) -> int:
        """The schema version of the file (PRAGMA user_version; edge.buffer.migrations)."""
        return int(self.db.execute("PRAGMA user_version").fetchone()[0])


class Inspector(Inspection):
    """A read-only look at the buffer file, for one-off questions (doctor, `edge devices`, `edge downlink`).

    Lighter than `Buffer(path, readonly=True)`: it reads nothing on opening (no size bound), so
    doctor's integrity check gets as far as SQLite can. Failing to open the file, and the reads
    marked @reported, raise StorageError with SQLite's message; the caller says which file.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.readonly = True
        try:
            self.db = connect(self.path, readonly=True)
        except sqlite3.Error as exc:
            raise StorageError(str(exc)) from exc

    def close(self) -> None:
        """Close the connection."""
        self.db.close()

    def __enter__(self) -> Inspector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
