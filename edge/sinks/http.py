"""POSTs formatted batches to one HTTP upstream (NGSI-LD batch upsert or SenML) with httpx.

Delivery is sequential and at-least-once: the sink reads a batch of entries after its cursor,
formats it into messages and POSTs them one by one, in order, to the configured endpoint. The
cursor is advanced only once every message of the batch was settled. How a response settles a
message (the httpx exception tree it relies on is drawn in `httpx/_exceptions.py`)::

    2xx                           accepted (a 207 with NGSI-LD `errors` is also dead-lettered)
    408 429 5xx                   kept: retried after a jittered, capped backoff or Retry-After
    3xx                           kept: redirects are not followed; logged at ERROR, retried
    401                           the token file is re-read; a rotated token is retried at once,
                                  otherwise the message is rejected like any other 4xx
    any other 4xx                 rejected: handed to `dead_letter` (inspect and replay with
                                  `edge deadletter list|replay`), then the sink moves past it
    httpx.TransportError          kept: timeouts, refused or reset connections, TLS failures

After a crash or restart the batch is read again from the durable cursor, so a receiver may see
a message twice; NGSI-LD upserts with stable entity ids and SenML records with uplink ids make
that harmless. Each upstream runs in its own thread, so one being down never holds back another.

Rewinds (`edge buffer rewind`): about once a second, between two requests, the sink asks the buffer
whether the operator moved it back; if so it drops the rest of its batch and reads on from there.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

import httpx
import orjson

from edge.backoff import Backoff
from edge.config import HttpUpstreamConfig
from edge.errors import certificate_problem
from edge.model import ENDPOINT
from edge.net import is_loopback
from edge.sinks.base import Backlog, DeadLetter, Formatter, OutMessage, SinkStats, format_isolated
from edge.sinks.http_request import build_client, endpoint_url, read_token, redact, tls_context
from edge.sinks.http_status import body_excerpt, classify, retry_after_seconds

log = logging.getLogger(__name__)

# How long an idle sink sleeps on `wake` before it looks at `stop` and the buffer again.
IDLE_WAIT_S = 0.25
# How often an idle sink asks the buffer for gap notices.
NOTICE_CHECK_S = 5.0
# How often the sink asks the buffer whether the operator rewound it (`edge buffer rewind`).
REWIND_CHECK_S = 1.0


@dataclass(slots=True)
class HttpSinkStats(SinkStats):
    """The MqttSink's counters plus retries (published counts requests, retries included)."""

    retries: int = 0  # messages kept for another attempt, for any reason


