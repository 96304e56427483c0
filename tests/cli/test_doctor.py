"""`edge doctor` against real Mosquitto brokers, a running gateway, a TLS upstream and damaged buffers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from edge.broker import Mosquitto, free_port
from edge.buffer import Batch, Buffer, NewUplink
from edge.cli.doctor import doctor
from edge.model import Uplink
from edge.simulate import Simulator, publish
from edge.sources.chirpstack_events import parse
from tests.pki import make_pki

pytestmark = pytest.mark.mosquitto


def _doctor(cfg: Path, *args: str) -> tuple[int, list[str], float]:
    started = time.monotonic()
    result = CliRunner().invoke(doctor, ["--config", str(cfg), *args], catch_exceptions=False)
    return result.exit_code, result.output.splitlines(), time.monotonic() - started


def _line(lines: list[str], check: str) -> str:
    found = [line for line in lines if line[6:].startswith(f"{check}:")]  # after "STATUS  "
    assert found, f"no line for check {check!r} in:\n" + "\n".join(lines)
    return found[0]


def _fill_buffer(cfg_path: Path, uplinks: int = 3) -> None:
    """Store simulated uplinks as `edge run` would, and register the upstream's cursor."""
    path = cfg_path.parent / "buffer.sqlite"
    buffer = Buffer(path)
    batch = Batch()
    for topic, payload, _ in Simulator(2, seed=3).events(uplinks):
        event = parse(topic, payload, time.time())
        assert isinstance(event, Uplink)
        batch.uplinks.append(NewUplink(event, topic, payload, time.time(), 2, "", "", []))
    buffer.append(batch)
    buffer.register_sink("city")
    buffer.close()


def test_doctor_live_gateway_all_ok_and_test_message_arrives(broker_factory, make_config, edge_process, recorder):
    chirpstack, upstream = broker_factory(), broker_factory()
    cfg = make_config(chirpstack.url, upstream.url)
    edge = edge_process(cfg)
    edge.start()
    edge.wait_connected()
    rec = recorder(upstream)
    sent: list = []
    publish(chirpstack.host, chirpstack.port, Simulator(2, seed=1), 6, None, sent.append)
    # Delivered upstream, so committed to the buffer the "chirpstack events" check reads.
    assert rec.wait_for({s.uplink_id for s in sent}, 30)
    code, lines, _ = _doctor(cfg, "--publish-test")
    assert code == 0, "\n".join(lines)
    assert all(line.split()[0] in ("OK", "WARN") for line in lines[:-1]), "\n".join(lines)
    for check in ("config", "chirpstack dns", "chirpstack tcp", "chirpstack mqtt", "chirpstack subscribe",
                  "chirpstack events", "upstream city dns", "upstream city tcp", "upstream city mqtt",
                  "upstream city publish", "disk", "buffer file", "buffer integrity", "buffer schema",
                  "upstream city backlog", "decoders"):
        assert _line(lines, check).startswith("OK"), _line(lines, check)
    assert "0 FAIL" in lines[-1]
    # The test message is on the notice topic and says what it is.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not any(m.topic.endswith("/notice") for m in rec.messages):
        time.sleep(0.05)
    notice = next(m for m in rec.messages if m.topic == "lorawan-edge/test/notice")
    assert json.loads(notice.payload)["type"] == "doctor-test"
    # Doctor used its own client id: the service's persistent session was never taken over.
    assert "Lost ChirpStack broker" not in edge.log.read_text()
    assert edge.terminate() == 0


def test_doctor_listen_reports_a_live_event(broker_factory, make_config):
    chirpstack, upstream = broker_factory(), broker_factory()
    cfg = make_config(chirpstack.url, upstream.url)
    sender = threading.Thread(target=publish, args=(chirpstack.host, chirpstack.port, Simulator(1, seed=2), 40, 8.0))
    sender.start()
    try:
        code, lines, elapsed = _doctor(cfg, "--listen", "10")
    finally:
        sender.join()
    assert code == 0, "\n".join(lines)
    assert "live up event" in _line(lines, "chirpstack events")
    assert elapsed < 10
    # No buffer yet (the service never ran): a warning, not a failure.
    assert _line(lines, "buffer file").startswith("WARN")


