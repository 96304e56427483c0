"""Each upstream's way through the buffer: its cursor, reading in id order, rewinds, gap records and its backlog."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from edge.buffer.db import SUPERSEDED, Connected, immediate, reported
from edge.model import TRUSTED_FUTURE_S, Entry, control_time

# Windows up to this many uplinks are read with one range query (see read_grouped).
SMALL_WINDOW = 4096
_IN_SIZES = (1, 4, 16, 64, 256, 1000)
_IN_LISTS = {n: ",".join("?" * n) for n in _IN_SIZES}
_ENTRY_COLUMNS = "id, uplink_id, dev_eui, application_id, gateway_id, time, readings, radio"


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


class Cursors(Connected):
    """The sink side: per-sink cursors moved only after delivery, so nothing is lost between reads."""

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
        with immediate(self.db) as db:
            oldest, held = db.execute(
                f"SELECT min(time), count(*) FROM uplinks WHERE status != {SUPERSEDED}").fetchone()
            if since is None:
                first = db.execute("SELECT min(id) FROM uplinks").fetchone()[0]
            else:
                first = db.execute(f"SELECT min(id) FROM uplinks WHERE time >= ? AND status != {SUPERSEDED}",
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
                f" WHERE id > ?2 AND status != {SUPERSEDED}", (before, cursor)).fetchone()
            # Ids are never reused and only the size bound deletes rows, oldest first: every id below
            # the smallest held is an uplink it dropped (delivered or not).
            low = db.execute("SELECT min(id) FROM uplinks").fetchone()[0]
            dropped = (self.last_id() if low is None else int(low)) - (0 if low is None else 1)
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
        return int(self.db.execute(f"SELECT count(*) FROM uplinks WHERE id > ? AND status != {SUPERSEDED}",
                                   (after_id,)).fetchone()[0])

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
        with immediate(self.db) as db:
            db.execute("DELETE FROM gaps WHERE id = ? AND count <= ?", (gap_id, sent.count))
            db.execute("UPDATE gaps SET count = count - ?, first_id = ?, first_time = ? WHERE id = ?",
                       (sent.count, sent.last_id + 1, sent.last_time, gap_id))

    # -- backlogs -------------------------------------------------------------------------------

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

    @reported
    def progress(self, names: Sequence[str], now: float,
                 unconfigured: bool = False) -> tuple[int, list[dict[str, Any]]]:
        """Rows in the buffer, and each upstream's backlog, age, totals and cursor (edge.status reads this).

        `unconfigured` also reports, after `names`, the sinks the buffer holds a cursor for that
        `names` lacks (an upstream removed from the config); `cursor` is None before a sink's first run.

        The figures of sinks(), read in O(log n) instead of by scanning the backlog, which takes
        seconds on an SD card just when an upstream has been away for long. Uplink rows are only
        appended with consecutive ids and deleted oldest first (enforce_size), so an id span is a
        row count. The age is that of the next uplink the upstream waits for (the first after its
        cursor), by its event time capped at 5 minutes after its receive time (control_time).
        """
        lo = self.db.execute("SELECT min(id) FROM uplinks").fetchone()[0]
        hi = self.db.execute("SELECT max(id) FROM uplinks").fetchone()[0]
        rows = 0 if lo is None else int(hi) - int(lo) + 1
        known = {r[0]: r[1:] for r in self.db.execute("SELECT name, cursor, delivered, dropped, last_delivery"
                                                      " FROM sinks")}
        out = []
        if unconfigured:
            names = [*names, *sorted(set(known) - set(names))]
        # An upstream not started yet has no cursor row: everything buffered is its backlog.
        for name in names:
            cursor, delivered, dropped, last = known.get(name, (0, 0, 0, None))
            backlog, age = 0, None
            if lo is not None and cursor < hi:
                backlog = int(hi) - max(int(cursor) + 1, int(lo)) + 1
                # The event time capped just after the local receive time: an event dated in the future
                # must not hide an outage (#11).
                first = self.first_control_time_after(int(cursor))
                age = round(max(0.0, now - first), 1) if first is not None else None
            out.append({"name": name, "backlog": backlog, "oldest_undelivered_age_s": age, "delivered": delivered,
                        "dropped": dropped, "last_delivery": last, "cursor": cursor if name in known else None})
        return rows, out

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
