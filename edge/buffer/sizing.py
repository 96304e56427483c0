"""The size bound's primitives: bytes in use, the bound the disk allows, dropping the oldest rows with gap records."""

from __future__ import annotations

import os
import sqlite3
import time

from edge.buffer.db import Connected, immediate, log, reported

# Free space kept on the buffer's filesystem (at least; 5 % of it up to 64 MiB on larger disks):
# a full WAL before its auto-checkpoint (1000 pages) plus a large batch, so a checkpoint and the
# deletes that make room always have somewhere to go.
DISK_HEADROOM = 6 << 20


def is_disk_full(exc: sqlite3.Error) -> bool:
    """True for SQLITE_FULL: the disk (or the database's page limit) has no room for the write."""
    return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "database or disk is full" in str(exc)


class Sizing(Connected):
    """The buffer's size: what it uses, the bound in force, and dropping the oldest rows to keep within it."""

    limit_bytes: int  # buffer.max_size_mb, as configured
    max_bytes: int  # the bound in force: lower while the disk is short of space
    page_size: int
    _default_page_cap: int
    _page_cap: int
    _malformed_bytes: int | None  # the writer's running sum of malformed rows (writer.py)

    @reported
    def used_bytes(self) -> int:
        """Bytes of the database in use (pages not on the free list)."""
        pages = int(self.db.execute("PRAGMA page_count").fetchone()[0])
        free = int(self.db.execute("PRAGMA freelist_count").fetchone()[0])
        return (pages - free) * self.page_size

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

    def _trim(self, table: str) -> None:
        self._malformed_bytes = None
        lo, n = self.db.execute(f"SELECT min(id), count(*) FROM {table}").fetchone()
        if n:
            self.db.execute(f"DELETE FROM {table} WHERE id < ?", (lo + max(1, n // 20),))

    def _drop_through(self, upto: int) -> int:
        with immediate(self.db) as db:
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
        # Logged once committed: a rolled-back drop (e.g. no room even for that) lost nothing.
        for count, name, first, last in lost:
            log.error("Buffer full: dropped %d undelivered uplinks for upstream %s (ids %d-%d);"
                      " a gap notice will be sent.", count, name, first, last,
                      extra={"upstream": name, "count": count})
        return dropped