def test_doctor_no_recent_uplink_warns_with_fix(broker_factory, make_config):
    chirpstack, upstream = broker_factory(), broker_factory()
    cfg = make_config(chirpstack.url, upstream.url)
    code, lines, _ = _doctor(cfg)
    assert code == 0
    line = _line(lines, "chirpstack events")
    assert line.startswith("WARN") and "no uplink in the last hour (last: never)" in line and "— fix: " in line


def test_doctor_stopped_upstream_fails_fast_with_fix(broker_factory, make_config):
    chirpstack, upstream = broker_factory(), broker_factory()
    cfg = make_config(chirpstack.url, upstream.url)
    _fill_buffer(cfg)
    upstream.stop()
    code, lines, elapsed = _doctor(cfg, "--publish-test")
    assert code == 1
    line = _line(lines, "upstream city tcp")
    assert line.startswith("FAIL") and f"127.0.0.1:{upstream.port}" in line
    assert "— fix: make sure the broker runs" in line
    assert _line(lines, "chirpstack mqtt").startswith("OK")
    assert elapsed < 8
    assert "1 FAIL" in lines[-1]


@pytest.mark.parametrize("damage", ["garbage", "torn-pages"])
def test_doctor_corrupted_buffer_fails_integrity(broker_factory, make_config, damage):
    chirpstack, upstream = broker_factory(), broker_factory()
    cfg = make_config(chirpstack.url, upstream.url)
    path = cfg.parent / "buffer.sqlite"
    if damage == "garbage":
        path.write_bytes(os.urandom(64 * 1024))
    else:
        _fill_buffer(cfg, uplinks=300)
        db = Buffer(path)
        db.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.close()
        data = bytearray(path.read_bytes())
        page = int.from_bytes(data[16:18], "big")
        # Overwrite pages after the schema page: the header still says "SQLite format 3".
        data[page * 2: page * 5] = b"\xa5" * (page * 3)
        path.write_bytes(bytes(data))
    code, lines, _ = _doctor(cfg)
    assert code == 1
    line = _line(lines, "buffer integrity")
    assert line.startswith("FAIL") and "— fix: stop the service, move the buffer file aside" in line


def test_doctor_json_lists_every_finding(broker_factory, make_config):
    chirpstack, upstream = broker_factory(), broker_factory()
    cfg = make_config(chirpstack.url, upstream.url)
    _fill_buffer(cfg)
    result = CliRunner().invoke(doctor, ["--config", str(cfg), "--json"])
    assert result.exit_code == 0, result.output
    findings = json.loads(result.output)
    assert isinstance(findings, list) and len(findings) >= 15
    for f in findings:
        assert set(f) == {"check", "status", "detail", "fix"}
        assert f["status"] in ("OK", "WARN", "FAIL")
        assert bool(f["fix"]) == (f["status"] != "OK")
    assert {f["check"] for f in findings} >= {"config", "chirpstack mqtt", "upstream city mqtt", "disk",
                                              "buffer integrity", "upstream city backlog", "clock", "decoders"}


def test_doctor_invalid_config_names_the_key(tmp_path):
    cfg = tmp_path / "edge.toml"
    cfg.write_text('[chirpstack]\nmqtt_url = "http://x"\n\n[[upstream]]\nname = "city"\nurl = "mqtt://h"\nqos = 0\n')
    code, lines, _ = _doctor(cfg)
    assert code == 1
    assert any(line.startswith("FAIL  config: chirpstack.mqtt_url: must be mqtt://") for line in lines)
    assert any("upstream[0].qos" in line and "— fix: edit" in line for line in lines)


def test_doctor_dead_host_finishes_fast(make_config):
    # Nothing listens on these ports: connection refused, immediately.
    cfg = make_config(f"mqtt://127.0.0.1:{free_port()}", f"mqtt://127.0.0.1:{free_port()}")
    code, lines, elapsed = _doctor(cfg, "--listen", "30")
    assert code == 1
    assert _line(lines, "chirpstack tcp").startswith("FAIL")
    assert _line(lines, "upstream city tcp").startswith("FAIL")
    assert elapsed < 8


