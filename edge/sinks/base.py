"""The sink contract: what a sink reads from, what it sends, when it may release records, and its health check."""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol, TypeVar

import orjson

from edge.model import Check, Entry, Formatter, OutMessage

__all__ = ["Backlog", "Check", "CheckContext", "DeadLetter", "Formatter", "HealthCheck", "OutMessage", "SinkStats",
           "format_isolated"]

DeadLetter = Callable[[OutMessage, int, str], None]
"""Receives a message that can never be delivered: (message, code, why), and keeps it (`edge deadletter list`).

The code is the MQTT PUBACK reason or the HTTP status, 0 when the message was set aside before
sending (a formatter failure, an invalid topic, a message too large). Called on the sink's own thread
(open any SQLite connection there), before the cursor moves past the message: a crash in between
re-sends the batch, so the same message may arrive twice.
"""


def format_isolated(formatter: Formatter, entries: Sequence[Entry],
                    failed: Callable[[OutMessage, str], None]) -> list[OutMessage]:
    """The formatter's messages for `entries`; an uplink it fails on costs that uplink only.

    The entries are formatted together first (the normal case, one call); only when that raises
    is each formatted alone, and each one that still fails is handed to `failed` as a small JSON
    message naming the uplink (its data stays in the buffer) with the reason.
    """
    try:
        return formatter(entries)
    except Exception:  # noqa: BLE001 - a formatter bug must cost one uplink, never the sink's thread
        pass
    out: list[OutMessage] = []
    for entry in entries:
        try:
            out.extend(formatter([entry]))
        except Exception as exc:  # noqa: BLE001 - as above
            body = {"entry_id": entry.id, "uplink_id": entry.uplink_id, "dev_eui": entry.dev_eui, "time": entry.time}
            failed(OutMessage("", orjson.dumps(body), "application/json"),
                   f"the formatter failed on uplink {entry.uplink_id!r}: {type(exc).__name__}: {exc}")
    return out


class Backlog(Protocol):
    """A sink's view of the buffer: its own cursor over the stored entries.

    Call order: `cursor` once at start, then `read` with increasing ids; `advance` only with ids
    whose messages the destination acknowledged, in order. `notices` are out-of-band messages
    (gap notices) that must be delivered once, confirmed with `notice_delivered`.

    Rewinds (`edge buffer rewind`): a sink asks `rewound` about once a second while it runs. When it
    returns a position, the sink drops whatever it has read or has in flight (none of it is
    released), and reads on from that position; `cursor` at start takes up a pending rewind too.
    """

    def cursor(self) -> int: ...

    def rewound(self) -> int | None:
        """The position to read from again if the operator rewound this sink since it last asked, else None."""
        ...

    def read(self, after_id: int, limit: int) -> list[Entry]: ...

    def read_grouped(self, after_id: int, limit: int) -> tuple[int, int, Iterator[list[Entry]]]:
        """A window of up to `limit` entries after `after_id`: (last id, count, the entries grouped by
        device, each group in id order and fetched lazily)."""
        ...

    def advance(self, upto_id: int, delivered: int) -> None: ...

    def notices(self) -> list[tuple[int, OutMessage]]: ...

    def notice_delivered(self, notice_id: int) -> None: ...


@dataclass(slots=True)
class SinkStats:
    """Counters a sink keeps in memory for status and metrics."""

    published: int = 0
    acknowledged: int = 0
    rejected: int = 0
    reconnects: int = 0
    connected: bool = False
    last_error: str = ""
    extra: dict[str, int] = field(default_factory=dict)
    # Since when the upstream has been unreachable (None while connected): health degrades after
    # web.disconnected_after_s, so a dead upstream is not "healthy" until its backlog is old.
    disconnected_since: float | None = field(default_factory=time.time)

    def link(self, up: bool) -> None:
        """Record the connection state (and since when it is down)."""
        self.connected = up
        if up:
            self.disconnected_since = None
        elif self.disconnected_since is None:
            self.disconnected_since = time.time()


@dataclass(frozen=True, slots=True)
class CheckContext:
    """What a sink's health check is told besides its own upstream's settings."""

    index: int  # its place among the configured upstreams of its kind, for config paths such as upstream[0]
    edge_id: str  # this gateway's id, which a test message carries
    publish_test: bool  # also send one test message, to the notice topic or endpoint (never with the data)

    def test_message(self, upstream: str) -> dict[str, str]:
        """The body of the test message `edge doctor --publish-test` sends to `upstream`."""
        return {"type": "doctor-test", "edge_id": self.edge_id, "upstream": upstream,
                "time": datetime.now(UTC).isoformat(), "note": "test message from `edge doctor`; ignore it"}


_C_contra = TypeVar("_C_contra", contravariant=True)  # the upstream config type a check reads


class HealthCheck(Protocol[_C_contra]):
    """A sink's own health check, which `edge doctor` runs for each configured upstream of that sink.

    It probes without running the sink or touching the buffer: the destination reachable (DNS, TCP,
    TLS), the credentials accepted, and with `publish_test` one test message acknowledged. Each
    Check is yielded as soon as it is made, so a slow network shows progress; after a FAIL that
    makes the rest pointless the check stops. A sink kind registers its check in edge/checks.py
    (with which configured upstreams are of its kind), so doctor runs it without knowing the sink.
    """

    def __call__(self, upstream: _C_contra, context: CheckContext, /) -> Generator[Check, None, None]: ...
