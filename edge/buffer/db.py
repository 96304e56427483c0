"""The buffer file's SQLite connection: how it is opened, one write transaction, and what every role of it shares."""

from __future__ import annotations

import functools
import logging
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Concatenate, ParamSpec, Protocol, TypeVar

from edge.errors import StorageError
from edge.model import DecodeStatus

# One logger for every role of the buffer: its lines keep the name they have always had.
log = logging.getLogger("edge.buffer.store")

# Rows `edge redecode` replaced with a newer decode; interpolated into SQL (a constant, never input).
SUPERSEDED = DecodeStatus.SUPERSEDED


def connect(path: str | Path, *, readonly: bool = False, synchronous: str = "FULL") -> sqlite3.Connection:
    """Open the buffer database with the settings this package relies on."""
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


@contextmanager
def immediate(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction: committed when the block ends, rolled back on any exception (interrupts too).

    IMMEDIATE takes the write lock at the start, so a transaction that reads before it writes never
    fails halfway on a lock another connection took meanwhile.
    """
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


class Opened(Protocol):
    """Anything holding a connection to the buffer file that knows whether it opened it read-only."""

    readonly: bool


_O = TypeVar("_O", bound=Opened)
_P = ParamSpec("_P")
_R = TypeVar("_R")


def reported(read: Callable[Concatenate[_O, _P], _R]) -> Callable[Concatenate[_O, _P], _R]:
    """Mark a read that the status page, `edge status`, doctor or the CLI report when it fails.

    On a read-only connection (theirs) a database that cannot be read raises StorageError with
    SQLite's message, and the caller says which file. On a writable connection sqlite3's errors pass
    unchanged: the size policy tells a full disk apart by them.
    """

    @functools.wraps(read)
    def run(self: _O, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return read(self, *args, **kwargs)
        except sqlite3.Error as exc:
            if not self.readonly:
                raise
            raise StorageError(str(exc)) from exc

    return run


class Connected:
    """What every role of the buffer shares: the file, one connection to it, and how it was opened."""

    path: Path
    db: sqlite3.Connection
    readonly: bool

    def last_id(self) -> int:
        """The largest uplink id ever given (0 if none)."""
        row = self.db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'uplinks'").fetchone()
        return int(row[0]) if row else 0