@pytest.fixture
def tls_upstream():
    """A broker with an mTLS + password listener (setup as in tests/sinks/test_mqtt_tls.py)."""
    shared = Path(tempfile.mkdtemp(prefix="edge-pki-"))  # outside the 0700 tmp_path: the broker drops root
    os.chmod(shared, 0o755)
    pki = make_pki(shared / "pki")
    pwfile = shared / "pki" / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(pwfile), "edge", "s3cret-Pa55"], check=True)
    os.chmod(pwfile, 0o644)
    tls_port = free_port()
    broker = Mosquitto(head="per_listener_settings true",
                       extra=(f"listener {tls_port} 127.0.0.1\ncafile {pki.ca}\ncertfile {pki.server_cert}\n"
                              f"keyfile {pki.server_key}\nrequire_certificate true\npassword_file {pwfile}\n"
                              "allow_anonymous false\n"))
    broker.start()
    yield tls_port, pki
    broker.close()
    shutil.rmtree(shared, ignore_errors=True)


def _tls_config(make_config, chirpstack, port, pki, secret, ca=None):
    cfg = make_config(chirpstack.url, f"mqtts://127.0.0.1:{port}")
    cfg.write_text(cfg.read_text().replace(
        'topic = "lorawan/{dev_eui}"',
        f'topic = "lorawan/{{dev_eui}}"\nca_file = "{ca or pki.ca}"\ncert_file = "{pki.client_cert}"\n'
        f'key_file = "{pki.client_key}"\nusername = "edge"\npassword_file = "{secret}"'))
    return cfg


def test_doctor_tls_upstream_warns_on_near_expiry_and_never_prints_the_password(tls_upstream, broker_factory,
                                                                                make_config, tmp_path):
    port, pki = tls_upstream
    secret = tmp_path / "secret"
    secret.write_text("s3cret-Pa55\n")
    cfg = _tls_config(make_config, broker_factory(), port, pki, secret)
    code, lines, _ = _doctor(cfg, "--publish-test")
    assert code == 0, "\n".join(lines)
    # tests/pki.py issues a one-day server certificate: under 30 days left is a warning.
    assert _line(lines, "upstream city tls").startswith("WARN  upstream city tls: TLSv1")
    assert "expires in" in _line(lines, "upstream city tls")
    assert _line(lines, "upstream city mqtt").startswith("OK")
    assert _line(lines, "upstream city publish").startswith("OK")
    assert "s3cret" not in "\n".join(lines)


def test_doctor_tls_upstream_untrusted_ca_and_wrong_password_fail(tls_upstream, broker_factory, make_config,
                                                                  tmp_path):
    port, pki = tls_upstream
    chirpstack = broker_factory()
    secret = tmp_path / "secret"
    secret.write_text("s3cret-Pa55\n")
    other = make_pki(tmp_path / "other", ca_name="not-the-city-ca")
    code, lines, _ = _doctor(_tls_config(make_config, chirpstack, port, pki, secret, ca=other.ca))
    assert code == 1
    line = _line(lines, "upstream city tls")
    assert line.startswith("FAIL") and "— fix: set ca_file in [upstream[0]]" in line

    secret.write_text("wrong-password\n")
    code, lines, _ = _doctor(_tls_config(make_config, chirpstack, port, pki, secret))
    assert code == 1
    line = _line(lines, "upstream city mqtt")
    assert line.startswith("FAIL") and "— fix: check username and password_file in [upstream[0]]" in line
    assert "wrong-password" not in "\n".join(lines)


