"""Sensor health's own thread: each round judges silence and stores changed device states with their notices."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from edge.buffer import Buffer
from edge.buffer import health as health_store
from edge.buffer.policy import unless_disk_full
from edge.config import HealthConfig
from edge.health import HealthTracker
from edge.health_state import DeviceHealth, Notice

log = logging.getLogger(__name__)

# How often sensor health stores every device's statistics (changes of state are stored at once).
HEALTH_SAVE_S = 300.0


def load_tracker(cfg: HealthConfig, buffer: Buffer, upstreams: Sequence[str]) -> HealthTracker:
    """Sensor health as stored, so a restart judges on; `upstreams` that are new start at the newest notice."""
    stored = health_store.load_states(buffer.db)
    tracker = HealthTracker(cfg, {d: DeviceHealth.from_dict(v) for d, v in stored.items()})
    health_store.start_at_newest(buffer.db, upstreams)
    return tracker


class HealthRounds:
    """Runs a HealthTracker's periodic check and keeps its changes in the buffer (edge/health.py)."""

    def __init__(self, tracker: HealthTracker, interval_s: float, open_buffer: Callable[[], Buffer],
                 known: Callable[[], Iterable[str]], listening: threading.Event, changed: Callable[[], None]) -> None:
        """Wire the rounds; nothing runs until `run` or `round` is called.

        Args:
            tracker: the sensor health the source feeds.
            interval_s: seconds between rounds (`health.check_interval_s`).
            open_buffer: opens the rounds' own buffer connection (on their thread).
            known: the devices ChirpStack knows (never heard ones become never-seen).
            listening: set while the source is connected to ChirpStack's broker (silence counts only then).
            changed: called after a round that made notices (wakes the sinks).
        """
        self.tracker = tracker
        self.interval_s = interval_s
        self.open_buffer = open_buffer
        self.known = known
        self.listening = listening
        self.changed = changed
        self._conn: Buffer | None = None  # the rounds' own connection (their thread's)
        self._saved = time.time()
        self.heartbeat = time.monotonic()

    def run(self, stop: threading.Event) -> None:
        """Judge silence and store changed states with their notices, every `interval_s`, until `stop` is set."""
        self._conn = self.open_buffer()
        self.heartbeat = time.monotonic()
        listening_since: float | None = None  # the source's current connection to ChirpStack's broker
        try:
            while True:
                now = time.time()
                if not self.listening.is_set():
                    listening_since = None
                elif listening_since is None:
                    listening_since = now
                self.round(now, listening_since)
                self.heartbeat = time.monotonic()
                if stop.wait(self.interval_s):
                    break
            self.round(time.time(), None)  # what changed since the last round, at shutdown
        finally:
            self._conn.close()

    def round(self, now: float, listening_since: float | None) -> None:
        """One round of sensor health: judge silence and fresh readings, store changes with their notices."""
        health = self.tracker
        if self._conn is None:
            self._conn = self.open_buffer()
        health.check(now, self.known(), listening_since)
        # Every device's statistics only every few minutes (and at shutdown); changes every round.
        everything = listening_since is None or now - self._saved >= HEALTH_SAVE_S
        changed, notices = health.take(now, everything)
        if everything:
            self._saved = now
        # On a full disk the changes are handed back and stored by a later round.
        with unless_disk_full(undo=lambda: health.give_back(changed, notices)):
            health_store.save(self._conn.db, [(d.dev_eui, d.state, d.changed_at, d.data) for d in changed],
                              [(n.id, n.dev_eui, n.time, notice_body(n)) for n in notices])
        if notices:
            log.info("%d device health change(s): %s", len(notices),
                     ", ".join(f"{n.dev_eui} {n.previous or 'new'}->{n.state}"
                               f"{' (' + ','.join(n.problems) + ')' if n.problems else ''}"
                               for n in notices[:5]), extra={"count": len(notices)})
            self.changed()


def notice_body(notice: Notice) -> dict[str, Any]:
    """A health notice as stored and formatted (edge.formats.health)."""
    return {"id": notice.id, "dev_eui": notice.dev_eui, "time": notice.time, "state": notice.state,
            "previous": notice.previous, "problems": list(notice.problems), "summary": notice.summary}
