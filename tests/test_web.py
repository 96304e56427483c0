"""The status server: Prometheus metrics, health, token, the JSON API and the page in headless Chromium."""

from __future__ import annotations

import base64
import json
import shutil
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge.config import parse_config
from edge.decoding.builtin import builtin_decoders
from edge.pipeline import Pipeline, wait_until
from edge.simulate import Simulator, dev_eui_of, publish
from edge.sources.chirpstack_mqtt import Message
from edge.status import redact
from edge.web import WebServer, is_loopback

CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed"
                                    " (apt-get install -y chromium); the page is checked in headless Chromium")
DEVICES = 3
UPLINKS = 9
TOKEN = "s3cret-Token-for-tests"
PHONE = (412, 915)


def config(tmp_path: Path, chirpstack: str = "mqtt://127.0.0.1:9", upstream: str = "mqtt://127.0.0.1:9",
           **buffer: Any) -> dict[str, Any]:
    return {
        "edge": {"id": "gw-web-test"},
        "chirpstack": {"mqtt_url": chirpstack, "reconnect_min_s": 0.1, "reconnect_max_s": 0.5},
        "buffer": {"path": str(tmp_path / "buffer.sqlite"), "batch_ms": 20, **buffer},
        "upstream": [{"name": "city", "url": upstream, "reconnect_min_s": 0.1, "reconnect_max_s": 0.5},
                     {"name": "backup", "url": upstream, "reconnect_min_s": 0.1, "reconnect_max_s": 0.5}],
    }


def simulated(count: int, *, seed: int = 1, age_s: float = 0.0, fail_last: bool = False) -> list[Message]:
    """ChirpStack v4 uplink events from edge.simulate, `age_s` old; the last one undecodable if asked."""
    out = []
    for i, (topic, body, _) in enumerate(Simulator(DEVICES, seed=seed).events(count)):
        doc = orjson.loads(body)
        if age_s:
            doc["time"] = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(time.time() - age_s))
        if fail_last and i == count - 1:
            doc["data"] = base64.b64encode(b"\xff\x00").decode()  # Elsys type 0xff does not exist
        out.append(Message(topic, orjson.dumps(doc), time.time()))
    return out


@pytest.fixture
def pipeline(tmp_path: Path) -> Iterator[Pipeline]:
    """A real Pipeline (no brokers) holding decoded uplinks of 3 devices, one decode failure, one malformed."""
    p = Pipeline(parse_config(config(tmp_path)), decoders=builtin_decoders())
    p.handle(simulated(UPLINKS, fail_last=True))
    p.handle([Message("application/x/device/0102030405060708/event/up", b"not json", time.time())])
    p.source.connected.set()  # as the source thread does once subscribed
    yield p
    p.buffer.close()


@pytest.fixture
def served(pipeline: Pipeline) -> Iterator[Callable[..., WebServer]]:
    started: list[WebServer] = []

    def make(**kw: Any) -> WebServer:
        web = WebServer(pipeline, port=0, **kw)
        web.start()
        started.append(web)
        return web

    yield make
    for web in started:
        web.stop()


def get(url: str, headers: dict[str, str] | None = None, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def metrics(web: WebServer, headers: dict[str, str] | None = None) -> Samples:
    status, _, body = get(web.url + "metrics", headers)
    assert status == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}


def deliver(p: Pipeline, upstream: str, count: int, upto: int | None = None) -> None:
    """Move an upstream's cursor as its sink does after delivery."""
    p.buffer.register_sink(upstream)
    p.buffer.advance(upstream, p.buffer.last_id() if upto is None else upto, count)


# -- /metrics -------------------------------------------------------------------------------------------

