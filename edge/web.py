"""Loopback HTTP server for operators: Prometheus metrics, a health check and a read-only status page."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import logging
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

import orjson
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import CollectorRegistry

from edge import present
from edge.buffer import Buffer
from edge.config import Config
from edge.errors import EdgeError, StorageError
from edge.model import DecodeStatus
from edge.telemetry import UNMAPPED_SHOWN, plain_counters, unmapped_by_codec

log = logging.getLogger(__name__)

DEFAULT_PORT = 9108
# Enough for a technician's phone; the page is not a device list (that is `edge status`).
PAGE_DEVICES = 50
# Sensors listed in the page's health table, the unwell first (`edge devices health` lists all).
PAGE_HEALTH = 500
MAX_DEVICES = 1000
RECENT_FAILURES = 10
RECENT_MALFORMED = 5

# The buffer's durable counters (edge.buffer.store.COUNTERS) as Prometheus counters.
_COUNTER_HELP = {
    "received": ("edge_received", "MQTT messages received from ChirpStack (uplinks, device events, malformed)."),
    "duplicates": ("edge_duplicates", "Uplinks dropped because their uplink id was already stored."),
    "decoded": ("edge_decoded", "Uplinks decoded by a decoder on the gateway."),
    "chirpstack": ("edge_chirpstack_decoded", "Uplinks whose readings came from ChirpStack's own codec."),
    "undecoded": ("edge_undecoded", "Uplinks stored raw: no decoder and no ChirpStack object."),
    "decode_failed": ("edge_decode_errors", "Uplinks whose decoder failed (stored raw for `edge redecode`)."),
    "malformed": ("edge_malformed", "Messages that could not be parsed (stored for inspection)."),
    "events": ("edge_device_events", "Device events (join, status, log, ack, txack, location) stored."),
    "dropped": ("edge_dropped", "Undelivered uplinks dropped because the buffer was full."),
    "redecoded": ("edge_redecoded", "Uplinks stored again by `edge redecode`."),
}


# -- what the server reads from the pipeline ----------------------------------------------------
# Read-only properties, so the pipeline's plain attributes satisfy them and tests can pass fakes.

class SourceView(Protocol):
    """The ChirpStack source as the server sees it."""

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
    """What the server needs from edge.pipeline.Pipeline (the server never imports it)."""

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


# -- reading the state ----------------------------------------------------------------------------

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


@dataclass
class Snapshot:
    """The gateway's state at one moment, as every endpoint reports it."""

    time: float
    source_connected: bool
    source_reconnects: int
    commits: int
    upstreams: list[dict[str, Any]]
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


# Decode failures are found by scanning the uplinks table (no index covers `status`): about a
# second per million buffered uplinks from a cold cache on a PC's SSD, far more on an SD card.
# They are re-read at most this often, so neither the page polling every 5 s nor frequent
# scrapes keep the card busy.
DECODE_ERRORS_TTL_S = 30.0


