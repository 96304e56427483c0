"""Messages a destination rejected, kept within their share of the size bound for `edge deadletter list|replay`."""

from __future__ import annotations

import time
from typing import Any

from edge.buffer.db import Connected, immediate

# The share of the size bound (`buffer.max_size_mb`) dead letters may take; the oldest go beyond it.
DEAD_LETTER_SHARE = 0.1


class DeadLetters(Connected):
    """Dead letters: kept per upstream, listed, forgotten once replayed."""

    max_bytes: int  # the size bound in force (sizing.py)

    def add_dead_letter(self, sink: str, status: int, content_type: str, topic: str, payload: bytes,
                        detail: str) -> int:
        """Keep a message a destination rejected, for `edge deadletter list|replay`.

        Dead letters may fill at most DEAD_LETTER_SHARE of the buffer's size bound: a destination
        that refuses everything (a wrong path, a schema it rejects) must not crowd out the uplinks
        other destinations still wait for. Beyond that the oldest dead letters go first.

        Returns:
            How many older dead letters were dropped to make room (0 normally).
        """
        with immediate(self.db) as db:
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
