"""The buffer as the sinks and sharing rules see it: a sink's backlog, its thinning decisions and its dead letters.

Each adapter works on the connection it is given, opened on the sink's own thread. The sinks'
Backlog protocol (edge.sinks.base) and the sharing rules' ThinStore (edge.formats.share) are met
structurally: this package imports neither.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from edge.buffer import health as health_store
from edge.buffer.cursors import Gap
from edge.buffer.policy import unless_disk_full
from edge.buffer.store import Buffer
from edge.model import ENDPOINT, Entry, OutMessage

log = logging.getLogger(__name__)

# A health notice (its stored JSON body) as the upstream's message bytes and media type.
HealthEncoder = Callable[[Mapping[str, Any]], tuple[bytes, str]]


class BufferThinStore:
    """An upstream's thinning decisions in the buffer (the ThinStore of edge.formats.share)."""

    def __init__(self, buffer: Buffer, sink: str, readonly: bool = False) -> None:
        self.buffer = buffer
        self.sink = sink
        self.readonly = readonly  # `edge shares explain`: look, never write

    def load(self, dev_euis: Iterable[str]) -> dict[str, list[tuple[int, int]]]:
        """Stored decisions per device."""
        return self.buffer.thinning(self.sink, dev_euis)

    def save(self, redo_from: Mapping[str, int], kept: Sequence[tuple[str, int, int]]) -> int:
        """Store new decisions; the sink's cursor."""
        if self.readonly:
            return 0
        return self.buffer.save_thinning(self.sink, redo_from, kept)

    def received(self, ids: Sequence[int]) -> dict[int, float]:
        """Local receive times of entries (thinning clamps event times to a window around them)."""
        return self.buffer.received_times(ids)


