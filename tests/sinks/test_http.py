"""The HTTP sink against a real loopback HTTP(S) server: ordering, retries, dead letters, auth, TLS, restarts."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from edge.config import HttpUpstreamConfig
from edge.formats import ngsi_ld, senml
from edge.model import Entry, RadioInfo, Reading
from edge.sinks.base import OutMessage
from edge.sinks.http import HttpSink
from edge.sinks.http_request import redact
from edge.sinks.http_status import classify, retry_after_seconds
from tests.http_server import HttpServer, Recorded, Reply, serving, wait_for
from tests.pki import make_pki

T0 = 1795600800.0
TOKEN = "tok-3f9a-secret"


def make_entry(i: int, dev_eui: str = "a81758fffe0346f1") -> Entry:
    return Entry(id=i, uplink_id=f"00000000-0000-4000-8000-{i:012d}", dev_eui=dev_eui, application_id="app",
                 gateway_id="", time=T0 + i, readings=[Reading("temperature", 20 + i / 10, "Cel")],
                 radio=RadioInfo())


class MemoryBacklog:
    """Entries → cursor, like the buffer's per-sink view; checks that only acknowledged ids are released."""

    def __init__(self, entries: Sequence[Entry] = (), cursor: int = 0) -> None:
        self.entries = list(entries)
        self._cursor = cursor
        self.advances: list[tuple[int, int]] = []
        self.pending_notices: dict[int, OutMessage] = {}
        self.lock = threading.Lock()
        self.check_release: Callable[[int], None] | None = None

    def add(self, *entries: Entry) -> None:
        with self.lock:
            self.entries.extend(entries)

    def cursor(self) -> int:
        return self._cursor

    def rewound(self) -> int | None:
        return None

    def read(self, after_id: int, limit: int) -> list[Entry]:
        with self.lock:
            return [e for e in self.entries if e.id > after_id][:limit]

    def advance(self, upto_id: int, delivered: int) -> None:
        assert upto_id > self._cursor, "the cursor only moves forward"
        if self.check_release is not None:
            self.check_release(upto_id)
        self._cursor = upto_id
        self.advances.append((upto_id, delivered))

    def notices(self) -> list[tuple[int, OutMessage]]:
        return list(self.pending_notices.items())

    def notice_delivered(self, notice_id: int) -> None:
        del self.pending_notices[notice_id]


def per_entry(entries: Sequence[Entry]) -> list[OutMessage]:
    """One JSON message per entry, so the server's log shows exactly which entries arrived."""
    return [OutMessage("", json.dumps({"entry": e.id}).encode(), "application/json") for e in entries]


def entry_ids(requests: list[Recorded]) -> list[int]:
    return [r.json["entry"] for r in requests]


def delivered_ids(server: HttpServer) -> list[int]:
    """Entry ids the server accepted, first acceptance of each (the sink is at-least-once)."""
    seen: list[int] = []
    for i in entry_ids(server.answered(2)):
        if i not in seen:
            seen.append(i)
    return seen


class Running:
    """A sink running in its own thread, as the pipeline runs it."""

    def __init__(self, sink: HttpSink) -> None:
        self.sink = sink
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=f"sink-{sink.name}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.sink.run(self.stop)
        except BaseException as exc:  # noqa: BLE001 (reported to the test below)
            self.error = exc

    def close(self) -> None:
        self.stop.set()
        self.sink.wake.set()
        self.thread.join(timeout=10)
        assert not self.thread.is_alive(), "the sink did not stop"
        assert self.error is None, self.error


@pytest.fixture
def server() -> Iterator[HttpServer]:
    with serving() as s:
        yield s


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "upstream.token"
    path.write_text(TOKEN + "\n")
    return path


@pytest.fixture
def run_sink() -> Iterator[Callable[..., Running]]:
    running: list[Running] = []

    def start(cfg: HttpUpstreamConfig, backlog: MemoryBacklog, formatter=per_entry, **kwargs) -> Running:
        sink = HttpSink(cfg, lambda: backlog, formatter, threading.Event(), **kwargs)
        r = Running(sink)
        running.append(r)
        return r

    yield start
    for r in running:
        if r.thread.is_alive():
            r.close()


def config(server: HttpServer, **overrides) -> HttpUpstreamConfig:
    base = HttpUpstreamConfig(name="city", endpoint=f"{server.url}/ingest", format="senml+json", timeout_s=2.0,
                              max_batch=3, backoff_min_s=0.02, backoff_max_s=0.1, retry_after_max_s=5.0)
    return replace(base, **overrides)


