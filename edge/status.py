"""The gateway's status as one model: the page, /health, metrics, `edge status` and doctor all read it.

Backlogs are read one way only (read_buffer): from the uplinks' id span and each sink's cursor, in
O(log n), never by counting the backlog's rows (a `count(*)` over a long backlog takes seconds on
an SD card just when an upstream has been away for long). The live model (StateReader) adds what
only the running service knows: the sinks' in-memory link state and the problems /health reports.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from edge.buffer import Buffer
from edge.config import Config
from edge.errors import EdgeError, StorageError

# Enough for a technician's phone; the page is not a device list (that is `edge status`).
PAGE_DEVICES = 50
# Sensors listed in the page's health table, the unwell first (`edge devices health` lists all).
PAGE_HEALTH = 500
RECENT_FAILURES = 10
RECENT_MALFORMED = 5
# Decode failures are found by scanning the uplinks table (no index covers `status`): about a
# second per million buffered uplinks from a cold cache on a PC's SSD, far more on an SD card.
# They are re-read at most this often, so neither the page polling every 5 s nor frequent
# scrapes keep the card busy.
DECODE_ERRORS_TTL_S = 30.0


def upstream_names(cfg: Config) -> list[str]:
    """Every configured upstream's name, MQTT ones first, in configuration order."""
    return [u.name for u in cfg.upstreams] + [u.name for u in cfg.http_upstreams]


# The buffer's per-codec counters of fields no field map covered (edge.decoding.registry counts
# them as `unmapped:<codec key>`). At most UNMAPPED_SHOWN codecs are shown or labelled apart, the
# largest first; the rest are summed under "other", so metrics keep a bounded label set.
UNMAPPED_PREFIX = "unmapped:"
UNMAPPED_SHOWN = 50


def unmapped_by_codec(counters: dict[str, int], limit: int = UNMAPPED_SHOWN) -> dict[str, int]:
    """Unmapped field counts by codec key from the buffer's counters, largest first, capped at `limit`."""
    found = sorted(((name[len(UNMAPPED_PREFIX):], n) for name, n in counters.items()
                    if name.startswith(UNMAPPED_PREFIX) and n), key=lambda item: (-item[1], item[0]))
    shown = dict(found[:limit])
    rest = sum(n for _, n in found[limit:])
    if rest:
        shown["other"] = shown.get("other", 0) + rest
    return shown


def plain_counters(counters: dict[str, int]) -> dict[str, int]:
    """The buffer's counters without the per-codec unmapped ones."""
    return {name: n for name, n in counters.items() if not name.startswith(UNMAPPED_PREFIX)}


# -- the model ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Progress:
    """One upstream's delivery progress as the buffer holds it; None where the buffer could not be read."""

    name: str
    backlog: int | None = None
    oldest_undelivered_age_s: float | None = None
    delivered: int | None = None
    dropped: int | None = None
    last_delivery: float | None = None
    cursor: int | None = None  # None also when the upstream never started (no cursor row yet)


@dataclass(frozen=True)
class UpstreamStatus(Progress):
    """An upstream's progress plus its running sink's link state (in memory: only the service has it)."""

    connected: bool = False
    disconnected_for_s: float | None = None
    published: int = 0
    acknowledged: int = 0
    rejected: int = 0
    reconnects: int = 0
    last_error: str = ""  # redacted
    stuck: bool = False

    def document(self) -> dict[str, Any]:
        """The upstream as /api/status shows it."""
        return {key: getattr(self, key) for key in _PAGE_UPSTREAM}


_PAGE_UPSTREAM = ("name", "backlog", "oldest_undelivered_age_s", "delivered", "dropped", "last_delivery",
                  "connected", "disconnected_for_s", "published", "acknowledged", "rejected", "reconnects",
                  "last_error", "stuck")


@dataclass(frozen=True)
class BufferState:
    """What the buffer says without the service: its counters, size, rows and every upstream's progress."""

    counters: dict[str, int]
    used_bytes: int
    uplinks: int
    progress: tuple[Progress, ...]


def read_buffer(buf: Buffer, names: Sequence[str], now: float, *, unconfigured: bool = False) -> BufferState:
    """The buffer's state, with the backlog of each upstream in `names` (Buffer.progress); StorageError if unreadable.

    Args:
        buf: an open buffer (read-only is enough).
        names: the configured upstreams, reported in this order.
        now: the time ages are measured to.
        unconfigured: also report sinks the buffer holds a cursor for that `names` lacks.
    """
    counters, used = buf.counters(), buf.used_bytes()
    rows, progress = buf.progress(names, now, unconfigured)
    return BufferState(counters, used, rows, tuple(Progress(**p) for p in progress))