class _Outcome(Enum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    RETRY = "retry"


class HttpSink:
    """One HTTP upstream; `run` blocks until `stop` is set.

    Call order: construct (reads the token and TLS files, so bad ones fail at startup), then `run` once
    on the sink's own thread. `stats` and `heartbeat` may be read from any thread.
    """

    def __init__(self, cfg: HttpUpstreamConfig, backlog_factory: Callable[[], Backlog], formatter: Formatter,
                 wake: threading.Event, transport: httpx.BaseTransport | None = None,
                 dead_letter: DeadLetter | None = None) -> None:
        """Prepare the sink; no connection is made before `run`.

        Args:
            cfg: the upstream's settings.
            backlog_factory: opens the sink's own view of the buffer, on the sink's thread.
            formatter: turns entries into the messages to POST, in order.
            wake: set by the pipeline after each buffer commit, so an idle sink wakes at once.
            transport: an httpx transport to use instead of the network (tests, proxies); TLS
                settings then belong to the transport.
            dead_letter: receives rejected messages; when None they are logged at ERROR and dropped.

        Raises:
            ValueError: the endpoint is not an http(s) URL, or the token file or a TLS file cannot be read.
        """
        self.cfg = cfg
        self.name = cfg.name
        self._backlog_factory = backlog_factory
        self.format = formatter
        self.wake = wake
        self._transport = transport
        self._dead_letter = dead_letter
        self.stats = HttpSinkStats()
        self.heartbeat = time.monotonic()  # last loop iteration; the service's watchdog reads it
        endpoint = endpoint_url(cfg.name, cfg.endpoint)
        if cfg.notice_endpoint:
            endpoint_url(cfg.name, cfg.notice_endpoint)
        self._token = read_token(cfg.bearer_token_file) if cfg.bearer_token_file else ""
        self._tls = tls_context(cfg)
        if self._token and endpoint.scheme == "http" and not is_loopback(endpoint.host):
            log.warning("Upstream %s sends its bearer token without TLS to %s.", self.name, redact(cfg.endpoint))

    def _client(self) -> httpx.Client:
        return build_client(self.cfg, self._token, self._tls, self._transport)

    def client(self) -> httpx.Client:
        """A client set up exactly as the sink's own (token, headers, TLS, proxy), for `edge doctor`."""
        return self._client()

    def post_once(self, message: OutMessage) -> int:
        """POST one message now, outside the delivery loop (`edge deadletter replay`); the HTTP status."""
        with self._client() as client:
            response = client.post(self.cfg.endpoint, content=message.payload,
                                   headers={"Content-Type": message.content_type})
            return response.status_code

    def run(self, stop: threading.Event) -> None:
        """Deliver until `stop` is set.

        Args:
            stop: set by the pipeline to end the loop; a request in progress finishes or times out first.
        """
        backlog = self._backlog_factory()
        backoff = Backoff(self.cfg.backoff_min_s, self.cfg.backoff_max_s)
        with self._client() as client:
            self._loop(client, backlog, stop, backoff)

    def _loop(self, client: httpx.Client, backlog: Backlog, stop: threading.Event, backoff: Backoff) -> None:
        cursor = backlog.cursor()
        pending: deque[OutMessage] = deque()
        batch_last, batch_entries = cursor, 0
        notices_checked = -math.inf
        rewind_checked = time.monotonic()
        while not stop.is_set():
            self.heartbeat = time.monotonic()
            if self.heartbeat - rewind_checked >= REWIND_CHECK_S:
                rewind_checked = self.heartbeat
                position = backlog.rewound()
                if position is not None:
                    # The rest of the batch is dropped unsent; everything from `position` is read again.
                    cursor, batch_last, batch_entries = position, position, 0
                    pending.clear()
            if not pending and batch_entries == 0:
                # Gap notices first, so a receiver learns about a hole before the data after it.
                if self.heartbeat - notices_checked >= NOTICE_CHECK_S:
                    if not self._send_notices(client, backlog, stop, backoff):
                        continue
                    notices_checked = self.heartbeat
                self.wake.clear()  # before reading, so a commit after the read is not missed
                entries = backlog.read(cursor, self.cfg.max_batch)
                if not entries:
                    self.wake.wait(IDLE_WAIT_S)
                    continue
                pending = deque(format_isolated(self.format, entries, self._formatter_failed))
                batch_last, batch_entries = entries[-1].id, len(entries)
            # A retry resumes at the first unsettled message; earlier ones of the batch are not re-sent.
            while pending and not stop.is_set():
                self.heartbeat = time.monotonic()
                if self.heartbeat - rewind_checked >= REWIND_CHECK_S:
                    break  # the loop's top looks for a rewind, then resumes this batch
                if not self._deliver(client, self.cfg.endpoint, pending[0], stop, backoff):
                    break
                pending.popleft()
            if not pending and batch_entries:
                backlog.advance(batch_last, batch_entries)
                cursor, batch_entries = batch_last, 0

    def _formatter_failed(self, message: OutMessage, reason: str) -> None:
        """An uplink the formatter failed on: kept as a dead letter (status 0), the batch goes on."""
        self.stats.rejected += 1
        if self._dead_letter is not None:
            self._dead_letter(message, 0, reason)
        else:
            log.error("Upstream %s: %s; the uplink is not sent to it.", self.name, reason,
                      extra={"upstream": self.name})

    def _send_notices(self, client: httpx.Client, backlog: Backlog, stop: threading.Event, backoff: Backoff) -> bool:
        for notice_id, message in backlog.notices():
            # Device updates (sensor health) go to the endpoint itself; gap notices to notice_endpoint,
            # and without one they stay in the buffer (`edge status` shows them).
            url = self.cfg.endpoint if message.topic == ENDPOINT else self.cfg.notice_endpoint
            if not url:
                continue
            if stop.is_set() or not self._deliver(client, url, message, stop, backoff):
                return False
            backlog.notice_delivered(notice_id)
        return True

    def _deliver(self, client: httpx.Client, url: str, message: OutMessage, stop: threading.Event,
                 backoff: Backoff) -> bool:
        """POST one message; True once it is settled (accepted or rejected), False after waiting to retry."""
        outcome, delay = self._post(client, url, message)
        if outcome is _Outcome.RETRY:
            self.stats.retries += 1
            self._sleep(stop, backoff.next() if delay is None else delay)
            return False
        backoff.reset()
        return True

    def _post(self, client: httpx.Client, url: str, message: OutMessage) -> tuple[_Outcome, float | None]:
        where = redact(url)
        self.stats.published += 1
        try:
            response = client.post(url, content=message.payload, headers={"Content-Type": message.content_type})
        except httpx.TransportError as exc:
            # Timeouts, refused or reset connections, TLS failures: the network, not the data.
            self.stats.link(False)
            self.stats.reconnects += 1
            self.stats.last_error = f"{exc.__class__.__name__}: {exc}"
            tls = certificate_problem(exc)
            if tls:
                self.stats.last_error = f"TLS: {tls}"
                log.error("The TLS certificate of upstream %s (%s) is not trusted (%s): check its ca_file and the"
                          " server's certificate (expiry, host name); retrying.", self.name, where, tls)
            else:
                log.warning("Upstream %s (%s) did not answer: %s; retrying.", self.name, where, self.stats.last_error)
            return _Outcome.RETRY, None
        self.stats.link(True)
        status = response.status_code
        verdict = classify(status)
        if verdict == "accepted":
            self.stats.acknowledged += 1
            if status == 207:
                self._partial(message, response)
            return _Outcome.ACCEPTED, None
        excerpt = body_excerpt(response)
        self.stats.last_error = f"HTTP {status}: {excerpt[:120]}"
        if status == 401 and self.cfg.bearer_token_file and self._reload_token(client):
            return _Outcome.RETRY, 0.0  # a rotated token: try again at once
        if verdict == "rejected":
            self.stats.rejected += 1
            log.error("Upstream %s (%s) rejected a %s message with HTTP %d: %s", self.name, where,
                      message.content_type, status, excerpt[:200])
            if self._dead_letter is not None:
                self._dead_letter(message, status, excerpt)
            return _Outcome.REJECTED, None
        if 300 <= status < 400:
            log.error("Upstream %s (%s) answered HTTP %d (redirects are not followed); check its endpoint."
                      " Data is kept.", self.name, where, status)
            return _Outcome.RETRY, None
        wait = retry_after_seconds(response.headers.get("Retry-After"))
        if wait is not None:
            wait = min(wait, self.cfg.retry_after_max_s)
        log.warning("Upstream %s (%s) answered HTTP %d; retrying in %s.", self.name, where, status,
                    "the backoff delay" if wait is None else f"{wait:.1f} s (Retry-After)")
        return _Outcome.RETRY, wait

    def _partial(self, message: OutMessage, response: httpx.Response) -> None:
        # NGSI-LD batch operations answer 207 with {"success": [...], "errors": [...]} when some
        # entities failed (CIM 009 §5.6.7-5.6.8). The rest was applied; the failed part is kept for
        # the operator instead of being retried forever.
        try:
            body: Any = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            return
        if isinstance(body, dict) and body.get("errors"):
            self.stats.extra["partial"] = self.stats.extra.get("partial", 0) + 1
            excerpt = body_excerpt(response)
            log.warning("Upstream %s applied a batch only in part: %s", self.name, excerpt[:200])
            if self._dead_letter is not None:
                self._dead_letter(message, response.status_code, excerpt)

    def _reload_token(self, client: httpx.Client) -> bool:
        """Re-read a token file rotated since startup; True when the token changed."""
        try:
            token = read_token(self.cfg.bearer_token_file)
        except ValueError as exc:
            log.error("Upstream %s: %s.", self.name, exc)
            return False
        if token == self._token:
            return False
        self._token = token
        client.headers["Authorization"] = f"Bearer {token}"
        log.info("Upstream %s: re-read the rotated bearer token file.", self.name)
        return True

    def _sleep(self, stop: threading.Event, delay: float) -> None:
        # In slices, so the watchdog keeps seeing a live thread during a long Retry-After.
        end = time.monotonic() + delay
        while not stop.is_set():
            self.heartbeat = time.monotonic()
            left = end - self.heartbeat
            if left <= 0:
                return
            stop.wait(min(left, 1.0))
