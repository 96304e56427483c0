"""The sink contract: what a sink reads from, what it sends, and when it may release records."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from edge.model import Entry, Formatter, OutMessage

__all__ = ["Backlog", "Formatter", "OutMessage"]


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