def test_web_metrics_parse_and_show_the_counters(pipeline: Pipeline, served: Callable[..., WebServer]) -> None:
    web = served()
    m = metrics(web)
    assert m[("edge_received_total", ())] == UPLINKS + 1
    assert m[("edge_decoded_total", ())] == UPLINKS - 1
    assert m[("edge_decode_errors_total", ())] == 1
    assert m[("edge_malformed_total", ())] == 1
    assert m[("edge_duplicates_total", ())] == 0
    assert m[("edge_dropped_total", ())] == 0
    assert m[("edge_buffer_decode_errors", (("decoder", "elsys/ers"),))] == 1
    assert m[("edge_buffer_uplinks", ())] == UPLINKS
    assert m[("edge_buffer_bytes", ())] == pipeline.buffer.used_bytes() > 0
    assert m[("edge_source_connected", ())] == 1
    assert m[("edge_healthy", ())] == 1
    assert m[("edge_commits_total", ())] == 2
    assert m[("edge_info", (("edge_id", "gw-web-test"),))] == 1
    for up in ("city", "backup"):
        label = (("upstream", up),)
        assert m[("edge_upstream_backlog_uplinks", label)] == UPLINKS
        assert 0 <= m[("edge_upstream_backlog_age_seconds", label)] < 60
        assert m[("edge_upstream_delivered_total", label)] == 0
        assert m[("edge_upstream_reconnects_total", label)] == 0
        assert m[("edge_upstream_connected", label)] == 0
        assert m[("edge_upstream_stuck", label)] == 0
        assert ("edge_upstream_last_delivery_timestamp_seconds", label) not in m  # never delivered
    assert m[("process_resident_memory_bytes", ())] > 0


def test_web_metrics_and_status_count_unmapped_fields_per_codec(pipeline: Pipeline,
                                                             served: Callable[..., WebServer]) -> None:
    # ChirpStack's `object` of a profile no field map names: three fields sent without a unit.
    doc = Path(__file__).parent / "fixtures" / "chirpstack" / "v4_up_with_object.serialised.json"
    pipeline.handle([Message("application/app/device/0101010101010101/event/up", doc.read_bytes(), time.time())])
    web = served()
    m = metrics(web)
    assert m[("edge_unmapped_fields_total", (("codec", "object:chirpstack"),))] == 3
    status, _, body = get(web.url + "api/status")
    assert status == 200
    shown = orjson.loads(body)
    assert shown["unmapped"] == {"object:chirpstack": 3}
    assert not any(name.startswith("unmapped:") for name in shown["counters"])


def test_web_metrics_follow_delivery_and_sink_stats(pipeline: Pipeline, served: Callable[..., WebServer]) -> None:
    web = served()
    city = next(s for s in pipeline.sinks if s.name == "city")
    deliver(pipeline, "city", UPLINKS)
    city.stats.published, city.stats.acknowledged, city.stats.reconnects = 4, 4, 2
    city.stats.connected = True
    pipeline.source.reconnects = 3
    m = metrics(web)
    label = (("upstream", "city"),)
    assert m[("edge_upstream_backlog_uplinks", label)] == 0
    assert m[("edge_upstream_backlog_age_seconds", label)] == 0
    assert m[("edge_upstream_delivered_total", label)] == UPLINKS
    assert m[("edge_upstream_published_total", label)] == 4
    assert m[("edge_upstream_acknowledged_total", label)] == 4
    assert m[("edge_upstream_reconnects_total", label)] == 2
    assert m[("edge_upstream_connected", label)] == 1
    assert time.time() - m[("edge_upstream_last_delivery_timestamp_seconds", label)] < 60
    assert m[("edge_source_reconnects_total", ())] == 3
    assert m[("edge_upstream_backlog_uplinks", (("upstream", "backup"),))] == UPLINKS


def test_web_metrics_openmetrics_when_asked(served: Callable[..., WebServer]) -> None:
    status, headers, body = get(served().url + "metrics", {"Accept": "application/openmetrics-text"})
    assert status == 200
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")


def test_web_backlog_matches_the_buffers_own_count_after_trimming(tmp_path: Path) -> None:
    """Backlogs come from id spans (O(1)); they must equal Buffer.sinks()' count(*) even once the buffer trims."""
    p = Pipeline(parse_config(config(tmp_path, max_size_mb=0.25)), decoders=builtin_decoders())
    try:
        deliver(p, "backup", 40, upto=40)
        for seed in range(12):
            p.handle(simulated(100, seed=seed))
        assert p.buffer.counters()["dropped"] > 0, "the test needs the buffer to have trimmed"
        web = WebServer(p)
        snap = web.snapshot()
        expected = {s["name"]: s["backlog"] for s in p.buffer.sinks(["city", "backup"])}
        assert {u["name"]: u["backlog"] for u in snap.upstreams} == expected
        assert snap.uplinks == p.buffer.db.execute("SELECT count(*) FROM uplinks").fetchone()[0]
    finally:
        p.buffer.close()