def released_only_after_2xx(server: HttpServer) -> Callable[[int], None]:
    def check(upto_id: int) -> None:
        accepted = set(entry_ids(server.answered(2)))
        missing = [i for i in range(1, upto_id + 1) if i not in accepted]
        assert not missing, f"cursor released {upto_id} before entries {missing} were acknowledged"

    return check


# --- delivery ---


def test_http_sink_delivers_in_order_and_releases_per_batch(server, token_file, run_sink):
    backlog = MemoryBacklog([make_entry(i) for i in range(1, 11)])
    backlog.check_release = released_only_after_2xx(server)
    running = run_sink(config(server, bearer_token_file=str(token_file)), backlog)
    assert wait_for(lambda: backlog.cursor() == 10)
    assert delivered_ids(server) == list(range(1, 11))
    assert backlog.advances == [(3, 3), (6, 3), (9, 3), (10, 1)]  # max_batch = 3
    first = server.requests[0]
    assert (first.method, first.path) == ("POST", "/ingest")
    assert first.headers["authorization"] == f"Bearer {TOKEN}"
    assert first.headers["content-type"] == "application/json"
    # New entries committed later are picked up when the pipeline sets `wake`.
    backlog.add(make_entry(11))
    running.sink.wake.set()
    assert wait_for(lambda: backlog.cursor() == 11)
    stats = running.sink.stats
    assert (stats.published, stats.acknowledged, stats.rejected, stats.retries) == (11, 11, 0, 0)
    assert stats.connected
    running.close()


def test_http_sink_retries_500_without_releasing(server, run_sink):
    server.script(500, count=3, body=b"broker busy")
    backlog = MemoryBacklog([make_entry(i) for i in range(1, 6)])
    backlog.check_release = released_only_after_2xx(server)
    running = run_sink(config(server), backlog)
    assert wait_for(lambda: backlog.cursor() == 5)
    log = server.snapshot()
    assert [(r.json["entry"], r.status) for r in log[:4]] == [(1, 500), (1, 500), (1, 500), (1, 204)]
    assert delivered_ids(server) == [1, 2, 3, 4, 5]
    assert running.sink.stats.retries == 3
    assert "HTTP 500" in running.sink.stats.last_error
    running.close()


def test_http_sink_retry_resumes_at_the_failed_message(server, run_sink):
    backlog = MemoryBacklog([make_entry(i) for i in range(1, 4)])
    # Entry 1 passes, then entry 2 fails twice: entry 1 is not sent again within the batch.
    server.script(204)
    server.script(503, count=2)
    running = run_sink(config(server), backlog)
    assert wait_for(lambda: backlog.cursor() == 3)
    assert entry_ids(server.snapshot()) == [1, 2, 2, 2, 3]
    running.close()


def test_http_sink_429_waits_for_retry_after(server, run_sink):
    server.script(429, headers={"Retry-After": "1"})
    backlog = MemoryBacklog([make_entry(1), make_entry(2)])
    running = run_sink(config(server), backlog)
    assert wait_for(lambda: backlog.cursor() == 2)
    first, second = server.snapshot()[:2]
    assert (first.status, second.status, entry_ids([first, second])) == (429, 204, [1, 1])
    # The backoff alone would retry after ~0.02-0.1 s; Retry-After asked for 1 s. Lower bound only.
    assert second.received - first.received >= 0.9
    running.close()


def test_http_sink_retry_after_is_capped(server, run_sink):
    server.script(503, headers={"Retry-After": "3600"})
    backlog = MemoryBacklog([make_entry(1)])
    running = run_sink(config(server, retry_after_max_s=0.2), backlog)
    assert wait_for(lambda: backlog.cursor() == 1, timeout=5)
    running.close()


def test_http_sink_timeout_is_retried(server, run_sink):
    server.stall(3.0)
    backlog = MemoryBacklog([make_entry(i) for i in range(1, 4)])
    running = run_sink(config(server, timeout_s=0.5), backlog)
    assert wait_for(lambda: backlog.cursor() == 3)
    # The stalled request counts as sent; its entry went again on a new connection.
    assert entry_ids(server.snapshot())[:2] == [1, 1]
    assert delivered_ids(server) == [1, 2, 3]
    stats = running.sink.stats
    assert stats.reconnects >= 1 and stats.retries >= 1
    assert "Timeout" in stats.last_error
    running.close()