class BufferBacklog:
    """The Backlog a sink sees: its own buffer connection and cursor, and its gap notices."""

    def __init__(self, buffer: Buffer, sink: str, notice_topic: str, edge_id: str, *, health_topic: str = "",
                 encode_health: HealthEncoder | None = None, allows: Callable[[str], bool] | None = None) -> None:
        """Register the sink in the buffer.

        Args:
            buffer: the sink's own connection.
            sink: the upstream's name.
            notice_topic: where gap notices go ({edge_id} filled in).
            edge_id: this gateway's id.
            health_topic: where health notices go (ENDPOINT for an HTTP upstream's own endpoint); none when empty.
            encode_health: a health notice in the upstream's format (edge.formats.health), injected.
            allows: whether the upstream's sharing rules cover a device (its health notices go only there).
        """
        self.buffer = buffer
        self.sink = sink
        self.notice_topic = notice_topic.format(edge_id=edge_id, dev_eui="", application="",
                                                application_id="", gateway_id="")
        self.edge_id = edge_id
        self._announced: dict[int, Gap] = {}  # gap notices as last read, by id
        # Health notices (edge/health.py) ride with gap notices under negative ids; the sinks
        # treat every notice alike. Acknowledgements may come out of order, the cursor may not.
        self.health_topic = health_topic if encode_health is not None else ""
        self.encode_health = encode_health
        self.allows = allows
        self._health_out: list[int] = []  # health notice rows handed out, in order, not yet delivered
        self._health_acked: set[int] = set()
        buffer.register_sink(sink)

    def cursor(self) -> int:
        """The sink's durable cursor (a rewind asked for while the sink was not reading is taken up here)."""
        cursor = self.buffer.register_sink(self.sink)
        taken = self._take_rewind()
        return cursor if taken is None else taken

    def rewound(self) -> int | None:
        """The position `edge buffer rewind` moved this sink back to, once; None when there is no request."""
        return self._take_rewind()

    def _take_rewind(self) -> int | None:
        taken = self.buffer.take_rewind(self.sink)
        if taken is None:
            return None
        cursor, label = taken
        log.warning("Upstream %s rewound to %s; %d uplinks will be sent again (same uplink ids).", self.sink, label,
                    self.buffer.count_after(cursor), extra={"upstream": self.sink})
        return cursor

    def read(self, after_id: int, limit: int) -> list[Entry]:
        """Entries after `after_id`."""
        return self.buffer.read(after_id, limit)

    def read_grouped(self, after_id: int, limit: int) -> tuple[int, int, Iterator[list[Entry]]]:
        """A window of entries after `after_id`, grouped by device."""
        return self.buffer.read_grouped(after_id, limit)

    def advance(self, upto_id: int, delivered: int) -> None:
        """Persist delivery progress; on a full disk it stays in memory until a later write fits.

        The sink keeps its position in memory, so a cursor write that does not fit costs at most
        a re-send after a restart (receivers drop repeats by id), never a stopped upstream.
        """
        with unless_disk_full():
            self.buffer.advance(self.sink, upto_id, delivered)
            return
        # Reached only when the disk was full.
        log.warning("The disk holding the buffer is full: could not record upstream %s's progress (id %d);"
                    " it is kept in memory.", self.sink, upto_id, extra={"upstream": self.sink})

    def notices(self) -> list[tuple[int, OutMessage]]:
        """Gap notices as JSON messages (docs/records.md, "Gap notices"), then health notices (docs/health.md)."""
        return self._gap_notices() + self._health_notices()

    def _health_notices(self) -> list[tuple[int, OutMessage]]:
        if not self.health_topic or self.encode_health is None:
            return []
        out: list[tuple[int, OutMessage]] = []
        self._health_out = []
        for row_id, dev_eui, body in health_store.pending(self.buffer.db, self.sink):
            self._health_out.append(row_id)
            if self.allows is not None and not self.allows(dev_eui):
                self._health_acked.add(row_id)  # not shared with this upstream: nothing to send
                continue
            topic = self.health_topic if self.health_topic == ENDPOINT else self.health_topic.format(
                edge_id=self.edge_id, dev_eui=dev_eui, application="", application_id="", gateway_id="")
            payload, content_type = self.encode_health(body)
            out.append((-row_id, OutMessage(topic, payload, content_type)))
        self._advance_health()
        return out

    def _advance_health(self) -> None:
        done = 0
        while self._health_out and self._health_out[0] in self._health_acked:
            done = self._health_out.pop(0)
            self._health_acked.discard(done)
        if done:
            with unless_disk_full():
                health_store.delivered(self.buffer.db, self.sink, done)

    def _gap_notices(self) -> list[tuple[int, OutMessage]]:
        out = []
        self._announced = {}
        for gap in self.buffer.gaps(self.sink):
            self._announced[gap.id] = gap
            body: dict[str, Any] = {"type": "gap", "edge_id": self.edge_id, "upstream": self.sink,
                                    "dropped": gap.count, "first_time": gap.first_time,
                                    "last_time": gap.last_time, "reason": "buffer full"}
            out.append((gap.id, OutMessage(self.notice_topic, orjson.dumps(body), "application/json")))
        return out

    def notice_delivered(self, notice_id: int) -> None:
        """Forget a delivered notice (on a full disk a gap notice may be sent again later)."""
        if notice_id < 0:
            self._health_acked.add(-notice_id)
            self._advance_health()
            return
        with unless_disk_full():
            self.buffer.gap_delivered(notice_id, self._announced.get(notice_id))


class DeadLetterWriter:
    """Keeps a message an upstream refused, or that could not be published, as a dead letter (`edge deadletter`)."""

    def __init__(self, path: str | Path, max_bytes: int, sink: str, kind: str) -> None:
        """Remember where dead letters go; the connection is opened at the first one.

        Args:
            path: the buffer file.
            max_bytes: its size bound (dead letters keep within their share of it).
            sink: the upstream's name.
            kind: "MQTT" or "HTTP" (what a status means).
        """
        self.path = path
        self.max_bytes = max_bytes
        self.sink = sink
        self.kind = kind
        self._conn: Buffer | None = None

    def __call__(self, message: OutMessage, status: int, detail: str) -> None:
        """Store one message with the upstream's status (0: refused before sending) and why."""
        if self._conn is None:  # opened lazily, on the sink's own thread
            self._conn = Buffer(self.path, max_bytes=self.max_bytes)
        sink = self.sink
        dropped = self._conn.add_dead_letter(sink, status, message.content_type, message.topic, message.payload,
                                             detail)
        if self.kind == "HTTP" and status:
            log.error("Upstream %s rejected a message (HTTP %d); kept as a dead letter: %s", sink, status, detail)
        else:
            log.error("Upstream %s: a message could not be published (%s); kept as a dead letter"
                      " (`edge deadletter list`): %s", sink, f"reason {status:#04x}" if status else "refused"
                      " before sending", detail, extra={"upstream": sink})
        if dropped:
            log.error("Dead letters fill their share of the buffer; dropped the %d oldest. Fix the upstream"
                      " and replay (`edge deadletter replay`).", dropped, extra={"count": dropped})