def test_doctor_checks_chirpstack_api_token_tenant_and_device_cache(broker_factory, make_config, tmp_path):
    from tests.grpc_server import FakeChirpStack
    from tests.sources.test_chirpstack_grpc import OTHER_TENANT, TENANT, fleet

    chirpstack, upstream = broker_factory(), broker_factory()
    api = FakeChirpStack(fleet(3)).start()
    token = tmp_path / "api.token"
    token.write_text("secret-token\n")
    cfg = make_config(chirpstack.url, upstream.url)
    base = cfg.read_text()

    def configure(tenant: str) -> None:
        cfg.write_text(base.replace("[buffer]", f'api_url = "{api.url}"\napi_token_file = "{token}"\n'
                                    f'tenant_id = "{tenant}"\n\n[buffer]', 1))

    try:
        configure(TENANT)
        _fill_buffer(cfg)
        _, lines, _ = _doctor(cfg)
        assert _line(lines, "chirpstack api").startswith(f"OK    chirpstack api: token accepted at {api.url}, tenant")
        assert _line(lines, "device cache").startswith("WARN  device cache: empty") and "edge devices sync" in \
            _line(lines, "device cache")
        from edge.cli.devices import devices

        synced = CliRunner().invoke(devices, ["sync", "-c", str(cfg)], catch_exceptions=False)
        assert synced.exit_code == 0, synced.output
        _, lines, _ = _doctor(cfg)
        assert _line(lines, "device cache").startswith("OK    device cache: 3 devices, last synced")

        token.write_text("wrong\n")
        code, lines, _ = _doctor(cfg)
        assert code == 1
        assert _line(lines, "chirpstack api").startswith(f"FAIL  chirpstack api: ChirpStack at {api.url} rejected"
                                                         f" the token in {token}")
        assert _line(lines, "chirpstack api").endswith(f"fix: put an API key of this ChirpStack in {token}")

        token.write_text("secret-token\n")
        api.state.admin, api.state.allowed_tenants = False, {TENANT}  # a key of TENANT, configured for another
        configure(OTHER_TENANT)
        code, lines, _ = _doctor(cfg)
        assert code == 1 and "the key belongs to another tenant" in _line(lines, "chirpstack api")
        assert _line(lines, "chirpstack api").endswith("fix: set chirpstack.tenant_id to the tenant of the key,"
                                                       " or use an admin API key")

        api.stop()
        code, lines, _ = _doctor(cfg)
        assert code == 1 and "unreachable: nothing listens on that port" in _line(lines, "chirpstack api")
    finally:
        api.stop()


HTTP_TOKEN = "city-token-123"


def _http_config(make_config, chirpstack, upstream, endpoint: str, token_file: Path, notice: str = "") -> Path:
    """A config with the MQTT upstream plus an NGSI-LD HTTP upstream."""
    cfg = make_config(chirpstack.url, upstream.url)
    extra = (f'\n[[http_upstream]]\nname = "context"\nendpoint = "{endpoint}"\n'
             f'bearer_token_file = "{token_file}"\n')
    if notice:
        extra += f'notice_endpoint = "{notice}"\n'
    cfg.write_text(cfg.read_text() + extra)
    return cfg


def test_doctor_http_upstream_token_probe_and_test_notice(broker_factory, make_config, tmp_path):
    from tests.http_server import HttpServer, Reply

    chirpstack, upstream = broker_factory(), broker_factory()
    token = tmp_path / "context.token"
    token.write_text(HTTP_TOKEN + "\n")
    with HttpServer(Reply(200, body=b"[]")) as server:
        server.require_auth = f"Bearer {HTTP_TOKEN}"
        endpoint = f"{server.url}/ngsi-ld/v1/entityOperations/upsert?options=update"
        cfg = _http_config(make_config, chirpstack, upstream, endpoint, token, notice=f"{server.url}/notices")
        _fill_buffer(cfg)
        code, lines, _ = _doctor(cfg, "--publish-test")
        assert code == 0, "\n".join(lines)
        assert _line(lines, "config").endswith("is valid (2 upstream(s))")
        for check in ("upstream context dns", "upstream context tcp", "upstream context auth",
                      "upstream context publish"):
            assert _line(lines, check).startswith("OK"), _line(lines, check)
        assert _line(lines, "upstream context backlog").startswith("WARN  upstream context backlog: no delivery")
        # The probe reads (never writes) the broker's type list; the test notice says what it is.
        probe, notice = server.snapshot()
        assert (probe.method, probe.path) == ("GET", "/ngsi-ld/v1/types")
        assert (notice.method, notice.path, notice.json["type"]) == ("POST", "/notices", "doctor-test")
        assert HTTP_TOKEN not in "\n".join(lines)

        token.write_text("expired-token\n")
        code, lines, _ = _doctor(cfg)
        assert code == 1
        line = _line(lines, "upstream context auth")
        assert line.startswith("FAIL  upstream context auth: GET ") and "answered HTTP 401" in line
        assert line.endswith(f"fix: put a valid token in {token}")

        # Not an NGSI-LD broker at that address: the type list is not found.
        token.write_text(HTTP_TOKEN + "\n")
        server.script(404)
        code, lines, _ = _doctor(cfg)
        assert code == 1 and "no NGSI-LD broker there" in _line(lines, "upstream context auth")
    code, lines, _ = _doctor(cfg)
    assert code == 1 and _line(lines, "upstream context tcp").startswith("FAIL")
    assert "http_upstream[0].endpoint" in _line(lines, "upstream context tcp")