def test_http_sink_connection_refused_is_retried_until_the_server_appears(run_sink):
    placeholder = HttpServer()  # reserve a free port, then free it
    port = placeholder.port
    placeholder.close()
    backlog = MemoryBacklog([make_entry(1)])
    cfg = HttpUpstreamConfig(name="late", endpoint=f"http://127.0.0.1:{port}/in", timeout_s=1.0,
                             backoff_min_s=0.02, backoff_max_s=0.1)
    running = run_sink(cfg, backlog)
    assert wait_for(lambda: running.sink.stats.reconnects >= 2)
    assert backlog.cursor() == 0 and not running.sink.stats.connected
    running.close()


def test_http_sink_400_goes_to_dead_letter_and_the_cursor_moves_on(server, run_sink):
    server.script(204)
    server.script(400, body=b'{"type":"https://uri.etsi.org/ngsi-ld/errors/BadRequestData","title":"bad"}')
    backlog = MemoryBacklog([make_entry(i) for i in range(1, 5)])
    dead: list[tuple[OutMessage, int, str]] = []
    running = run_sink(config(server), backlog, dead_letter=lambda m, s, b: dead.append((m, s, b)))
    assert wait_for(lambda: backlog.cursor() == 4)
    assert len(dead) == 1
    message, status, excerpt = dead[0]
    assert (json.loads(message.payload), status) == ({"entry": 2}, 400)
    assert "BadRequestData" in excerpt
    assert entry_ids(server.snapshot()) == [1, 2, 3, 4]  # the rejected message was not retried
    assert (running.sink.stats.rejected, running.sink.stats.acknowledged) == (1, 3)
    running.close()


def test_http_sink_404_is_dead_lettered_for_replay(server, run_sink):
    server.script(404, count=1)
    backlog = MemoryBacklog([make_entry(1), make_entry(2)])
    dead: list[tuple[OutMessage, int, str]] = []
    running = run_sink(config(server), backlog, dead_letter=lambda m, s, b: dead.append((m, s, b)))
    assert wait_for(lambda: backlog.cursor() == 2)
    assert [s for _, s, _ in dead] == [404] and [r.status for r in server.snapshot()] == [404, 204]
    running.close()


def test_http_sink_207_with_errors_is_accepted_and_reported(server, run_sink):
    body = json.dumps({"success": ["urn:ngsi-ld:Device:a"], "errors": [
        {"entityId": "urn:ngsi-ld:X:b", "error": {"type": "BadRequestData", "title": "bad attribute"}}]}).encode()
    server.script(207, headers={"Content-Type": "application/json"}, body=body)
    backlog = MemoryBacklog([make_entry(1), make_entry(2)])
    dead: list[tuple[OutMessage, int, str]] = []
    running = run_sink(config(server), backlog, dead_letter=lambda m, s, b: dead.append((m, s, b)))
    assert wait_for(lambda: backlog.cursor() == 2)
    assert [(json.loads(m.payload), s) for m, s, _ in dead] == [({"entry": 1}, 207)]
    assert running.sink.stats.extra == {"partial": 1}
    assert entry_ids(server.snapshot()) == [1, 2]
    running.close()


# --- credentials, media types, TLS ---


def test_http_sink_rereads_a_rotated_token_after_401(server, token_file, run_sink, caplog):
    caplog.set_level(logging.DEBUG)
    server.require_auth = "Bearer rotated-token"
    backlog = MemoryBacklog()
    dead: list[tuple[OutMessage, int, str]] = []
    running = run_sink(config(server, bearer_token_file=str(token_file)), backlog,
                       dead_letter=lambda m, s, b: dead.append((m, s, b)))
    token_file.write_text("rotated-token\n")  # rotated after the sink read the old one
    backlog.add(make_entry(1))
    assert wait_for(lambda: backlog.cursor() == 1)
    assert [r.status for r in server.snapshot()] == [401, 204] and dead == []
    assert server.snapshot()[-1].headers["authorization"] == "Bearer rotated-token"
    running.close()
    assert TOKEN not in caplog.text and "rotated-token" not in caplog.text