class StateReader:
    """Reads the gateway's state for every endpoint: the buffer (read-only) and in-memory stats.

    Args:
        pipeline: the running pipeline.
        stuck_after_s: an upstream whose oldest undelivered uplink is older than this is stuck.
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
        source = pipeline.source
        snap = Snapshot(time=time.time(), source_connected=source.connected.is_set(),
                        source_reconnects=source.reconnects, commits=pipeline.commits, upstreams=[])
        names = [u.name for u in cfg.upstreams] + [u.name for u in cfg.http_upstreams]
        progress: list[dict[str, Any]] = [
            {"name": n, "backlog": None, "oldest_undelivered_age_s": None, "delivered": None, "dropped": None,
             "last_delivery": None} for n in names]
        try:
            buf = Buffer(cfg.buffer.path, readonly=True)
        except EdgeError as exc:
            snap.buffer_error = str(exc)
        else:
            try:
                snap.counters = buf.counters()
                snap.used_bytes = buf.used_bytes()
                snap.uplinks, progress = _progress(buf, names, snap.time)
                if failures:
                    snap.decode_errors, snap.recent_failures = self._decode_failures(buf)
                if details:
                    snap.devices = buf.devices(devices)
                    snap.malformed = buf.recent_malformed(RECENT_MALFORMED)
            except StorageError as exc:
                snap.buffer_error = f"{cfg.buffer.path}: {exc}"
            finally:
                buf.close()
        sinks = {s.name: s for s in pipeline.sinks}
        for p in progress:
            sink = sinks.get(p["name"])
            stats = sink.stats if sink is not None else None
            age = p["oldest_undelivered_age_s"]
            since = getattr(stats, "disconnected_since", None) if stats else None
            p.update({
                "connected": bool(stats and stats.connected),
                "disconnected_for_s": None if since is None or (stats and stats.connected)
                else round(max(0.0, snap.time - since), 1),
                "published": stats.published if stats else 0,
                "acknowledged": stats.acknowledged if stats else 0,
                "rejected": stats.rejected if stats else 0,
                "reconnects": stats.reconnects if stats else 0,
                "last_error": redact(stats.last_error) if stats else "",
                "stuck": age is not None and age > self.stuck_after_s,
            })
            snap.upstreams.append(p)
        if not snap.source_connected:
            snap.problems.append("ChirpStack source is disconnected")
        down_after = pipeline.cfg.web.disconnected_after_s
        for p in snap.upstreams:
            down = p["disconnected_for_s"]
            if down is not None and down > down_after:
                snap.problems.append(f"upstream {p['name']} has been unreachable for {down:.0f} s"
                                     f" (limit {down_after:g} s): {p['last_error'] or 'no connection'}")
            if p["stuck"]:
                snap.problems.append(f"upstream {p['name']} is stuck: its oldest undelivered uplink is"
                                     f" {p['oldest_undelivered_age_s']:.0f} s old (limit {self.stuck_after_s:g} s)")
        if snap.buffer_error:
            snap.problems.append(f"buffer unreadable: {snap.buffer_error}")
        for thread in self.stalled() if self.stalled is not None else ():
            snap.problems.append(f"no progress from {thread}: the service is hung and should be restarted")
        # Sensor health (edge/health.py) is the sensors' state, not the gateway's: it never fails /health.
        tracker = getattr(pipeline, "health", None)
        if tracker is not None:
            snap.health_counts = tracker.counts()
            if details:
                snap.health = tracker.report(snap.time)[:PAGE_HEALTH]
        return snap

    def _decode_failures(self, buf: Buffer) -> tuple[dict[str, int], list[dict[str, Any]]]:
        now = time.monotonic()
        with self._lock:
            if self._failures is not None and now - self._failures[0] < DECODE_ERRORS_TTL_S:
                return self._failures[1], self._failures[2]
        by_decoder, recent = buf.decode_failures(RECENT_FAILURES)
        with self._lock:
            self._failures = (now, by_decoder, recent)
        return by_decoder, recent


def _progress(buf: Buffer, names: Sequence[str], now: float) -> tuple[int, list[dict[str, Any]]]:
    """Rows in the buffer, and each configured upstream's backlog, age and totals (Buffer.progress)."""
    return buf.progress(names, now)


def status_document(snap: Snapshot, edge_id: str, max_bytes: int, stuck_after_s: float) -> dict[str, Any]:
    """The /api/status JSON body: what the status page shows."""
    devices = []
    for d in snap.devices:
        status = d["status"]
        devices.append({
            "dev_eui": d["dev_eui"], "name": d["name"], "application": d["application_name"],
            "last_time": d["last_time"], "fcnt": d["fcnt"], "rssi": d["rssi"], "snr": d["snr"],
            "gateway_id": d["gateway_id"], "decoder": d["decoder"],
            "status": DecodeStatus.NAMES[status] if 0 <= status < len(DecodeStatus.NAMES) else str(status),
            # Shown as every technician view shows them (edge/present.py: °C, ppm, hPa...).
            "readings": [{**r, "text": present.reading(r["n"], r.get("v", r.get("vs", r.get("vb"))), r.get("u"))}
                         for r in d["readings"]],
        })
    return {
        "edge_id": edge_id,
        "now": snap.time,
        "healthy": snap.healthy,
        "problems": snap.problems,
        "stuck_after_s": stuck_after_s,
        "source": {"connected": snap.source_connected, "reconnects": snap.source_reconnects,
                   "commits": snap.commits},
        "buffer": {"used_bytes": snap.used_bytes, "max_bytes": max_bytes, "uplinks": snap.uplinks,
                   "error": snap.buffer_error},
        "counters": plain_counters(snap.counters),
        "unmapped": unmapped_by_codec(snap.counters),
        "upstreams": snap.upstreams,
        "devices": devices,
        "decode_errors": {"by_decoder": snap.decode_errors, "recent": snap.recent_failures},
        "malformed": [{"received": m["received"], "topic": m["topic"], "error": m["error"]} for m in snap.malformed],
        "health": {"counts": snap.health_counts, "devices": snap.health},
    }


# -- Prometheus ---------------------------------------------------------------------------------------

