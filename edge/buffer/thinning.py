"""Each upstream's thinning decisions (sharing rules' `thin_s`), stored so they survive reconnects and restarts."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping, Sequence

from edge.buffer.db import Connected, immediate


class Thinning(Connected):
    """Per upstream and device: which entries a thinning rule let through, in which interval."""

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
        with immediate(self.db) as db:
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
        return cursor
