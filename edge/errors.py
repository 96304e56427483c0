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


def certificate_problem(exc: BaseException) -> str | None:
    """What is wrong with a peer's TLS certificate, when `exc` (or its cause) is a failed verification; else None.

    A certificate that does not verify is a configuration problem an operator must fix (a wrong
    CA file, an expired or self-signed certificate, a host name that does not match), not a network
    blip to retry quietly: callers log it at ERROR with this text.
    """
    import ssl

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLCertVerificationError):
            return f"certificate verify failed: {current.verify_message or current.reason or current}"
        if isinstance(current, ssl.SSLError) and "CERTIFICATE_VERIFY_FAILED" in str(current):
            return str(current)
        current = current.__cause__ or current.__context__
    return None