_PROFILE_JS = re.compile(r"profile-js/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def decoder_label(decoder: str, known: frozenset[str]) -> str:
    """A stored decoder name as a Prometheus label value: known ids as they are, anything else "unknown".

    The name may come from a device's ChirpStack tag, i.e. from outside: taken as it is, every new
    tag would be a new time series (and a tag holding a newline or quote a broken exposition line).
    A device profile's own codec is one value for all profiles, `profile-js`.
    """
    if decoder in known or decoder in ("", "chirpstack"):
        return decoder or "none"
    if _PROFILE_JS.fullmatch(decoder):
        return "profile-js"
    return "unknown"


class EdgeCollector:
    """Reads the gateway's state at scrape time, so nothing is counted twice or kept in memory."""

    def __init__(self, state: StateReader) -> None:
        self.state = state
        self._known: tuple[float, frozenset[str]] | None = None

    def collect(self) -> Iterator[Metric]:
        """One metric family per quantity; upstream metrics are labelled `upstream`."""
        snap = self.state.snapshot()
        cfg = self.state.pipeline.cfg
        info = GaugeMetricFamily("edge_info", "This gateway (value is always 1).", labels=["edge_id"])
        info.add_metric([cfg.edge_id], 1)
        yield info
        yield GaugeMetricFamily("edge_healthy", "1 when /health reports 200, else 0.", value=int(snap.healthy))
        yield GaugeMetricFamily("edge_source_connected", "1 while subscribed at ChirpStack's MQTT broker.",
                                value=int(snap.source_connected))
        yield CounterMetricFamily("edge_source_reconnects", "Connections to ChirpStack's broker lost since start.",
                                  value=snap.source_reconnects)
        yield CounterMetricFamily("edge_commits", "Batches committed to the buffer since start.", value=snap.commits)
        yield GaugeMetricFamily("edge_buffer_readable", "1 when the buffer could be read for this scrape.",
                                value=int(not snap.buffer_error))
        # Without the buffer there is nothing true to say about what it holds: leave those out
        # rather than report zeros that look like an empty buffer.
        if snap.buffer_error:
            return
        for name, (metric, doc) in _COUNTER_HELP.items():
            yield CounterMetricFamily(metric, doc, value=snap.counters.get(name, 0))
        yield GaugeMetricFamily("edge_buffer_bytes", "Bytes of the buffer database in use.", value=snap.used_bytes)
        yield GaugeMetricFamily("edge_buffer_max_bytes", "The buffer's size bound (buffer.max_size_mb).",
                                value=int(cfg.buffer.max_size_mb * 1024 * 1024))
        yield GaugeMetricFamily("edge_buffer_uplinks", "Uplinks held in the buffer.", value=snap.uplinks)
        # A gauge, not a counter: rows leave the buffer when it trims or `edge redecode` succeeds.
        failed = GaugeMetricFamily("edge_buffer_decode_errors",
                                   "Uplinks in the buffer whose decoder failed, by decoder.", labels=["decoder"])
        by_label: dict[str, int] = {}
        known = self._known_decoders()
        for decoder, n in snap.decode_errors.items():
            label = decoder_label(decoder, known)
            by_label[label] = by_label.get(label, 0) + n
        for label, n in sorted(by_label.items()):
            failed.add_metric([label], n)
        yield failed
        unmapped = CounterMetricFamily("edge_unmapped_fields",
                                       "Decoded fields no field map covered (sent without a unit), by codec key"
                                       f" (the {UNMAPPED_SHOWN} largest; the rest as 'other').", labels=["codec"])
        for codec, n in unmapped_by_codec(snap.counters).items():
            unmapped.add_metric([codec], n)
        yield unmapped
        yield from self._upstreams(snap)
        if snap.health_counts:
            # Counts per state and problem kind: a bounded number of series whatever the fleet's size.
            states = GaugeMetricFamily("edge_devices", "Devices by health state (docs/health.md).", labels=["state"])
            problems = GaugeMetricFamily("edge_device_problems", "Devices with a health problem, by kind.",
                                         labels=["problem"])
            for key, n in sorted(snap.health_counts.items()):
                kind, _, name = key.partition(":")
                (states if kind == "state" else problems).add_metric([name], n)
            yield states
            yield problems

    def _known_decoders(self) -> frozenset[str]:
        """The decoder ids this gateway has: the only values the `decoder` label may take besides two fixed ones."""
        registry = getattr(self.state.pipeline, "registry", None)
        now = time.monotonic()
        if self._known is None or now - self._known[0] > DECODE_ERRORS_TTL_S:
            ids = frozenset(registry.ids()) if registry is not None and hasattr(registry, "ids") else frozenset()
            self._known = (now, ids)
        return self._known[1]

    def _upstreams(self, snap: Snapshot) -> Iterator[Metric]:
        families: list[tuple[str, GaugeMetricFamily | CounterMetricFamily]] = [
            ("backlog", GaugeMetricFamily("edge_upstream_backlog_uplinks",
                                          "Buffered uplinks not yet delivered to the upstream.", labels=["upstream"])),
            ("oldest_undelivered_age_s", GaugeMetricFamily(
                "edge_upstream_backlog_age_seconds",
                "Age of the oldest uplink not yet delivered to the upstream (0 when none).", labels=["upstream"])),
            ("stuck", GaugeMetricFamily("edge_upstream_stuck", "1 when the backlog is older than web.stuck_after_s.",
                                        labels=["upstream"])),
            ("connected", GaugeMetricFamily("edge_upstream_connected", "1 while the upstream is reachable.",
                                            labels=["upstream"])),
            ("last_delivery", GaugeMetricFamily("edge_upstream_last_delivery_timestamp_seconds",
                                                "When the upstream last acknowledged a delivery (POSIX time).",
                                                labels=["upstream"])),
            ("delivered", CounterMetricFamily("edge_upstream_delivered", "Uplinks delivered to the upstream.",
                                              labels=["upstream"])),
            ("dropped", CounterMetricFamily("edge_upstream_dropped",
                                            "Uplinks dropped before the upstream got them (buffer full).",
                                            labels=["upstream"])),
            ("published", CounterMetricFamily("edge_upstream_published",
                                              "Messages published (MQTT) or requests sent (HTTP) since start.",
                                              labels=["upstream"])),
            ("acknowledged", CounterMetricFamily("edge_upstream_acknowledged",
                                                 "Messages the upstream acknowledged since start.",
                                                 labels=["upstream"])),
            ("rejected", CounterMetricFamily("edge_upstream_rejected",
                                             "Messages the upstream refused for good since start.",
                                             labels=["upstream"])),
            ("reconnects", CounterMetricFamily("edge_upstream_reconnects",
                                               "Connections lost (MQTT) or failed requests (HTTP) since start.",
                                               labels=["upstream"])),
        ]
        for up in snap.upstreams:
            for key, family in families:
                value = up[key]
                if key == "last_delivery" and value is None:
                    continue  # never delivered: no timestamp rather than 1970
                family.add_metric([up["name"]], float(value or 0))
        for _, family in families:
            yield family


# -- HTTP -----------------------------------------------------------------------------------------------

def is_loopback(host: str) -> bool:
    """True for a loopback address (127.0.0.0/8, ::1) or 'localhost'; False for anything else."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface, so it counts as exposed


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a hung client must never keep the service from stopping
    web: WebServer


class _Server6(_Server):
    address_family = socket.AF_INET6


class WebServer:
    """The metrics, health and status-page server; `start()` serves from a daemon thread.

    Endpoints (GET or HEAD):

    - `/metrics`: Prometheus exposition (OpenMetrics when asked for), collected at scrape time
      from the buffer's durable counters and the sinks' in-memory stats.
    - `/health`: JSON; 200 while the ChirpStack source is connected and no upstream's oldest
      undelivered uplink is older than `stuck_after_s` and no pipeline thread is hung, else 503
      listing the problems.
    - `/api/status`: JSON with everything the page shows (`?devices=N`, at most 1000).
    - `/`: the status page: plain HTML, CSS and a little JavaScript polling `/api/status`.

    Every request opens its own read-only connection to the buffer, so the server never shares a
    SQLite connection with the pipeline's threads and cannot write to the buffer.

    Args:
        pipeline: the pipeline to report on (edge.pipeline.Pipeline, or anything like it).
        bind: address to listen on; loopback by default.
        port: TCP port; 0 picks a free one (see `port` after `start()`).
        token: if set, every request needs `Authorization: Bearer <token>` or `?token=<token>`.
        stuck_after_s: an upstream whose oldest undelivered uplink is older than this makes
            /health fail.
        stalled: returns the pipeline threads that stopped making progress (Service.stalled);
            any makes /health fail.

    Raises:
        ValueError: `bind` is not a loopback address and no token is set, or the token is empty.
    """

    def __init__(self, pipeline: PipelineView, *, bind: str = "127.0.0.1", port: int = DEFAULT_PORT,
                 token: str | None = None, stuck_after_s: float = 900.0,
                 stalled: Callable[[], list[str]] | None = None) -> None:
        if token is not None and not token.strip():
            raise ValueError("the status server's token is empty; put a long random string in web.token_file")
        if token is None and not is_loopback(bind):
            raise ValueError(f"refusing to serve metrics and the status page on {bind!r} without a token:"
                             " set web.token_file, or bind to 127.0.0.1 and use an SSH tunnel")
        if stuck_after_s <= 0:
            raise ValueError("stuck_after_s must be greater than 0")
        self.pipeline = pipeline
        self.bind = bind
        self._port = port
        self.token = token.strip() if token is not None else None
        self.stuck_after_s = stuck_after_s
        self.state = StateReader(pipeline, stuck_after_s, stalled)
        self.registry = CollectorRegistry()
        self.registry.register(EdgeCollector(self.state))
        # Resident memory and open files matter on a Raspberry Pi; the collector reads /proc.
        ProcessCollector(registry=self.registry)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port listened on (the one picked when constructed with port 0 and started)."""
        if self._server is not None:
            return int(self._server.server_address[1])
        return self._port

    @property
    def url(self) -> str:
        """The server's base URL, e.g. http://127.0.0.1:9108/."""
        host = f"[{self.bind}]" if ":" in self.bind else self.bind
        return f"http://{host}:{self.port}/"

    def start(self) -> None:
        """Listen and serve from a daemon thread.

        Raises:
            OSError: the address cannot be bound (port in use, address not on this host).
        """
        if self._server is not None:
            return
        server = (_Server6 if ":" in self.bind else _Server)((self.bind, self._port), _Handler)
        server.web = self
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5},
                                        name="web", daemon=True)
        self._thread.start()
        log.info("Status server listening on %s (metrics, health, status page%s).", self.url,
                 "; token required" if self.token else "")

    def stop(self) -> None:
        """Stop serving and close the socket; safe to call when not started."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> WebServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def snapshot(self, *, details: bool = False, failures: bool = True, devices: int = PAGE_DEVICES) -> Snapshot:
        """The current state (see StateReader.snapshot)."""
        return self.state.snapshot(details=details, failures=failures, devices=devices)

    def authorized(self, header: str | None, query_token: str | None) -> bool:
        """True when no token is configured, or the request carries it (constant-time compare)."""
        if self.token is None:
            return True
        given = ""
        if header and header[:7].lower() == "bearer ":
            given = header[7:].strip()
        elif query_token:
            given = query_token
        # Comparing bytes: compare_digest refuses non-ASCII str, and a token may be any text.
        return hmac.compare_digest(given.encode(), self.token.encode())


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"  # keep-alive: the page polls every 5 s over a slow tunnel
    timeout = 30  # idle keep-alive connections are closed instead of holding a thread forever

    def version_string(self) -> str:
        return "lorawan-edge"

    def do_GET(self) -> None:
        self._dispatch(head=False)

    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    def _dispatch(self, head: bool) -> None:
        web = self.server.web
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        if not web.authorized(self.headers.get("Authorization"), query.get("token", [None])[0]):
            self._send(HTTPStatus.UNAUTHORIZED, b"A token is required: Authorization: Bearer <token> or ?token=.\n",
                       "text/plain; charset=utf-8", head, {"WWW-Authenticate": 'Bearer realm="lorawan-edge"'})
            return
        try:
            if url.path == "/metrics":
                encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
                self._send(HTTPStatus.OK, encoder(web.registry), content_type, head)
            elif url.path == "/health":
                snap = web.snapshot(failures=False)
                body = {"healthy": snap.healthy, "problems": snap.problems,
                        "source_connected": snap.source_connected,
                        "upstreams": {u["name"]: {"backlog": u["backlog"],
                                                  "oldest_undelivered_age_s": u["oldest_undelivered_age_s"],
                                                  "connected": u["connected"],
                                                  "disconnected_for_s": u["disconnected_for_s"]}
                                      for u in snap.upstreams}}
                self._json(HTTPStatus.OK if snap.healthy else HTTPStatus.SERVICE_UNAVAILABLE, body, head)
            elif url.path == "/api/status":
                devices = _int(query.get("devices", [None])[0], PAGE_DEVICES, 0, MAX_DEVICES)
                snap = web.snapshot(details=True, devices=devices)
                cfg = web.pipeline.cfg
                doc = status_document(snap, cfg.edge_id, int(cfg.buffer.max_size_mb * 1024 * 1024),
                                      web.stuck_after_s)
                self._json(HTTPStatus.OK, doc, head)
            elif url.path in ("/", "/index.html"):
                self._send(HTTPStatus.OK, PAGE, "text/html; charset=utf-8", head, {"Content-Security-Policy": _CSP})
            else:
                self._send(HTTPStatus.NOT_FOUND, b"Not found: try /, /health, /metrics or /api/status.\n",
                           "text/plain; charset=utf-8", head)
        except Exception:
            # One failed request must not end the server thread; the pipeline runs on regardless.
            log.exception("The status server could not answer %s.", url.path)
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, b"Internal error; see the service log.\n",
                       "text/plain; charset=utf-8", head)

    def _json(self, status: HTTPStatus, body: dict[str, Any], head: bool) -> None:
        self._send(status, orjson.dumps(body), "application/json", head)

    def _send(self, status: HTTPStatus, body: bytes, content_type: str, head: bool,
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        # Live data: never from a cache. The page may carry a token in its URL: never as a referrer.
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        # Per-request lines belong at DEBUG (STYLE: per-event logs are off by default). The request
        # line may hold ?token=..., so only the path is logged.
        if log.isEnabledFor(logging.DEBUG):
            log.debug("Status server: %s %s from %s -> %s", self.command, urlsplit(self.path or "").path,
                      self.client_address[0], args[1] if len(args) > 1 else "-")

    def log_error(self, format: str, *args: Any) -> None:
        # Malformed requests are the client's problem, not the operator's; args may echo the request line.
        log.debug("Status server refused a malformed request from %s.", self.client_address[0])


def _int(value: str | None, default: int, lo: int, hi: int) -> int:
    try:
        return max(lo, min(hi, int(value))) if value is not None else default
    except ValueError:
        return default


# -- the status page ------------------------------------------------------------------------------------
# One self-contained document: no external assets (the gateway may have no Internet, the phone
# may be on the service LAN only), no framework. Every value from the buffer is inserted with
# textContent, never as HTML, since device names and decoder errors come from outside.

_STYLE = """
:root{--bg:#f4f5f7;--card:#fff;--fg:#1c2330;--muted:#5d6778;--line:#dde1e7;--ok:#1a7f37;--bad:#c62828;
--warn:#b26a00;--chip:#eef1f5;font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}
@media (prefers-color-scheme:dark){:root{--bg:#12161c;--card:#1c222b;--fg:#e6e9ee;--muted:#9aa4b2;
--line:#2c3440;--chip:#262e39}}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);font-size:15px;line-height:1.4}
header{position:sticky;top:0;z-index:1;display:flex;align-items:center;gap:.6rem;padding:.7rem 1rem;
background:var(--card);border-bottom:1px solid var(--line)}
header h1{font-size:1.05rem;margin:0;flex:1;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.badge{padding:.2rem .65rem;border-radius:1rem;font-weight:600;font-size:.85rem;color:#fff;background:var(--muted)}
.badge.ok{background:var(--ok);color:#fff}.badge.bad{background:var(--bad);color:#fff}
main{max-width:60rem;margin:0 auto;padding:.75rem}
section{margin:0 0 1rem}
h2{font-size:.8rem;text-transform:uppercase;letter-spacing:.06em;color:var(--muted);margin:.9rem .2rem .4rem}
.card{background:var(--card);border:1px solid var(--line);border-radius:.6rem;padding:.7rem .8rem;margin:0 0 .5rem}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(9.5rem,1fr));gap:.5rem}
.grid .card{margin:0}
.k{color:var(--muted);font-size:.8rem}
.v{font-size:1.2rem;font-weight:600;font-variant-numeric:tabular-nums}
.row{display:flex;justify-content:space-between;gap:.5rem;flex-wrap:wrap}
.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.9rem;word-break:break-all}
.muted{color:var(--muted);font-size:.85rem}
.dot{display:inline-block;width:.6rem;height:.6rem;border-radius:50%;margin-right:.35rem;background:var(--bad)}
.dot.up{background:var(--ok)}
.chips{display:flex;flex-wrap:wrap;gap:.3rem;margin-top:.4rem}
.chip{background:var(--chip);border-radius:.35rem;padding:.1rem .45rem;font-size:.85rem;
font-variant-numeric:tabular-nums}
.bad{color:var(--bad)}.warn{color:var(--warn)}
#problems{list-style:none;margin:0;padding:0}
#problems li{background:var(--bad);color:#fff;border-radius:.5rem;padding:.5rem .75rem;margin:0 0 .4rem}
#stale{display:none;background:var(--warn);color:#fff;border-radius:.5rem;padding:.5rem .75rem;margin:0 0 .5rem}
table{width:100%;border-collapse:collapse}td{padding:.2rem 0;border-bottom:1px solid var(--line)}
td:last-child{text-align:right;font-variant-numeric:tabular-nums}
footer{color:var(--muted);font-size:.8rem;text-align:center;padding:0 1rem 1.5rem}
.scroll{overflow-x:auto}
table.health td,table.health th{padding:.25rem .5rem .25rem 0;text-align:left;white-space:nowrap}
th.sort{cursor:pointer;color:var(--muted);font-weight:600;border-bottom:1px solid var(--line)}
"""

_SCRIPT = """
"use strict";
const REFRESH_MS = 5000;
// A token given as ?token=... in the page's address is passed on to the API the same way.
const QUERY = location.search;
const UNITS = {Cel: "\\u00b0C", "%RH": "%RH", "/": "%", dBW: "dBW", lx: "lx", V: "V", ppm: "ppm", Pa: "Pa",
  hPa: "hPa", count: "", m: "m", "m/s": "m/s", W: "W", Wh: "Wh", dB: "dB", "%EL": "%"};
let serverNow = 0;

function $(id) { return document.getElementById(id); }
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}
function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); return node; }
function ago(t) {
  if (t === null || t === undefined) return "never";
  const s = Math.max(0, serverNow - t);
  if (s < 90) return Math.round(s) + " s ago";
  if (s < 5400) return Math.round(s / 60) + " min ago";
  if (s < 172800) return Math.round(s / 3600) + " h ago";
  return Math.round(s / 86400) + " d ago";
}
function age(s) {
  if (s === null || s === undefined) return "\\u2013";
  if (s < 90) return Math.round(s) + " s";
  if (s < 5400) return Math.round(s / 60) + " min";
  return (s / 3600).toFixed(1) + " h";
}
function num(n) { return n === null || n === undefined ? "\\u2013" : Number(n).toLocaleString("en-US"); }
function mb(b) { return (b / 1048576).toFixed(1); }
function value(r) {
  if ("v" in r) {
    const v = Math.abs(r.v) >= 100 ? Math.round(r.v * 10) / 10 : Math.round(r.v * 1000) / 1000;
    const u = r.u in UNITS ? UNITS[r.u] : (r.u || "");
    return v + (u ? (u === "\\u00b0C" || u === "%" ? "" : " ") + u : "");
  }
  if ("vb" in r) return r.vb ? "yes" : "no";
  return r.vs;
}
function stat(label, val, cls) {
  const c = el("div", "card");
  c.append(el("div", "k", label), el("div", "v" + (cls ? " " + cls : ""), val));
  return c;
}

