"""Ids of downlink commands each upstream sent, so that a redelivered command is enqueued only once."""

from __future__ import annotations

from edge.buffer.db import Connected, immediate


class CommandIds(Connected):
    """Remembered command ids, forgotten once older than a command may be."""

    def remember_command(self, upstream: str, command_id: str, now: float, keep_s: float) -> bool:
        """Note a downlink command's id; False when this upstream sent that id before (a redelivery).

        Ids older than `keep_s` are forgotten on the way: a command that old is refused as stale
        before its id is looked at, so remembering it longer would only grow the table.
        """
        with immediate(self.db) as db:
            db.execute("DELETE FROM command_ids WHERE received < ?", (now - keep_s,))
            fresh = db.execute("INSERT OR IGNORE INTO command_ids(upstream, id, received) VALUES (?,?,?)",
                               (upstream, command_id, now)).rowcount == 1
        return fresh

    def forget_command(self, upstream: str, command_id: str) -> None:
        """Forget a command id (its enqueue failed, so the same command may be sent again)."""
        self.db.execute("DELETE FROM command_ids WHERE upstream = ? AND id = ?", (upstream, command_id))