# -- /health ------------------------------------------------------------------------------------------

def test_web_health_fails_while_the_source_is_disconnected(pipeline: Pipeline,
                                                           served: Callable[..., WebServer]) -> None:
    web = served()
    status, _, body = get(web.url + "health")
    assert status == 200 and orjson.loads(body)["healthy"] is True
    pipeline.source.connected.clear()
    status, headers, body = get(web.url + "health")
    doc = orjson.loads(body)
    assert status == 503 and headers["Content-Type"] == "application/json"
    assert doc["healthy"] is False and doc["source_connected"] is False
    assert doc["problems"] == ["ChirpStack source is disconnected"]
    assert metrics(web)[("edge_healthy", ())] == 0
    pipeline.source.connected.set()
    assert get(web.url + "health")[0] == 200


def test_web_health_fails_while_an_upstream_is_stuck(tmp_path: Path) -> None:
    p = Pipeline(parse_config(config(tmp_path)), decoders=builtin_decoders())
    p.source.connected.set()
    p.handle(simulated(5, age_s=3600))  # an hour-old backlog: ChirpStack's receive time is what counts
    try:
        with WebServer(p, port=0, stuck_after_s=900) as web:
            status, _, body = get(web.url + "health")
            doc = orjson.loads(body)
            assert status == 503
            assert doc["upstreams"]["city"]["backlog"] == 5
            assert doc["upstreams"]["city"]["oldest_undelivered_age_s"] >= 3600
            assert len(doc["problems"]) == 2
            assert doc["problems"][0].startswith("upstream city is stuck: its oldest undelivered uplink is 36")
            assert "limit 900 s" in doc["problems"][0]
            assert metrics(web)[("edge_upstream_stuck", (("upstream", "city"),))] == 1
            deliver(p, "city", 5)
            doc = orjson.loads(get(web.url + "health")[2])
            assert [pr.split(" is ")[0] for pr in doc["problems"]] == ["upstream backup"]
            deliver(p, "backup", 5)
            assert get(web.url + "health")[0] == 200
        with WebServer(p, port=0, stuck_after_s=7200) as web:
            p.handle(simulated(5, seed=2, age_s=3600))
            assert get(web.url + "health")[0] == 200, "an hour is within a two-hour limit"
    finally:
        p.buffer.close()


def test_web_health_fails_when_the_buffer_cannot_be_read(tmp_path: Path) -> None:
    """Any object shaped like a pipeline will do (PipelineView); here one whose buffer file is gone."""
    cfg = parse_config(config(tmp_path))
    stats = SimpleNamespace(published=0, acknowledged=0, rejected=0, reconnects=0, connected=True, last_error="")
    fake = SimpleNamespace(cfg=cfg, commits=0, source=SimpleNamespace(connected=threading.Event(), reconnects=0),
                           sinks=[SimpleNamespace(name="city", stats=stats)])
    fake.source.connected.set()
    with WebServer(fake, port=0) as web:
        status, _, body = get(web.url + "health")
        assert status == 503
        assert orjson.loads(body)["problems"][0].startswith("buffer unreadable")
        m = metrics(web)
        assert m[("edge_buffer_readable", ())] == 0
        assert ("edge_received_total", ()) not in m, "no made-up zeros without a buffer"
        status, _, body = get(web.url + "api/status")
        assert status == 200 and orjson.loads(body)["buffer"]["error"]


# -- token and bind address ------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["", "metrics", "health", "api/status"])
def test_web_token_required_when_set(served: Callable[..., WebServer], path: str) -> None:
    web = served(token=TOKEN)
    for headers, query in (({}, ""), ({"Authorization": "Bearer wrong"}, ""), ({}, "?token=wrong"),
                           ({"Authorization": f"Basic {TOKEN}"}, ""), ({}, "?token=")):
        status, got, body = get(web.url + path + query, headers)
        assert status == 401, (headers, query)
        assert got["WWW-Authenticate"].startswith("Bearer")
        assert TOKEN.encode() not in body
    for headers, query in (({"Authorization": f"Bearer {TOKEN}"}, ""), ({"Authorization": f"bearer {TOKEN}"}, ""),
                           ({}, f"?token={TOKEN}")):
        status, _, body = get(web.url + path + query, headers)
        assert status == 200, (headers, query)
        assert TOKEN.encode() not in body, "the token is never echoed"