def test_http_sink_bad_files_fail_at_construction(tmp_path, server):
    empty = tmp_path / "empty.token"
    empty.write_text("\n")
    for path in (empty, tmp_path / "missing.token"):
        with pytest.raises(ValueError, match=str(path)):
            HttpSink(config(server, bearer_token_file=str(path)), MemoryBacklog, per_entry, threading.Event())
    with pytest.raises(ValueError, match="TLS files"):
        HttpSink(config(server, ca_file=str(tmp_path / "missing-ca.pem")), MemoryBacklog, per_entry,
                 threading.Event())
    with pytest.raises(ValueError, match="not an http"):
        HttpSink(config(server, endpoint="ftp://example/x"), MemoryBacklog, per_entry, threading.Event())


def test_http_sink_ngsi_ld_upsert_request(server, run_sink):
    backlog = MemoryBacklog([make_entry(1), make_entry(2), make_entry(3, dev_eui="0004a30b001c0ffe")])
    cfg = config(server, endpoint=ngsi_ld.upsert_url(server.url), format="ngsi-ld", max_batch=10)
    running = run_sink(cfg, backlog, formatter=ngsi_ld.make_ngsi_ld_formatter())
    assert wait_for(lambda: backlog.cursor() == 3)
    requests = server.snapshot()
    assert {(r.path, r.query["options"][0], r.headers["content-type"]) for r in requests} == \
        {("/ngsi-ld/v1/entityOperations/upsert", "update", "application/ld+json")}
    # Two uplinks of one device → two requests, the older observation first.
    bodies = [r.json for r in requests]
    assert len(bodies) == 2
    first_ids = [e["id"] for e in bodies[0]]
    assert "urn:ngsi-ld:IndoorEnvironmentObserved:a81758fffe0346f1" in first_ids
    assert "urn:ngsi-ld:IndoorEnvironmentObserved:0004a30b001c0ffe" in first_ids
    temps = [e["temperature"]["value"] for body in bodies for e in body if e["id"].endswith("a81758fffe0346f1")
             and "temperature" in e]
    assert temps == [20.1, 20.2]
    running.close()


def test_http_sink_senml_cbor_content_type(server, run_sink):
    def cbor(entries: Sequence[Entry]) -> list[OutMessage]:
        return [OutMessage("", senml.encode(senml.measurement_records(entries), senml.CBOR),
                           senml.CONTENT_TYPES[senml.CBOR])]

    backlog = MemoryBacklog([make_entry(1), make_entry(2)])
    running = run_sink(config(server, format="senml+cbor"), backlog, formatter=cbor)
    assert wait_for(lambda: backlog.cursor() == 2)
    (request,) = server.snapshot()
    assert request.headers["content-type"] == "application/senml+cbor"
    resolved = senml.resolve(senml.decode(request.body, senml.CBOR))
    assert [r["v"] for r in resolved if r["n"].endswith("_temperature")] == [20.1, 20.2]
    running.close()


def test_http_sink_extra_headers_and_gap_notices_first(server, run_sink):
    backlog = MemoryBacklog([make_entry(1)])
    backlog.pending_notices[7] = OutMessage("notice", b'{"type":"gap","dropped":12}', "application/json")
    cfg = config(server, headers=(("NGSILD-Tenant", "sundsvall"),), notice_endpoint=f"{server.url}/notices")
    running = run_sink(cfg, backlog)
    assert wait_for(lambda: backlog.cursor() == 1)
    notice, data = server.snapshot()
    assert (notice.path, notice.json["dropped"], data.path) == ("/notices", 12, "/ingest")
    assert notice.headers["ngsild-tenant"] == data.headers["ngsild-tenant"] == "sundsvall"
    assert backlog.pending_notices == {}
    running.close()


def test_http_sink_mutual_tls(tmp_path, run_sink):
    pki = make_pki(tmp_path / "pki")
    with serving(certfile=pki.server_cert, keyfile=pki.server_key, client_ca=pki.ca) as tls_server:
        backlog = MemoryBacklog([make_entry(1)])
        cfg = config(tls_server, ca_file=str(pki.ca), cert_file=str(pki.client_cert), key_file=str(pki.client_key))
        running = run_sink(cfg, backlog)
        assert wait_for(lambda: backlog.cursor() == 1)
        running.close()