function render(s) {
  serverNow = s.now;
  document.title = "lorawan-edge " + s.edge_id;
  $("title").textContent = "lorawan-edge \\u00b7 " + s.edge_id;
  const badge = $("badge");
  badge.textContent = s.healthy ? "healthy" : "problem";
  badge.className = "badge " + (s.healthy ? "ok" : "bad");
  const problems = clear($("problems"));
  for (const p of s.problems) problems.append(el("li", "", p));

  const c = s.counters, b = s.buffer;
  // Fields no field map covers yet: sent without a unit (docs/field-maps.md).
  const unmapped = Object.values(s.unmapped || {}).reduce((a, n) => a + n, 0);
  clear($("overview")).append(
    stat("ChirpStack", s.source.connected ? "connected" : "disconnected", s.source.connected ? "" : "bad"),
    stat("Buffer", b.error ? "unreadable" : mb(b.used_bytes) + " / " + Math.round(b.max_bytes / 1048576) + " MB",
      b.error ? "bad" : ""),
    stat("Uplinks buffered", num(b.uplinks)),
    stat("Received", num(c.received)),
    stat("Decoded", num((c.decoded || 0) + (c.chirpstack || 0))),
    stat("Decode errors", num(c.decode_failed), c.decode_failed ? "warn" : ""),
    stat("Unmapped fields", num(unmapped), unmapped ? "warn" : ""),
    stat("Duplicates", num(c.duplicates)),
    stat("Dropped", num(c.dropped), c.dropped ? "bad" : ""));

  const ups = clear($("upstreams"));
  for (const u of s.upstreams) {
    const card = el("div", "card");
    const head = el("div", "row");
    const name = el("strong");
    name.append(el("span", "dot" + (u.connected ? " up" : "")), document.createTextNode(u.name));
    head.append(name, el("span", u.stuck ? "bad" : "muted", u.connected ? "connected" : "not connected"));
    const t = el("table");
    const rows = [["Backlog", num(u.backlog) + " uplinks"], ["Oldest undelivered", age(u.oldest_undelivered_age_s)],
      ["Delivered", num(u.delivered)], ["Dropped", num(u.dropped)], ["Last delivery", ago(u.last_delivery)]];
    for (const [k, v] of rows) { const tr = el("tr"); tr.append(el("td", "k", k), el("td", "", v)); t.append(tr); }
    card.append(head, t);
    // Once the upstream is back, its last error is history, not an alarm.
    if (u.last_error) card.append(el("div", u.connected ? "muted" : "muted bad",
      (u.connected ? "Recovered from: " : "Last error: ") + u.last_error));
    ups.append(card);
  }
  if (!s.upstreams.length) ups.append(el("div", "card muted", "No upstreams configured."));

  const devs = clear($("devices"));
  for (const d of s.devices) {
    const card = el("div", "card");
    const head = el("div", "row");
    head.append(el("span", "mono", d.dev_eui), el("span", "muted", ago(d.last_time)));
    const meta = el("div", "muted");
    const radio = "RSSI " + (d.rssi === null ? "\\u2013" : d.rssi + " dBm") + " \\u00b7 SNR " +
      (d.snr === null ? "\\u2013" : d.snr + " dB") + (d.fcnt === null ? "" : " \\u00b7 fCnt " + d.fcnt);
    meta.textContent = [d.name, radio].filter(Boolean).join(" \\u00b7 ");
    const dec = el("div", "muted " + (d.status === "failed" ? "bad" : ""),
      (d.decoder || "no decoder") + " \\u00b7 " + d.status);
    const chips = el("div", "chips");
    for (const r of d.readings) {
      chips.append(el("span", "chip", r.n + " " + (r.text === undefined ? value(r) : r.text)));
    }
    card.append(head, meta, dec);
    if (d.readings.length) card.append(chips);
    devs.append(card);
  }
  if (!s.devices.length) devs.append(el("div", "card muted", "No uplinks received yet."));

  renderHealth(s.health);

  const errs = clear($("errors"));
  const by = Object.entries(s.decode_errors.by_decoder);
  if (by.length) {
    const t = el("table");
    for (const [k, v] of by) {
      const tr = el("tr");
      tr.append(el("td", "mono", k), el("td", "", num(v)));
      t.append(tr);
    }
    const card = el("div", "card");
    card.append(el("div", "k", "Buffered uplinks that failed to decode, by decoder"), t);
    errs.append(card);
  }
  for (const f of s.decode_errors.recent) {
    const card = el("div", "card");
    const head = el("div", "row");
    head.append(el("span", "mono", f.dev_eui), el("span", "muted", ago(f.time)));
    card.append(head, el("div", "muted", f.decoder), el("div", "bad", f.error));
    errs.append(card);
  }
  for (const m of s.malformed) {
    const card = el("div", "card");
    card.append(el("div", "mono", m.topic), el("div", "muted", "malformed \\u00b7 " + ago(m.received)),
      el("div", "bad", m.error));
    errs.append(card);
  }
  if (!errs.firstChild) errs.append(el("div", "card muted", "No decode errors in the buffer."));
  $("updated").textContent = new Date(s.now * 1000).toLocaleTimeString();
}

