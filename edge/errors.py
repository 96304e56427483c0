"""The exception tree of lorawan-edge.

    EdgeError
     ├── ConfigError          bad configuration; carries every problem with its key
     ├── DecodeError          a decoder could not decode a payload (the raw uplink is kept)
     └── StorageError          the SQLite buffer could not be opened or written
          ├── StorageCorrupt   the database file failed its integrity check
          └── StorageFull      the disk is full and dropping the oldest uplinks made no room

Malformed ChirpStack events are not exceptions: the source turns them into `Malformed` events
so that they are stored and acknowledged like any other message.
"""

from __future__ import annotations


class EdgeError(Exception):
    """Base class of every error lorawan-edge raises on purpose."""


class ConfigError(EdgeError):
    """The configuration is invalid; `problems` lists each one as 'key: message'."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


class DecodeError(EdgeError):
    """A payload could not be decoded."""


class StorageError(EdgeError):
    """The buffer database could not be used."""


class StorageCorrupt(StorageError):
    """The buffer database file is damaged."""


class StorageFull(StorageError):
    """The disk holding the buffer is full and dropping the oldest uplinks did not make room."""
