"""The exception tree of lorawan-edge: every exception that leaves its module is defined here.

    EdgeError
     ├── ConfigError           bad configuration; carries every problem with its key
     ├── StorageError          the SQLite buffer could not be opened or written
     │    ├── StorageCorrupt    the database file failed its integrity check
     │    └── StorageFull       the disk is full and dropping the oldest uplinks made no room
     ├── ApiError              a ChirpStack gRPC API call failed (status code and details in the message)
     │    ├── ApiAuthError      UNAUTHENTICATED with a reason: the token is not a key of this ChirpStack
     │    ├── ApiPermissionError UNAUTHENTICATED without a reason (or PERMISSION_DENIED): the key was
     │    │                     deleted, or may not do this (a tenant key outside its tenant)
     │    ├── ApiNotFound       NOT_FOUND: the tenant, device or profile does not exist
     │    ├── ApiExists         ALREADY_EXISTS: a create found the object (device, keys) already there
     │    └── ApiUnavailable    UNAVAILABLE / DEADLINE_EXCEEDED after every retry
     ├── BrokerError           (also ConnectionError) the source's MQTT connection must be dropped
     │    ├── ProtocolError     the broker sent a malformed packet or broke the protocol
     │    └── ConnectionRefused the broker answered CONNECT or SUBSCRIBE with a failure reason
     ├── MalformedEvent        a ChirpStack event cannot be parsed; parse() turns it into a `Malformed` event
     ├── SheetError            an onboarding sheet cannot be imported; carries every row's problem
     ├── MapError              (also ValueError) a field map breaks docs/field-maps.md; carries every problem
     ├── UnitMismatch          (also ValueError) a codec's unit does not convert to the quantity's unit
     ├── OverLimit             (also ValueError) foreign data is beyond a bound of edge/decoding/limits.py
     └── CommandError          (also ValueError) a downlink command from an upstream is refused

A second base keeps old `except ConnectionError` / `except ValueError` callers working. A payload
that does not decode is not an exception: decoders report it in `DecodeResult.errors` and the
registry stores the uplink raw as failed (edge/decoding/base.py). Malformed ChirpStack events are
not exceptions to callers either: MalformedEvent never leaves edge.sources.chirpstack_events.parse,
which turns it into a `Malformed` event, stored and acknowledged like any other message. A few
private exceptions (`_Failure` in edge/decoding/js/runtime.py, ...) are raised and caught inside
one module for control flow; tests/test_errors.py lists them.
"""

from __future__ import annotations

from collections.abc import Sequence


class EdgeError(Exception):
    """Base class of every error lorawan-edge raises on purpose."""


class ConfigError(EdgeError):
    """The configuration is invalid; `problems` lists each one as 'key: message'."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


class StorageError(EdgeError):
    """The buffer database could not be used."""


class StorageCorrupt(StorageError):
    """The buffer database file is damaged."""


class StorageFull(StorageError):
    """The disk holding the buffer is full and dropping the oldest uplinks did not make room."""


class ApiError(EdgeError):
    """A ChirpStack API call failed."""


class ApiAuthError(ApiError):
    """ChirpStack rejected the API token."""


class ApiPermissionError(ApiError):
    """The API token is valid but may not do what was asked."""


class ApiNotFound(ApiError):
    """The object asked for does not exist in ChirpStack."""


class ApiExists(ApiError):
    """The object to create is already in ChirpStack."""


class ApiUnavailable(ApiError):
    """ChirpStack could not be reached (after retries)."""


class BrokerError(EdgeError, ConnectionError):
    """The ChirpStack source's MQTT connection failed in a way that needs a reconnect."""


class ProtocolError(BrokerError):
    """The broker sent a malformed packet or broke the protocol; the connection must be dropped."""


class ConnectionRefused(BrokerError):
    """The broker answered CONNECT or SUBSCRIBE with a failure reason code."""


class SheetError(EdgeError):
    """The sheet cannot be imported; `problems` lists every row's problem."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__(f"{len(self.problems)} problem(s) in the file; nothing was changed in ChirpStack")


class MapError(EdgeError, ValueError):
    """A field map that does not follow docs/field-maps.md; `problems` says where and why."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = list(problems)


class UnitMismatch(EdgeError, ValueError):
    """A codec's unit cannot be converted to the quantity's unit (different dimensions)."""


class OverLimit(EdgeError, ValueError):
    """Foreign data is beyond a bound; the text says which (and never quotes the data)."""


class MalformedEvent(EdgeError):
    """A ChirpStack event is malformed; the text says why (raised by the source's readers, caught by parse())."""


class CommandError(EdgeError, ValueError):
    """Why a command is refused (the text is logged, escaped)."""


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