// Sensor health: a table the technician sorts by clicking a column (the unwell first by default).
let healthRows = [], healthSort = null, healthDesc = false;
const HEALTH_COLS = [["dev_eui", "Device"], ["state", "State"], ["problems", "Problems"],
  ["silent_for_s", "Last seen"], ["expected_interval_s", "Interval"], ["loss_ratio", "Loss"],
  ["battery", "Battery"], ["rssi_dbm", "RSSI"]];
function healthCell(d, key) {
  if (key === "problems") return d.problems.join(", ") || "\u2013";
  if (key === "silent_for_s") return d.silent_for_s === null ? "never" : age(d.silent_for_s) + " ago";
  if (key === "expected_interval_s") return age(d.expected_interval_s);
  if (key === "loss_ratio") return d.loss_ratio === null ? "\u2013" : Math.round(d.loss_ratio * 100) + " %";
  if (key === "battery") return d.battery !== null ? d.battery + " %" :
    d.battery_voltage !== null ? d.battery_voltage + " V" : "\u2013";
  if (key === "rssi_dbm") return d.rssi_dbm === null ? "\u2013" : d.rssi_dbm + " dBm";
  return d[key];
}
function renderHealth(h) {
  if (h) healthRows = h.devices;
  const box = clear($("health"));
  if (h) {
    const c = h.counts;
    box.append(el("div", "muted", (c["state:ok"] || 0) + " ok \u00b7 " + (c["state:silent"] || 0) + " silent \u00b7 " +
      (c["state:never-seen"] || 0) + " never seen \u00b7 " + (c["problem:low-battery"] || 0) + " low battery \u00b7 " +
      (c["problem:lossy"] || 0) + " lossy"));
  }
  if (!healthRows.length) { box.append(el("div", "card muted", "No sensors seen yet.")); return; }
  const rows = healthRows.slice();
  if (healthSort) rows.sort((a, b) => {
    const x = a[healthSort], y = b[healthSort];
    const r = x === y ? 0 : x === null ? 1 : y === null ? -1 : x < y ? -1 : 1;
    return healthDesc ? -r : r;
  });
  const t = el("table", "health");
  const head = el("tr");
  for (const [key, label] of HEALTH_COLS) {
    const th = el("th", "sort", label + (healthSort === key ? (healthDesc ? " \u25bc" : " \u25b2") : ""));
    th.addEventListener("click", () => {
      healthDesc = healthSort === key ? !healthDesc : false;
      healthSort = key;
      renderHealth(null);
    });
    head.append(th);
  }
  t.append(head);
  for (const d of rows) {
    const tr = el("tr", d.state !== "ok" ? "bad" : d.problems.length ? "warn" : "");
    for (const [key] of HEALTH_COLS) tr.append(el("td", key === "dev_eui" ? "mono" : "", healthCell(d, key)));
    t.append(tr);
  }
  const card = el("div", "card scroll");
  card.append(t);
  box.append(card);
}