@dataclass(frozen=True)
class Snapshot:
    """The gateway's state at one moment, as every endpoint of the running service reports it."""

    time: float
    source_connected: bool
    source_reconnects: int
    commits: int
    sinks: tuple[UpstreamStatus, ...]
    counters: dict[str, int] = field(default_factory=dict)
    used_bytes: int = 0
    uplinks: int = 0
    decode_errors: dict[str, int] = field(default_factory=dict)
    devices: list[dict[str, Any]] = field(default_factory=list)
    recent_failures: list[dict[str, Any]] = field(default_factory=list)
    malformed: list[dict[str, Any]] = field(default_factory=list)
    buffer_error: str = ""
    problems: list[str] = field(default_factory=list)
    health_counts: dict[str, int] = field(default_factory=dict)  # "state:<s>" / "problem:<kind>" -> devices
    health: list[dict[str, Any]] = field(default_factory=list)  # per device, the unwell first (details only)

    @property
    def healthy(self) -> bool:
        """True when nothing needs a technician."""
        return not self.problems

    @property
    def upstreams(self) -> list[dict[str, Any]]:
        """Every upstream as /api/status shows it."""
        return [u.document() for u in self.sinks]


# -- what the live model reads from the pipeline ----------------------------------------------------
# Read-only properties, so the pipeline's plain attributes satisfy them and tests can pass fakes.

class SourceView(Protocol):
    """The ChirpStack source as the status model sees it."""

    @property
    def connected(self) -> threading.Event:
        """Set while subscribed at ChirpStack's broker."""

    @property
    def reconnects(self) -> int:
        """Connections lost since start."""


class SinkStatsView(Protocol):
    """A sink's in-memory counters (edge.sinks.base.SinkStats, or HttpSink's HttpSinkStats)."""

    @property
    def published(self) -> int:
        """Messages published (MQTT) or requests sent (HTTP)."""

    @property
    def acknowledged(self) -> int:
        """Messages the upstream acknowledged."""

    @property
    def rejected(self) -> int:
        """Messages the upstream refused for good."""

    @property
    def reconnects(self) -> int:
        """Connections lost (MQTT) or requests failed below HTTP."""

    @property
    def connected(self) -> bool:
        """True while the upstream is reachable."""

    @property
    def last_error(self) -> str:
        """The latest delivery problem, or ''."""


class SinkView(Protocol):
    """One upstream's sink."""

    @property
    def name(self) -> str:
        """The upstream's configured name."""

    @property
    def stats(self) -> SinkStatsView:
        """Its in-memory counters."""


class PipelineView(Protocol):
    """What the status model needs from edge.pipeline.Pipeline (it never imports it)."""

    @property
    def cfg(self) -> Config:
        """The configuration: buffer path, edge id, upstream names."""

    @property
    def source(self) -> SourceView:
        """The ChirpStack source."""

    @property
    def sinks(self) -> Sequence[SinkView]:
        """One sink per upstream."""

    @property
    def commits(self) -> int:
        """Batches committed since start."""


# URLs may carry credentials or API keys in their user info or query; error texts are shown as
# they are otherwise, because the technician needs them.
_URL_SECRETS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?:[^/@\s]*@)?(?P<rest>[^?\s]*)(?:\?\S*)?", re.I)
_KEY_VALUE_SECRETS = re.compile(r"(?i)\b(token|password|passwd|secret|api[_-]?key|authorization)(\s*[=:]\s*)\S+")
_AUTH_SCHEMES = re.compile(r"(?i)\b(bearer|basic)\s+\S+")


def redact(text: str) -> str:
    """`text` with URL user info, URL queries, credentials and key=value secrets replaced by '***'."""
    text = _URL_SECRETS.sub(lambda m: m["scheme"] + m["rest"] + ("?***" if "?" in m[0] else ""), text)
    text = _AUTH_SCHEMES.sub(r"\1 ***", text)
    return _KEY_VALUE_SECRETS.sub(r"\1\2***", text)


def _linked(p: Progress, stats: SinkStatsView | None, now: float, stuck_after_s: float) -> UpstreamStatus:
    """An upstream's progress with its running sink's link state (all zero when it has no sink)."""
    age = p.oldest_undelivered_age_s
    since = getattr(stats, "disconnected_since", None) if stats else None
    return UpstreamStatus(
        **asdict(p),
        connected=bool(stats and stats.connected),
        disconnected_for_s=None if since is None or (stats and stats.connected) else round(max(0.0, now - since), 1),
        published=stats.published if stats else 0,
        acknowledged=stats.acknowledged if stats else 0,
        rejected=stats.rejected if stats else 0,
        reconnects=stats.reconnects if stats else 0,
        last_error=redact(stats.last_error) if stats else "",
        stuck=age is not None and age > stuck_after_s,
    )


