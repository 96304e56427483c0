"""Loopback HTTP server for operators: Prometheus metrics, a health check and a read-only status page."""

from __future__ import annotations

import hmac
import logging
import socket
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
from prometheus_client.exposition import choose_encoder
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import CollectorRegistry

from edge.net import is_loopback
from edge.status import PAGE_DEVICES, PipelineView, Snapshot, StateReader
from edge.web.metrics import EdgeCollector
from edge.web.page import CSP, PAGE, status_document

log = logging.getLogger(__name__)

DEFAULT_PORT = 9108
MAX_DEVICES = 1000


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
                        "upstreams": {u.name: {"backlog": u.backlog,
                                               "oldest_undelivered_age_s": u.oldest_undelivered_age_s,
                                               "connected": u.connected, "disconnected_for_s": u.disconnected_for_s}
                                      for u in snap.sinks}}
                self._json(HTTPStatus.OK if snap.healthy else HTTPStatus.SERVICE_UNAVAILABLE, body, head)
            elif url.path == "/api/status":
                devices = _int(query.get("devices", [None])[0], PAGE_DEVICES, 0, MAX_DEVICES)
                snap = web.snapshot(details=True, devices=devices)
                cfg = web.pipeline.cfg
                doc = status_document(snap, cfg.edge_id, int(cfg.buffer.max_size_mb * 1024 * 1024),
                                      web.stuck_after_s)
                self._json(HTTPStatus.OK, doc, head)
            elif url.path in ("/", "/index.html"):
                self._send(HTTPStatus.OK, PAGE, "text/html; charset=utf-8", head, {"Content-Security-Policy": CSP})
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