def test_http_sink_verifies_the_server_certificate(tmp_path, run_sink):
    pki = make_pki(tmp_path / "pki")
    other = make_pki(tmp_path / "other", ca_name="someone-else")
    with serving(certfile=pki.server_cert, keyfile=pki.server_key) as tls_server:
        backlog = MemoryBacklog([make_entry(1)])
        running = run_sink(config(tls_server, ca_file=str(other.ca)), backlog)
        assert wait_for(lambda: running.sink.stats.reconnects >= 2)
        # The problem by name, as the page and status show it (and an ERROR in the log, not a blip).
        assert backlog.cursor() == 0 and "certificate verify failed" in running.sink.stats.last_error
        assert tls_server.snapshot() == []
        running.close()


def test_http_sink_uses_an_injected_transport():
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201)

    backlog = MemoryBacklog([make_entry(1), make_entry(2)])
    cfg = HttpUpstreamConfig(name="mock", endpoint="https://broker.invalid/ngsi-ld/v1/entityOperations/upsert")
    sink = HttpSink(cfg, lambda: backlog, per_entry, threading.Event(), transport=httpx.MockTransport(handler))
    running = Running(sink)
    assert wait_for(lambda: backlog.cursor() == 2)
    running.close()
    assert [json.loads(r.content)["entry"] for r in seen] == [1, 2]


# --- restarts ---


def test_http_sink_restart_resends_only_unacknowledged_batches(server, run_sink):
    backlog = MemoryBacklog([make_entry(i) for i in range(1, 10)])
    backlog.check_release = released_only_after_2xx(server)
    # The first batch (1-3) goes through, then entry 4 is acknowledged but 5 never is.
    server.script(204, count=4)
    server.script(503, count=10_000)
    first = run_sink(config(server), backlog)
    assert wait_for(lambda: len(server.snapshot()) >= 7)
    first.close()
    assert backlog.cursor() == 3  # batch 4-6 was never complete, so it was not released
    server.clear_script()
    before = len(server.snapshot())
    second = run_sink(config(server), backlog)  # a new process from the saved cursor
    assert wait_for(lambda: backlog.cursor() == 9)
    second.close()
    assert entry_ids(server.snapshot()[before:]) == [4, 5, 6, 7, 8, 9]


def test_http_sink_stops_promptly_during_a_long_retry_after(server, run_sink):
    server.script(429, headers={"Retry-After": "60"})
    backlog = MemoryBacklog([make_entry(1)])
    running = run_sink(config(server, retry_after_max_s=60), backlog)
    assert wait_for(lambda: len(server.snapshot()) == 1)
    time.sleep(0.1)
    beat = running.sink.heartbeat
    started = time.monotonic()
    running.close()
    assert time.monotonic() - started < 5
    assert beat > 0 and backlog.cursor() == 0


# --- pure helpers ---


@pytest.mark.parametrize(("status", "verdict"), [
    (200, "accepted"), (201, "accepted"), (204, "accepted"), (207, "accepted"),
    (408, "retry"), (429, "retry"), (500, "retry"), (502, "retry"), (503, "retry"), (301, "retry"),
    (400, "rejected"), (401, "rejected"), (403, "rejected"), (404, "rejected"), (409, "rejected"),
    (413, "rejected"), (415, "rejected"), (422, "rejected"), (425, "rejected"),
])
def test_classify(status, verdict):
    assert classify(status) == verdict


def test_retry_after_seconds():
    now = 1_790_000_000.0  # 2026-09-21T14:13:20Z
    assert retry_after_seconds("120", now) == 120.0
    assert retry_after_seconds(" 0 ", now) == 0.0
    assert retry_after_seconds("Mon, 21 Sep 2026 14:15:20 GMT", now) == 120.0
    assert retry_after_seconds("Mon, 21 Sep 2026 14:10:00 GMT", now) == 0.0  # in the past
    assert retry_after_seconds("soon", now) is None
    assert retry_after_seconds("-5", now) is None
    assert retry_after_seconds(None, now) is None


def test_redact_hides_credentials_and_query():
    assert redact("https://user:pw@broker.example:8443/ngsi-ld/v1/x?apikey=abc") == \
        "https://broker.example:8443/ngsi-ld/v1/x"


def test_server_helper_scripting():
    with serving(default=Reply(202)) as s:
        s.script(500)
        with httpx.Client() as client:
            statuses = [client.post(f"{s.url}/p?q=1", json={"a": 1}).status_code for _ in range(2)]
        assert statuses == [500, 202]
        assert s.requests[0].query == {"q": ["1"]} and s.requests[0].json == {"a": 1}