class StateReader:
    """Reads the running gateway's state for every endpoint: the buffer (read-only) and in-memory stats.

    Args:
        pipeline: the running pipeline.
        stuck_after_s: an upstream whose oldest undelivered uplink is older than this is stuck.
        stalled: returns the pipeline threads that stopped making progress.
    """

    def __init__(self, pipeline: PipelineView, stuck_after_s: float,
                 stalled: Callable[[], list[str]] | None = None) -> None:
        self.pipeline = pipeline
        self.stuck_after_s = stuck_after_s
        self.stalled = stalled
        self._lock = threading.Lock()
        self._failures: tuple[float, dict[str, int], list[dict[str, Any]]] | None = None

    def snapshot(self, *, details: bool = False, failures: bool = True, devices: int = PAGE_DEVICES) -> Snapshot:
        """The state now, with health judged.

        Args:
            details: also read what only the page shows (devices' last uplinks, malformed messages).
            failures: read the decode failures (cached for DECODE_ERRORS_TTL_S; health needs none).
            devices: how many devices' last uplinks to read when `details` is set.

        Returns:
            The snapshot; a buffer that cannot be read is reported in `buffer_error` and `problems`.
        """
        pipeline = self.pipeline
        cfg = pipeline.cfg
        now = time.time()
        source = pipeline.source
        connected, reconnects, commits = source.connected.is_set(), source.reconnects, pipeline.commits
        names = upstream_names(cfg)
        state = BufferState({}, 0, 0, tuple(Progress(n) for n in names))
        decode_errors: dict[str, int] = {}
        recent: list[dict[str, Any]] = []
        shown: list[dict[str, Any]] = []
        malformed: list[dict[str, Any]] = []
        error = ""
        try:
            buf = Buffer(cfg.buffer.path, readonly=True)
        except EdgeError as exc:
            error = str(exc)
        else:
            try:
                state = read_buffer(buf, names, now)
                if failures:
                    decode_errors, recent = self._decode_failures(buf)
                if details:
                    shown = buf.devices(devices)
                    malformed = buf.recent_malformed(RECENT_MALFORMED)
            except StorageError as exc:
                error = f"{cfg.buffer.path}: {exc}"
            finally:
                buf.close()
        stats = {s.name: s.stats for s in pipeline.sinks}
        sinks = tuple(_linked(p, stats.get(p.name), now, self.stuck_after_s) for p in state.progress)
        # Sensor health (edge/health.py) is the sensors' state, not the gateway's: it never fails /health.
        tracker = getattr(pipeline, "health", None)
        return Snapshot(
            time=now, source_connected=connected, source_reconnects=reconnects, commits=commits, sinks=sinks,
            counters=state.counters, used_bytes=state.used_bytes,
            uplinks=state.uplinks, decode_errors=decode_errors, devices=shown, recent_failures=recent,
            malformed=malformed, buffer_error=error, problems=self._problems(connected, sinks, error),
            health_counts=tracker.counts() if tracker is not None else {},
            health=tracker.report(now)[:PAGE_HEALTH] if tracker is not None and details else [])

    def _problems(self, source_connected: bool, sinks: Sequence[UpstreamStatus], buffer_error: str) -> list[str]:
        """What makes /health fail, each in a sentence for the technician."""
        problems = []
        if not source_connected:
            problems.append("ChirpStack source is disconnected")
        down_after = self.pipeline.cfg.web.disconnected_after_s
        for p in sinks:
            down = p.disconnected_for_s
            if down is not None and down > down_after:
                problems.append(f"upstream {p.name} has been unreachable for {down:.0f} s"
                                f" (limit {down_after:g} s): {p.last_error or 'no connection'}")
            if p.stuck:
                problems.append(f"upstream {p.name} is stuck: its oldest undelivered uplink is"
                                f" {p.oldest_undelivered_age_s:.0f} s old (limit {self.stuck_after_s:g} s)")
        if buffer_error:
            problems.append(f"buffer unreadable: {buffer_error}")
        for thread in self.stalled() if self.stalled is not None else ():
            problems.append(f"no progress from {thread}: the service is hung and should be restarted")
        return problems

    def _decode_failures(self, buf: Buffer) -> tuple[dict[str, int], list[dict[str, Any]]]:
        now = time.monotonic()
        with self._lock:
            if self._failures is not None and now - self._failures[0] < DECODE_ERRORS_TTL_S:
                return self._failures[1], self._failures[2]
        by_decoder, recent = buf.decode_failures(RECENT_FAILURES)
        with self._lock:
            self._failures = (now, by_decoder, recent)
        return by_decoder, recent
