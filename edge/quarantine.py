"""The quarantine of uplinks a native decoder hung on: a small JSON file next to the buffer.

A Python decoder has no time limit (JS codecs do): one that loops forever on a payload hangs the
source thread, the watchdog restarts the service, and the broker redelivers the unacknowledged
uplink, which would hang it again. When the service sees the source stalled inside a decoder it
records that uplink here (`<buffer path>.quarantine`); after the restart the pipeline stores it raw
with a decode error instead of decoding it, so the gateway moves on and `edge redecode` can decode
it once the decoder is fixed. Once its uplink is committed raw an entry is only a reminder for
`edge status` and `edge doctor` (`stored`); it leaves the file when `edge redecode` decodes that
uplink, or after MAX_AGE_S. The file is rewritten atomically (temp file, fsync, rename, fsync of
the directory).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

log = logging.getLogger(__name__)

SUFFIX = ".quarantine"
MAX_AGE_S = 7 * 86400.0  # an uplink the broker never redelivers (session expired) is forgotten after that
MAX_ENTRIES = 100  # each entry cost a restart; more than this means a decoder to block, not uplinks to list


@dataclass(frozen=True, slots=True)
class Quarantined:
    """One uplink a decoder hung on."""

    uplink_id: str
    dev_eui: str
    decoder: str
    time: float  # when the hang was detected (Unix time)
    stored: bool = False  # committed raw (with error()) after the broker redelivered it

    def error(self) -> str:
        """The decode error its stored raw uplink carries."""
        return (f"not decoded: decoder {self.decoder} hung on this uplink before (quarantined);"
                f" fix the decoder, then run edge redecode")


def path_for(buffer_path: str | Path) -> Path:
    """Where the quarantine of a buffer lives."""
    return Path(f"{buffer_path}{SUFFIX}")


def load(path: Path, now: float | None = None) -> dict[str, Quarantined]:
    """The entries younger than MAX_AGE_S, by uplink id; empty when there is no (readable) file."""
    try:
        raw = json.loads(path.read_bytes())
        items = raw["uplinks"]
        entries = [Quarantined(str(e["uplink_id"]), str(e.get("dev_eui", "")), str(e.get("decoder", "")),
                               float(e.get("time", 0.0)), bool(e.get("stored", False))) for e in items]
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, TypeError, KeyError) as exc:
        # A damaged file must not stop the gateway: at worst one more restart re-creates the entry.
        log.warning("Ignoring the unreadable quarantine file %s: %s", path, exc)
        return {}
    cutoff = (time.time() if now is None else now) - MAX_AGE_S
    return {e.uplink_id: e for e in entries if e.time >= cutoff}


def save(path: Path, entries: Iterable[Quarantined]) -> None:
    """Replace the file with `entries` atomically (removed when there are none)."""
    kept = sorted(entries, key=lambda e: e.time)[-MAX_ENTRIES:]
    if not kept:
        path.unlink(missing_ok=True)
        _sync_dir(path.parent)
        return
    body = json.dumps({"uplinks": [asdict(e) for e in kept]}, indent=1).encode()
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)  # created 0600
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(body)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _sync_dir(path.parent)


def add(path: Path, entry: Quarantined) -> None:
    """Add one entry to the file (older ones pruned)."""
    entries = load(path, entry.time)
    entries[entry.uplink_id] = entry
    save(path, entries.values())


def mark_stored(path: Path, uplink_ids: Iterable[str]) -> None:
    """Record that these quarantined uplinks are committed raw (no longer awaited from the broker)."""
    entries = load(path)
    changed = [uid for uid in uplink_ids if uid in entries and not entries[uid].stored]
    for uid in changed:
        entries[uid] = replace(entries[uid], stored=True)
    if changed:
        save(path, entries.values())


def remove(path: Path, uplink_ids: Iterable[str]) -> None:
    """Drop entries from the file, if present (their uplinks are decoded now)."""
    entries = load(path)
    gone = [uid for uid in uplink_ids if entries.pop(uid, None) is not None]
    if gone:
        save(path, entries.values())


def summary(entries: Iterable[Quarantined]) -> str:
    """One line for `edge status` and `edge doctor`, e.g. '1 uplink quarantined: decoder acme/x hung on it ...'."""
    items = list(entries)
    stored = sum(1 for e in items if e.stored)
    decoders = ", ".join(sorted({e.decoder for e in items}))
    plural = "s" if len(items) != 1 else ""
    return (f"{len(items)} uplink{plural} quarantined: decoder {decoders} hung on {'them' if plural else 'it'}"
            f" ({stored} stored raw, {len(items) - stored} awaiting redelivery)")


FIX = "fix the decoder or block it (decoding.plugins_block), then run `edge redecode`"


def _sync_dir(directory: Path) -> None:
    # The rename (or unlink) is durable only once the directory entry is on disk.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