async function refresh() {
  try {
    const r = await fetch("api/status" + QUERY, {cache: "no-store"});
    if (!r.ok) throw new Error("HTTP " + r.status);
    render(await r.json());
    $("stale").style.display = "none";
  } catch (e) {
    const s = $("stale");
    s.textContent = "Cannot reach the gateway (" + e.message + "); showing the last data received.";
    s.style.display = "block";
  } finally {
    setTimeout(refresh, REFRESH_MS);
  }
}
refresh();
"""

PAGE = ("""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark">
<title>lorawan-edge</title>
<style>""" + _STYLE + """</style>
</head>
<body>
<header><h1 id="title">lorawan-edge</h1><span id="badge" class="badge">loading</span></header>
<main>
<noscript><div class="card">This page needs JavaScript; /api/status has the same data as JSON.</div></noscript>
<div id="stale"></div>
<ul id="problems"></ul>
<section><h2>Overview</h2><div id="overview" class="grid"></div></section>
<section><h2>Upstreams</h2><div id="upstreams"></div></section>
<section><h2>Sensor health</h2><div id="health"></div></section>
<section><h2>Last uplinks</h2><div id="devices"></div></section>
<section><h2>Decode errors</h2><div id="errors"></div></section>
</main>
<footer>Updated <span id="updated">never</span>; refreshes every 5 s. Read-only.</footer>
<script>""" + _SCRIPT + """</script>
</body>
</html>
""").encode()


def _csp_hash(source: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode()).digest()).decode() + "'"


# Only this page's own inline style and script may run: injected markup could do nothing.
_CSP = (f"default-src 'none'; connect-src 'self'; img-src 'self'; style-src {_csp_hash(_STYLE)};"
        f" script-src {_csp_hash(_SCRIPT)}; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
