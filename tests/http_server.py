"""A real, scriptable HTTP(S) server on a free loopback port that records every request (test helper)."""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Recorded:
    """One request as the server saw it, and the status it answered (None while stalled).

    A stalled request gets its status when the stall ends, even if the client gave up before.
    """

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    body: bytes
    received: float  # time.monotonic()
    status: int | None = None

    @property
    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


@dataclass
class Reply:
    """A scripted answer: a status with headers and body, or a stall of `stall_s` seconds without answer."""

    status: int = 204
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    stall_s: float = 0.0


class HttpServer:
    """ThreadingHTTPServer in a daemon thread; answers `default` unless a scripted reply is queued.

    `require_auth`, when set, answers 401 to any request whose Authorization header differs.
    Give `certfile`/`keyfile` (and `client_ca` to demand a client certificate) for HTTPS.
    """

    def __init__(self, default: Reply | None = None, certfile: Path | None = None, keyfile: Path | None = None,
                 client_ca: Path | None = None) -> None:
        self.default = default or Reply()
        self.require_auth: str | None = None
        self.requests: list[Recorded] = []
        self._script: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._release = threading.Event()  # ends every stall at shutdown
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self.scheme = "http"
        if certfile is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(certfile, keyfile)
            if client_ca is not None:
                context.load_verify_locations(client_ca)
                context.verify_mode = ssl.CERT_REQUIRED
            self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
            self.scheme = "https"
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="test-http-server", daemon=True)

    @property
    def url(self) -> str:
        """The server's base URL, without a trailing slash."""
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def start(self) -> HttpServer:
        """Start serving; returns self."""
        self._thread.start()
        return self

    def close(self) -> None:
        """Release stalled handlers and stop serving."""
        self._release.set()
        if self._thread.is_alive():
            self._httpd.shutdown()  # blocks until serve_forever returns, so only when it runs
        self._httpd.server_close()

    def __enter__(self) -> HttpServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def script(self, status: int, count: int = 1, headers: dict[str, str] | None = None, body: bytes = b"") -> None:
        """Answer the next `count` requests with `status` (after anything already scripted)."""
        with self._lock:
            self._script.extend(Reply(status, dict(headers or {}), body) for _ in range(count))

    def stall(self, seconds: float, count: int = 1, status: int | None = None) -> None:
        """Hold the next `count` requests for `seconds` before answering (a client timeout).

        The late answer is the default, or `status` (e.g. 503, so that `answered(2)` counts only
        requests the client really saw accepted).
        """
        with self._lock:
            self._script.extend(Reply(self.default.status if status is None else status,
                                      dict(self.default.headers), self.default.body, seconds)
                                for _ in range(count))

    def clear_script(self) -> None:
        """Forget the scripted replies not used yet."""
        with self._lock:
            self._script.clear()

    def answered(self, status_class: int = 2) -> list[Recorded]:
        """The requests answered with a status of the given class (2 = 2xx)."""
        with self._lock:
            return [r for r in self.requests if r.status is not None and r.status // 100 == status_class]

    def snapshot(self) -> list[Recorded]:
        """A copy of the request log."""
        with self._lock:
            return list(self.requests)

    def _next_reply(self, record: Recorded) -> Reply:
        with self._lock:
            self.requests.append(record)
            if self.require_auth is not None and record.headers.get("authorization") != self.require_auth:
                return Reply(401, {"WWW-Authenticate": "Bearer"}, b'{"title":"Unauthorized"}')
            return self._script.popleft() if self._script else self.default

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as a real broker offers

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                parts = urlsplit(self.path)
                record = Recorded(self.command, parts.path, parse_qs(parts.query),
                                  {k.lower(): v for k, v in self.headers.items()}, body, time.monotonic())
                reply = server._next_reply(record)
                if reply.stall_s:
                    server._release.wait(reply.stall_s)
                # Set before the answer goes out: a client may act on it before this thread runs again.
                with server._lock:
                    record.status = reply.status
                try:
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(reply.body)))
                    self.end_headers()
                    self.wfile.write(reply.body)
                except OSError:
                    return  # the client gave up (timeout); it retries on a new connection

            do_POST = do_PUT = do_PATCH = do_GET = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep pytest output clean

        return Handler


@contextmanager
def serving(**kwargs: Any) -> Iterator[HttpServer]:
    """An HttpServer started for the block and closed after it."""
    server = HttpServer(**kwargs).start()
    try:
        yield server
    finally:
        server.close()


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.02) -> bool:
    """Poll `predicate` until it is true or `timeout` seconds passed; returns its last value."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