def test_doctor_https_upstream_untrusted_certificate_fails(broker_factory, make_config, tmp_path):
    from tests.http_server import HttpServer

    pki, other = make_pki(tmp_path / "pki"), make_pki(tmp_path / "other", ca_name="not-the-city-ca")
    token = tmp_path / "context.token"
    token.write_text(HTTP_TOKEN)
    with HttpServer(certfile=pki.server_cert, keyfile=pki.server_key) as server:
        endpoint = f"{server.url}/ngsi-ld/v1/entityOperations/upsert?options=update"
        cfg = _http_config(make_config, broker_factory(), broker_factory(), endpoint, token)
        cfg.write_text(cfg.read_text() + f'ca_file = "{other.ca}"\n')
        code, lines, _ = _doctor(cfg)
        assert code == 1
        line = _line(lines, "upstream context tls")
        assert line.startswith("FAIL") and "— fix: set ca_file in [http_upstream[0]]" in line
        cfg.write_text(cfg.read_text().replace(str(other.ca), str(pki.ca)))
        code, lines, _ = _doctor(cfg)
        assert _line(lines, "upstream context tls").startswith("WARN")  # a one-day certificate
        assert _line(lines, "upstream context auth").startswith("OK"), "\n".join(lines)


def test_doctor_and_status_ask_the_running_service(broker_factory, make_config, edge_process):
    """The service's own /health: healthy, then unhealthy (ChirpStack's broker gone), then not running."""
    from edge.cli import main

    chirpstack, upstream = broker_factory(), broker_factory()
    cfg = make_config(chirpstack.url, upstream.url)
    port = free_port()
    cfg.write_text(cfg.read_text().replace("[web]\nport = 0", f"[web]\nport = {port}"))
    code, lines, _ = _doctor(cfg)
    assert _line(lines, "service").startswith(f"FAIL  service: lorawan-edge does not answer at"
                                              f" http://127.0.0.1:{port}/health")
    assert "fix: start it: `systemctl start lorawan-edge`" in _line(lines, "service")
    edge = edge_process(cfg)
    edge.start()
    edge.wait_connected()
    deadline = time.monotonic() + 15
    while "OK" not in _line(_doctor(cfg)[1], "service") and time.monotonic() < deadline:
        time.sleep(0.2)  # the status server starts with the pipeline
    code, lines, _ = _doctor(cfg)
    assert _line(lines, "service") == f"OK    service: running and healthy (http://127.0.0.1:{port}/health)"
    _fill_buffer(cfg)
    status = json.loads(CliRunner().invoke(main, ["status", "-c", str(cfg), "--json"]).output)
    assert status["service"]["healthy"] is True and status["service"]["source_connected"] is True
    assert status["service"]["upstreams"]["city"]["connected"] is True

    chirpstack.stop()
    deadline = time.monotonic() + 15
    while "FAIL" not in _line(_doctor(cfg)[1], "service") and time.monotonic() < deadline:
        time.sleep(0.2)
    code, lines, _ = _doctor(cfg)
    assert code == 1
    assert _line(lines, "service").startswith("FAIL  service: running but unhealthy: ChirpStack source is"
                                              " disconnected")
    status = json.loads(CliRunner().invoke(main, ["status", "-c", str(cfg), "--json"]).output)
    assert status["service"]["healthy"] is False
    assert status["service"]["problems"] == ["ChirpStack source is disconnected"]
    text = CliRunner().invoke(main, ["status", "-c", str(cfg)]).output
    assert text.splitlines()[1] == "service: running, PROBLEMS: ChirpStack source is disconnected"

    assert edge.terminate() == 0
    status = json.loads(CliRunner().invoke(main, ["status", "-c", str(cfg), "--json"]).output)
    assert status["service"]["reachable"] is False and status["service"]["healthy"] is None
    assert status["buffer"]["used_bytes"] > 0 and status["upstreams"][0]["name"] == "city", "the buffer answers alone"