def test_web_refuses_a_non_loopback_bind_without_token(pipeline: Pipeline) -> None:
    for bind in ("0.0.0.0", "::", "192.168.1.10", "gateway.local"):
        with pytest.raises(ValueError, match="without a token"):
            WebServer(pipeline, bind=bind)
    with pytest.raises(ValueError, match="empty"):
        WebServer(pipeline, bind="0.0.0.0", token="  ")
    with WebServer(pipeline, bind="0.0.0.0", port=0, token=TOKEN) as web:
        url = f"http://127.0.0.1:{web.port}/health"
        assert get(url)[0] == 401
        assert get(url, {"Authorization": f"Bearer {TOKEN}"})[0] == 200


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("localhost", True),
    ("0.0.0.0", False), ("::", False), ("10.0.0.5", False), ("fe80::1", False), ("edge.example", False),
])
def test_web_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_web_serves_on_ipv6_loopback(pipeline: Pipeline) -> None:
    try:
        web = WebServer(pipeline, bind="::1", port=0)
        web.start()
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    try:
        assert web.url.startswith("http://[::1]:")
        assert get(web.url + "health")[0] == 200
    finally:
        web.stop()


# -- /api/status and the rest ---------------------------------------------------------------------------------

def test_web_api_status_has_what_the_page_shows(pipeline: Pipeline, served: Callable[..., WebServer]) -> None:
    status, headers, body = get(served().url + "api/status")
    assert status == 200 and headers["Cache-Control"] == "no-store"
    doc = orjson.loads(body)
    assert doc["edge_id"] == "gw-web-test" and doc["healthy"] is True
    assert doc["source"] == {"connected": True, "reconnects": 0, "commits": 2}
    assert doc["buffer"]["uplinks"] == UPLINKS and doc["buffer"]["max_bytes"] == 1024 * 1024 * 1024
    assert {d["dev_eui"] for d in doc["devices"]} == {dev_eui_of(i) for i in range(DEVICES)}
    for d in doc["devices"]:
        assert isinstance(d["rssi"], float | int) and isinstance(d["snr"], float | int)
        assert d["decoder"] == "elsys/ers" and d["status"] in ("decoded", "failed")
    decoded = next(d for d in doc["devices"] if d["status"] == "decoded")
    assert {r["n"] for r in decoded["readings"]} >= {"temperature", "humidity"}
    assert [u["name"] for u in doc["upstreams"]] == ["city", "backup"]
    assert doc["upstreams"][0]["backlog"] == UPLINKS
    assert doc["decode_errors"]["by_decoder"] == {"elsys/ers": 1}
    (failure,) = doc["decode_errors"]["recent"]
    assert "0xff" in failure["error"]
    (bad,) = doc["malformed"]
    assert bad["topic"] == "application/x/device/0102030405060708/event/up"


def test_web_api_status_device_limit(served: Callable[..., WebServer]) -> None:
    web = served()
    assert len(orjson.loads(get(web.url + "api/status?devices=1")[2])["devices"]) == 1
    assert len(orjson.loads(get(web.url + "api/status?devices=nonsense")[2])["devices"]) == DEVICES


def test_web_sink_errors_are_shown_without_secrets(pipeline: Pipeline, served: Callable[..., WebServer]) -> None:
    pipeline.sinks[0].stats.last_error = ("ConnectError: https://user:pa55@broker.example/ngsi-ld?apikey=k3y"
                                          " failed; token=abc123")
    body = get(served().url + "api/status")[2]
    shown = orjson.loads(body)["upstreams"][0]["last_error"]
    assert shown == "ConnectError: https://broker.example/ngsi-ld?*** failed; token=***"
    for secret in (b"pa55", b"k3y", b"abc123"):
        assert secret not in body


def test_web_redact_leaves_ordinary_errors_alone() -> None:
    assert redact("HTTP 503: service unavailable") == "HTTP 503: service unavailable"
    assert redact("connection lost (The connection was lost.)") == "connection lost (The connection was lost.)"
    assert redact("mqtts://edge:pw@10.0.0.1:8883") == "mqtts://10.0.0.1:8883"
    assert "xyz" not in redact("Authorization: Bearer xyz")
    assert "xyz" not in redact("sent bearer xyz")


