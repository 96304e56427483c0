"""Buffer, one connection composed of every role of the buffer, and open_writer, which opens it safely after a crash.

Durability contract (docs/reliability.md): `append` returns only after the batch is committed
with synchronous=FULL in WAL mode, so whatever the source acknowledges afterwards survives a
crash or power cut. Sinks read in id order and move their own cursor only after delivery; a
cursor write may be lost on power loss (synchronous=NORMAL on sink connections), which at worst
re-sends records that receivers drop by id.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from edge.buffer import location
from edge.buffer.commands import CommandIds
from edge.buffer.cursors import Cursors
from edge.buffer.db import connect, log
from edge.buffer.dead_letters import DeadLetters
from edge.buffer.inspector import Inspection
from edge.buffer.migrations import migrate
from edge.buffer.sizing import Sizing
from edge.buffer.thinning import Thinning
from edge.buffer.writer import COUNTERS, Writer
from edge.errors import StorageCorrupt, StorageError


class Buffer(Writer, Sizing, Cursors, Inspection, DeadLetters, Thinning, CommandIds):
    """One connection to the buffer. Use one instance per thread.

    Each base class is one role (its module says which); they share only this connection and the
    size bound, so a role can be read, and tested, on its own.
    """

    clean_marker: Path | None = None  # set on the writer: written on a clean close

    def __init__(self, path: str | Path, *, max_bytes: int = 1 << 30, readonly: bool = False,
                 synchronous: str = "FULL") -> None:
        self.path = Path(path)
        self.readonly = readonly
        self.limit_bytes = max_bytes  # buffer.max_size_mb, as configured
        self._malformed_bytes = None  # malformed rows' size (MALFORMED_SHARE), once summed
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
