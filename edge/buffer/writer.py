"""Appending to the buffer: what one commit writes, in one transaction, and the bound on malformed messages kept."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from edge.buffer.db import SUPERSEDED, Connected, immediate, log
from edge.model import DeviceEvent, Malformed, Reading, Uplink, control_time, radio_json, readings_json

COUNTERS = ("received", "duplicates", "decoded", "chirpstack", "undecoded", "decode_failed",
            "malformed", "events", "dropped", "redecoded")

# The share of the size bound (`buffer.max_size_mb`) malformed messages may take (kept for
# inspection, never sent anywhere), and what one row takes by that measure (its bytes and
# characters plus the row itself).
MALFORMED_SHARE = 0.05
_MALFORMED_SIZE = "length(payload) + length(error) + length(topic) + 64"


@dataclass(slots=True)
class NewUplink:
    """An uplink to store, with the outcome of decoding it and the message it came in."""

    uplink: Uplink
    topic: str
    payload: bytes
    received: float
    status: int
    decoder: str
    error: str
    readings: Sequence[Reading]


@dataclass(slots=True)
class Batch:
    """Everything one commit writes: uplinks, device events, malformed messages, counter deltas."""

    uplinks: list[NewUplink] = field(default_factory=list)
    events: list[tuple[DeviceEvent, str, bytes]] = field(default_factory=list)
    malformed: list[tuple[Malformed, float]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    supersedes: list[int] = field(default_factory=list)  # rows this batch's uplinks re-decode

    def count(self, name: str, n: int = 1) -> None:
        """Add n to a counter in this batch."""
        self.counts[name] = self.counts.get(name, 0) + n

    def __len__(self) -> int:
        return len(self.uplinks) + len(self.events) + len(self.malformed)


class Writer(Connected):
    """The source side: batches committed in one transaction each (see the durability contract in store.py)."""

    max_bytes: int  # the size bound in force (sizing.py)
    _malformed_bytes: int | None  # malformed rows' size (MALFORMED_SHARE), once summed
    _malformed_warned: float  # monotonic time of the last WARNING about that share

    def append(self, batch: Batch) -> list[int]:
        """Commit a batch in one transaction; returns the ids given to its uplinks."""
        ids: list[int] = []
        try:
            with immediate(self.db) as db:
                if batch.uplinks:
                    ids = self._insert_uplinks(batch.uplinks)
                if batch.events:
                    db.executemany(
                        "INSERT INTO events(kind, dev_eui, application_id, time, summary, topic, payload)"
                        " VALUES (?,?,?,?,?,?,?)",
                        [(e.kind, e.dev_eui, e.application_id, e.time, e.summary, topic, payload)
                         for e, topic, payload in batch.events],
                    )
                if batch.malformed:
                    db.executemany(
                        "INSERT INTO malformed(received, topic, error, payload) VALUES (?,?,?,?)",
                        [(received, m.topic, m.error, m.payload) for m, received in batch.malformed],
                    )
                    self._bound_malformed([(m.topic, m.error, m.payload) for m, _ in batch.malformed])
                if batch.supersedes:
                    db.executemany(f"UPDATE uplinks SET status = {SUPERSEDED} WHERE id = ?",
                                   [(i,) for i in batch.supersedes])
                if batch.counts:
                    # An upsert: per-codec counters (`unmapped:<codec>`) appear as codecs are seen.
                    db.executemany("INSERT INTO counters(name, value) VALUES (?, ?)"
                                   " ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                                   [(name, n) for name, n in batch.counts.items()])
        except BaseException:
            self._malformed_bytes = None  # what the rolled-back batch added is gone again
            raise
        return ids

    def _insert_uplinks(self, uplinks: Sequence[NewUplink]) -> list[int]:
        """Write uplinks, their raw messages and their devices' last uplink (inside append's transaction)."""
        db = self.db
        # AUTOINCREMENT gives the next ids in sequence and this transaction holds the write
        # lock, so the batch's ids are known up front and both tables take one executemany.
        first = self.last_id() + 1
        ids = list(range(first, first + len(uplinks)))
        devices: dict[str, tuple[Any, ...]] = {}
        rows = []
        for row_id, new in zip(ids, uplinks, strict=True):
            up = new.uplink
            readings = readings_json(new.readings)
            rows.append((row_id, up.uplink_id, up.device.dev_eui, up.device.application_id,
                         up.radio.gateway_id or "", up.time, new.status, new.decoder, new.error or None,
                         readings, radio_json(up.radio)))
            d = up.device
            # The receive-clamped time: an uplink dated 2099 must not freeze the device's row.
            devices[d.dev_eui] = (d.dev_eui, d.device_name, d.application_id, d.application_name,
                                  d.device_profile_name, row_id, control_time(up.time, new.received),
                                  up.radio.fcnt, up.radio.rssi,
                                  up.radio.snr, up.radio.gateway_id, new.decoder, new.status, readings,
                                  d.device_profile_id, orjson.dumps(d.tags))
        db.executemany("INSERT INTO uplinks(id, uplink_id, dev_eui, application_id, gateway_id, time, status,"
                       " decoder, error, readings, radio) VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows)
        db.executemany("INSERT INTO raw(id, topic, payload, received) VALUES (?,?,?,?)",
                       [(row_id, new.topic, new.payload, new.received)
                        for row_id, new in zip(ids, uplinks, strict=True)])
        # One upsert per device per batch, not per uplink: fewer page writes on the SD card.
        db.executemany(
            "INSERT INTO devices VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT(dev_eui) DO UPDATE SET"
            " name=excluded.name, application_id=excluded.application_id,"
            " application_name=excluded.application_name, device_profile=excluded.device_profile,"
            " last_uplink=excluded.last_uplink, last_time=excluded.last_time, fcnt=excluded.fcnt,"
            " rssi=excluded.rssi, snr=excluded.snr, gateway_id=excluded.gateway_id,"
            " decoder=excluded.decoder, status=excluded.status, readings=excluded.readings,"
            " device_profile_id=excluded.device_profile_id, tags=excluded.tags"
            # A re-decoded older uplink must not replace the device's newest one.
            " WHERE excluded.last_time >= devices.last_time",
            devices.values(),
        )
        return ids

    def _bound_malformed(self, added: Sequence[tuple[str, str, bytes]]) -> None:
        """Keep malformed messages within MALFORMED_SHARE of the size bound, oldest dropped first.

        Anyone who can publish to ChirpStack's broker can send malformed messages; kept without a
        bound of their own, a flood of them would push out uplinks an upstream still waits for.
        Runs inside append's transaction; the table's size is summed once, then kept up to date.
        """
        limit = int(self.max_bytes * MALFORMED_SHARE)
        if self._malformed_bytes is None:
            self._malformed_bytes = int(self.db.execute(
                f"SELECT coalesce(sum({_MALFORMED_SIZE}), 0) FROM malformed").fetchone()[0])
        else:
            self._malformed_bytes += sum(len(p) + len(e) + len(t) + 64 for t, e, p in added)
        if self._malformed_bytes <= limit:
            return
        excess, cut, dropped = self._malformed_bytes - limit, 0, 0
        rows = self.db.execute(f"SELECT id, {_MALFORMED_SIZE} FROM malformed ORDER BY id")
        try:
            for row_id, size in rows:
                excess -= int(size)
                cut, dropped = int(row_id), dropped + 1
                if excess <= 0:
                    break
        finally:
            rows.close()
        self.db.execute("DELETE FROM malformed WHERE id <= ?", (cut,))
        self._malformed_bytes = None  # summed again next time (rare: only while a flood lasts)
        # While a flood lasts this happens at every batch: one WARNING a minute, the rest at DEBUG.
        now = time.monotonic()
        level = logging.WARNING if now - self._malformed_warned >= 60 else logging.DEBUG
        if level == logging.WARNING:
            self._malformed_warned = now
        log.log(level, "Malformed messages fill their share of the buffer (%.1f MB); dropped the %d oldest.",
                limit / 1e6, dropped, extra={"count": dropped})