def test_web_page_head_and_unknown_paths(served: Callable[..., WebServer]) -> None:
    web = served()
    status, headers, body = get(web.url)
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    assert b'name="viewport"' in body and b"api/status" in body
    assert b"http://" not in body and b"https://" not in body, "no external assets"
    assert "script-src 'sha256-" in headers["Content-Security-Policy"]
    status, headers, body = get(web.url + "health", method="HEAD")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0
    assert get(web.url + "nope")[0] == 404
    assert get(web.url + "metrics", method="POST")[0] == 501


def test_web_stop_is_idempotent_and_start_twice_is_harmless(pipeline: Pipeline) -> None:
    web = WebServer(pipeline, port=0)
    web.stop()
    web.start()
    web.start()
    port = web.port
    assert get(web.url + "health")[0] == 200
    web.stop()
    web.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)


# -- with real brokers -------------------------------------------------------------------------------------

@pytest.mark.mosquitto
def test_web_live_pipeline_reports_delivery_and_a_lost_source(tmp_path: Path,
                                                              broker_factory: Callable[..., Any]) -> None:
    """A Pipeline running between two Mosquitto brokers: delivery shows; ChirpStack's broker stopping fails health."""
    chirpstack, upstream = broker_factory(), broker_factory()
    p = Pipeline(parse_config(config(tmp_path, chirpstack.url, upstream.url)), decoders=builtin_decoders())
    stop = threading.Event()
    runner = threading.Thread(target=p.run, args=(stop,), daemon=True)
    runner.start()
    try:
        with WebServer(p, port=0) as web:
            assert wait_until(lambda: get(web.url + "health")[0] == 200, 15), get(web.url + "health")
            assert publish(chirpstack.host, chirpstack.port, Simulator(DEVICES, seed=5), 20, None) == 20

            def delivered() -> bool:
                m = metrics(web)
                return all(m[("edge_upstream_delivered_total", (("upstream", u),))] == 20 for u in ("city", "backup"))

            assert wait_until(delivered, 20)
            m = metrics(web)
            assert m[("edge_received_total", ())] == 20 and m[("edge_decoded_total", ())] == 20
            assert m[("edge_upstream_connected", (("upstream", "city"),))] == 1
            assert m[("edge_upstream_acknowledged_total", (("upstream", "city"),))] >= 1
            chirpstack.stop()
            assert wait_until(lambda: get(web.url + "health")[0] == 503, 15)
            assert orjson.loads(get(web.url + "health")[2])["problems"] == ["ChirpStack source is disconnected"]
            assert metrics(web)[("edge_source_connected", ())] == 0
    finally:
        stop.set()
        runner.join(30)


# -- the page in headless Chromium -------------------------------------------------------------------------

def chromium(tmp_path: Path, url: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    assert CHROMIUM is not None
    profile = tmp_path / f"chromium-profile-{time.monotonic_ns()}"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", f"--window-size={PHONE[0]},{PHONE[1]}", "--virtual-time-budget=3000",
           *args, url]
    return subprocess.run(cmd, capture_output=True, timeout=120, check=False)


def dump_dom(tmp_path: Path, url: str) -> str:
    done = chromium(tmp_path, url, "--dump-dom")
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    return done.stdout.decode()


