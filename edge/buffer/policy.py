"""The buffer's write policy: room made when the bound or the disk is reached; what cannot be stored kept raw."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import orjson

from edge.buffer.sizing import is_disk_full
from edge.buffer.store import Buffer
from edge.buffer.writer import Batch
from edge.errors import StorageFull
from edge.model import DecodeStatus, Malformed, radio_json, readings_json

log = logging.getLogger(__name__)

# The counter each decode status is counted under (`edge status`, metrics).
STATUS_COUNTER = {
    DecodeStatus.DECODED: "decoded",
    DecodeStatus.CHIRPSTACK: "chirpstack",
    DecodeStatus.UNDECODED: "undecoded",
    DecodeStatus.FAILED: "decode_failed",
}

# Errors a record's content (not the disk) causes while it is written: a string with a lone
# surrogate, an integer beyond 64 bits, a value JSON cannot hold.
CONTENT_ERRORS = (TypeError, ValueError, OverflowError, sqlite3.InterfaceError, sqlite3.ProgrammingError,
                  sqlite3.DataError)
_MAX_KEPT_BYTES = 64 * 1024  # what a message that could not be handled keeps of its payload


@contextmanager
def unless_disk_full(undo: Callable[[], None] | None = None) -> Iterator[None]:
    """Let the write inside fail on a full disk (it is retried or redone later); raise any other database error.

    Args:
        undo: called when the write fails for any database reason, before deciding (e.g. to hand
            back what was taken for it).
    """
    try:
        yield
    except sqlite3.OperationalError as exc:
        if undo is not None:
            undo()
        if not is_disk_full(exc):
            raise


def store(buffer: Buffer, batch: Batch) -> None:
    """Commit a batch, making room by the size policy first when the bound or the disk requires it.

    Raises:
        StorageFull: the disk is so full that not even dropping the oldest uplinks made room;
            the batch stays unacknowledged at the broker and the source retries after a backoff.
    """
    was_short = buffer.max_bytes < buffer.limit_bytes
    is_short = buffer.fit_to_disk() < buffer.limit_bytes
    if is_short and not was_short:
        log.error("The disk holding the buffer is almost full: the buffer is now bounded at %.1f MB instead"
                  " of buffer.max_size_mb (%.0f MB); past that the oldest uplinks are dropped. Free space"
                  " on the disk or lower buffer.max_size_mb.", buffer.max_bytes / 1e6, buffer.limit_bytes / 1e6)
    elif was_short and not is_short:
        log.warning("The disk holding the buffer has room again; the buffer is bounded by buffer.max_size_mb"
                    " (%.0f MB) again.", buffer.limit_bytes / 1e6)
    # About what the batch takes in the database (raw message, records, indexes): room is made
    # before appending, so that freed pages are reused and the file does not grow.
    reserve = sum(2 * len(u.payload) + 512 for u in batch.uplinks) if is_short else 0
    try:
        if buffer.used_bytes() + reserve > buffer.max_bytes:
            buffer.enforce_size(reserve)
        buffer.append(batch)
        return
    except sqlite3.OperationalError as exc:
        if not is_disk_full(exc):
            raise
    # Disk (or quota) full: make room by the size policy, oldest first, counted, with gap
    # notices, a growing share at a time. Every step checkpoints and truncates the WAL first,
    # because on a full disk even a DELETE needs WAL space.
    dropped, fraction = 0, 0.05
    for _ in range(6):
        try:
            dropped += buffer.make_room(fraction)
            buffer.append(batch)
            break
        except sqlite3.OperationalError as again:
            if not is_disk_full(again):
                raise
            fraction = min(0.5, fraction * 2)
    else:
        raise StorageFull(f"the disk holding {buffer.path} is full and dropping the oldest"
                          f" uplinks ({dropped}) did not make room")
    log.error("The disk holding the buffer is full; dropped the %d oldest uplinks to keep"
              " receiving. Free space or lower buffer.max_size_mb.", dropped, extra={"count": dropped})


def reason(exc: BaseException) -> str:
    """An exception as a bounded one-line reason (its text may quote foreign data)."""
    try:
        text = f"{type(exc).__name__}: {exc}"
    except Exception:  # noqa: BLE001 - str() of a hostile argument may itself fail
        text = type(exc).__name__
    text = text.replace("\n", " ")
    return text if len(text) <= 512 else text[:512] + "..."


def _safe(text: str) -> str:
    """`text` with anything UTF-8 cannot encode (lone surrogates) replaced."""
    return text.encode("utf-8", "replace").decode("utf-8")


def _storable_text(*texts: str) -> None:
    """Raise UnicodeEncodeError (a ValueError) when one of `texts` cannot be stored as UTF-8."""
    for text in texts:
        text.encode("utf-8")


def kept_raw(topic: str, payload: object, why: str) -> Malformed:
    """A message kept raw (at most _MAX_KEPT_BYTES of it) with a bounded reason."""
    raw = payload if isinstance(payload, bytes) else b""
    if len(raw) > _MAX_KEPT_BYTES:
        why += f" (payload of {len(raw)} bytes kept truncated)"
        raw = raw[:_MAX_KEPT_BYTES]
    return Malformed(topic, raw, why)


def add_malformed(batch: Batch, event: Malformed, received: float) -> None:
    """Keep a message that could not be parsed or stored in the batch, for inspection."""
    batch.count("malformed")
    batch.malformed.append((event, received))
    log.warning("Malformed message on %s stored for inspection: %s", event.topic[:200], event.error,
                extra={"topic": event.topic[:200]})


def scrub(batch: Batch) -> None:
    """Make every record of a batch storable: offenders become failed decodes or malformed messages."""
    uplinks = []
    for new in batch.uplinks:
        try:
            readings_json(new.readings)
            radio_json(new.uplink.radio)
            orjson.dumps(new.uplink.device.tags)
            _storable_text(new.uplink.uplink_id, new.uplink.device.dev_eui, new.uplink.device.application_id,
                           new.uplink.device.device_name, new.uplink.device.application_name,
                           new.uplink.device.device_profile_name, new.uplink.device.device_profile_id,
                           new.decoder, new.error, new.topic)
            uplinks.append(new)
        except CONTENT_ERRORS as exc:
            batch.count(STATUS_COUNTER[new.status], -1)  # counted as malformed instead
            add_malformed(batch, kept_raw(_safe(new.topic), new.payload, f"could not be stored: {reason(exc)}"),
                          new.received)
    batch.uplinks = uplinks
    events = []
    for event, topic, payload in batch.events:
        try:
            _storable_text(event.kind, event.dev_eui, event.application_id, event.summary, event.event_id, topic)
            events.append((event, topic, payload))
        except CONTENT_ERRORS as exc:
            batch.count("events", -1)
            add_malformed(batch, kept_raw(_safe(topic), payload, f"could not be stored: {reason(exc)}"), event.time)
    batch.events = events
    batch.malformed = [(Malformed(_safe(m.topic), m.payload, _safe(m.error)), received)
                       for m, received in batch.malformed]
