"""Sensor health in the buffer: device states and health notices, each upstream's delivery of them.

States and the notices they cause are written in one transaction, so a change is reported once
even across a SIGKILL; notices are kept until every upstream has them (capped, oldest dropped).
Rows hold plain JSON: this module knows nothing of edge.health's classes.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson

from edge.buffer.db import immediate

MAX_NOTICES = 20000  # a week of changes for a large fleet; beyond it the oldest go


def load_states(db: sqlite3.Connection) -> dict[str, dict[str, Any]]:
    """Every device's stored health, by DevEUI."""
    return {dev: orjson.loads(data) for dev, data in db.execute("SELECT dev_eui, data FROM device_health")}


def save(db: sqlite3.Connection, states: Sequence[tuple[str, str, float, bytes]],
         notices: Sequence[tuple[str, str, float, Mapping[str, Any]]]) -> None:
    """Store states (DevEUI, state, changed_at, JSON) and new notices (id, DevEUI, time, body) in one transaction."""
    if not states and not notices:
        return
    with immediate(db):
        db.executemany(
            "INSERT INTO device_health(dev_eui, state, changed_at, data) VALUES (?, ?, ?, ?)"
            " ON CONFLICT(dev_eui) DO UPDATE SET state=excluded.state, changed_at=excluded.changed_at,"
            " data=excluded.data",
            list(states))
        db.executemany("INSERT INTO health_notices(notice_id, dev_eui, time, body) VALUES (?, ?, ?, ?)",
                       [(nid, dev, t, orjson.dumps(body)) for nid, dev, t, body in notices])
        if notices:
            _prune(db)


def _prune(db: sqlite3.Connection) -> None:
    """Drop notices every registered upstream has, and the oldest beyond MAX_NOTICES."""
    floor = db.execute("SELECT min(coalesce(h.last_id, 0)) FROM sinks s LEFT JOIN health_sent h ON h.sink = s.name"
                       ).fetchone()[0]
    if floor:
        db.execute("DELETE FROM health_notices WHERE id <= ?", (floor,))
    db.execute("DELETE FROM health_notices WHERE id <= (SELECT max(id) FROM health_notices) - ?", (MAX_NOTICES,))


def pending(db: sqlite3.Connection, sink: str, limit: int = 200) -> list[tuple[int, str, dict[str, Any]]]:
    """Notices this upstream has not acknowledged yet, oldest first: (row id, DevEUI, body)."""
    row = db.execute("SELECT last_id FROM health_sent WHERE sink = ?", (sink,)).fetchone()
    after = row[0] if row else 0
    return [(i, dev, orjson.loads(body)) for i, dev, body in db.execute(
        "SELECT id, dev_eui, body FROM health_notices WHERE id > ? ORDER BY id LIMIT ?", (after, limit))]


def delivered(db: sqlite3.Connection, sink: str, upto_id: int) -> None:
    """Every notice up to `upto_id` is delivered to this upstream."""
    db.execute("INSERT INTO health_sent(sink, last_id) VALUES (?, ?) ON CONFLICT(sink) DO UPDATE"
               " SET last_id = max(last_id, excluded.last_id)", (sink, upto_id))


def start_at_newest(db: sqlite3.Connection, sinks: Iterable[str]) -> None:
    """A new upstream starts with the notices made from now on (not the history of every device)."""
    newest = db.execute("SELECT coalesce(max(id), 0) FROM health_notices").fetchone()[0]
    db.executemany("INSERT OR IGNORE INTO health_sent(sink, last_id) VALUES (?, ?)", [(s, newest) for s in sinks])


def states(db: sqlite3.Connection) -> list[dict[str, Any]]:
    """Every stored device state, for `edge devices health` and doctor (read-only callers)."""
    return [orjson.loads(data) for (data,) in db.execute("SELECT data FROM device_health ORDER BY dev_eui")]


def counts(db: sqlite3.Connection) -> dict[str, int]:
    """Devices per state."""
    return dict(db.execute("SELECT state, count(*) FROM device_health GROUP BY state").fetchall())


def recent_notices(db: sqlite3.Connection, since: float | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """The newest notices still held, newest first."""
    since = time.time() - 86400 if since is None else since
    return [orjson.loads(body) for (body,) in db.execute(
        "SELECT body FROM health_notices WHERE time >= ? ORDER BY id DESC LIMIT ?", (since, limit))]