def png_pixels(path: Path) -> tuple[int, int, list[bytes]]:
    """Width, height and the rows of RGB(A) pixels of an 8-bit truecolour PNG (stdlib only)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (length,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        chunk = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = chunk
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", header[:10])
    assert depth == 8 and colour in (2, 6), (depth, colour)
    bpp = 3 if colour == 2 else 4
    raw, stride, rows, prev = zlib.decompress(idat), width * bpp, [], bytearray(width * bpp)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for x in range(stride):
            a = line[x - bpp] if x >= bpp else 0
            b, c = prev[x], prev[x - bpp] if x >= bpp else 0
            if kind == 1:
                line[x] = (line[x] + a) & 0xFF
            elif kind == 2:
                line[x] = (line[x] + b) & 0xFF
            elif kind == 3:
                line[x] = (line[x] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        rows.append(bytes(line))
        prev = line
    return width, height, [bytes(r[i:i + 3]) for r in rows for i in range(0, stride, bpp)]


@needs_chromium
def test_web_page_renders_live_data_in_headless_chromium(served: Callable[..., WebServer], tmp_path: Path) -> None:
    dom = dump_dom(tmp_path, served().url)
    assert 'id="badge" class="badge ok">healthy<' in dom
    assert "lorawan-edge · gw-web-test" in dom
    for i in range(DEVICES):
        assert dev_eui_of(i) in dom
    assert "temperature" in dom and "°C" in dom and "RSSI -" in dom and " dBm" in dom and "SNR " in dom
    assert "unknown Elsys type 0xff" in dom
    assert "city" in dom and "backup" in dom
    assert '<div id="stale" style="display: none;"></div>' in dom, "the last poll succeeded"


@needs_chromium
def test_web_page_shows_problems(pipeline: Pipeline, served: Callable[..., WebServer], tmp_path: Path) -> None:
    pipeline.source.connected.clear()
    dom = dump_dom(tmp_path, served().url)
    assert 'class="badge bad">problem<' in dom
    assert "<li>ChirpStack source is disconnected</li>" in dom


@needs_chromium
def test_web_page_passes_its_token_on(served: Callable[..., WebServer], tmp_path: Path) -> None:
    web = served(token=TOKEN)
    dom = dump_dom(tmp_path, f"{web.url}?token={TOKEN}")
    assert dev_eui_of(0) in dom and "healthy" in dom


@needs_chromium
def test_web_page_screenshot_on_a_phone_screen(served: Callable[..., WebServer], tmp_path: Path) -> None:
    png = tmp_path / "status.png"
    done = chromium(tmp_path, served().url, f"--screenshot={png}", "--hide-scrollbars")
    assert done.returncode == 0 and png.exists(), done.stderr.decode(errors="replace")[-2000:]
    width, height, pixels = png_pixels(png)
    assert (width, height) == PHONE
    colours = set(pixels)
    assert len(colours) > 50, "a blank or near-blank page"
    # The health badge is drawn in the "ok" green (#1a7f37) only once live data said healthy.
    assert sum(1 for px in pixels if px == b"\x1a\x7f\x37") > 200
    assert png.stat().st_size > 10_000


def test_web_sensor_health_in_metrics_and_page_data(served: Callable[..., WebServer], pipeline: Pipeline) -> None:
    web = served()
    samples = metrics(web)
    # Counts per state and problem kind only: bounded series whatever the fleet's size.
    assert samples[("edge_devices", (("state", "ok"),))] == 3
    assert samples[("edge_devices", (("state", "silent"),))] == 0
    assert ("edge_device_problems", (("problem", "low-battery"),)) in samples
    assert not any("dev_eui" in dict(labels) for _, labels in samples)
    status, _, body = get(web.url + "api/status")
    health = json.loads(body)["health"]
    assert status == 200 and len(health["devices"]) == 3
    keys = {"dev_eui", "state", "problems", "expected_interval_s", "loss_ratio", "rssi_dbm"}
    assert keys <= set(health["devices"][0])
    page = get(web.url)[2].decode()
    assert "Sensor health" in page and "renderHealth" in page


def test_web_health_fails_soon_after_an_upstream_goes_down(pipeline: Pipeline) -> None:
    """A dead upstream is a problem after web.disconnected_after_s, not only once its backlog is old (15 min)."""
    from edge.sinks.base import SinkStats

    stats = SinkStats()
    stats.link(True)
    fake_sinks = [SimpleNamespace(name="city", stats=stats)]
    view = SimpleNamespace(cfg=pipeline.cfg, commits=0, source=pipeline.source, sinks=fake_sinks)
    with WebServer(view, port=0) as web:
        assert get(web.url + "health")[0] == 200
        stats.link(False)
        stats.last_error = "connection refused"
        doc = orjson.loads(get(web.url + "health")[2])
        assert doc["upstreams"]["city"]["connected"] is False and doc["healthy"] is True  # just now: a blip
        assert stats.disconnected_since is not None
        stats.disconnected_since -= pipeline.cfg.web.disconnected_after_s + 5
        status, _, body = get(web.url + "health")
        doc = orjson.loads(body)
        assert status == 503
        limit = pipeline.cfg.web.disconnected_after_s
        assert doc["problems"] == [f"upstream city has been unreachable for {limit + 5:.0f} s (limit {limit:g} s):"
                                   " connection refused"]
        stats.link(True)
        assert get(web.url + "health")[0] == 200
