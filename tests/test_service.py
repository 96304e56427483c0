"""systemd integration: sd_notify over a real datagram socket, the watchdog, SIGHUP and SIGTERM on a real process."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge.service import notify, watchdog_interval

REPO = Path(__file__).resolve().parents[1]


def test_service_notify_without_systemd_is_a_no_op(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify("READY=1") is False


def test_service_watchdog_interval_is_half_of_watchdog_sec(monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "60000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert watchdog_interval() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", "1")
    assert watchdog_interval() is None


@pytest.mark.mosquitto
def test_service_run_notifies_ready_status_watchdog_and_stops_on_sigterm(broker_factory, make_config, tmp_path):
    """`edge run` under a fake systemd: READY, STATUS and WATCHDOG arrive; SIGHUP reloads; SIGTERM exits 0."""
    chirpstack, upstream = broker_factory(), broker_factory()
    cfg = make_config(chirpstack.url, upstream.url)
    sock_path = tmp_path / "notify.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(sock_path))
    server.settimeout(0.5)
    env = dict(os.environ, NOTIFY_SOCKET=str(sock_path), WATCHDOG_USEC="2000000")
    proc = subprocess.Popen([sys.executable, "-m", "edge", "run", "--config", str(cfg)], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    got: list[str] = []
    try:
        end = time.monotonic() + 20
        while time.monotonic() < end and not ({"READY=1", "WATCHDOG=1"} <= set(got)
                                              and any(m.startswith("STATUS=") for m in got)):
            try:
                got.append(server.recv(4096).decode())
            except TimeoutError:
                pass
        assert "READY=1" in got and "WATCHDOG=1" in got
        assert any(m.startswith("STATUS=ChirpStack connected") for m in got), got
        proc.send_signal(signal.SIGHUP)
        end = time.monotonic() + 10
        while time.monotonic() < end and "RELOADING=1" not in got:
            try:
                got.append(server.recv(4096).decode())
            except TimeoutError:
                pass
        assert "RELOADING=1" in got
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        assert b"Reloaded log level and decoder rules" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        server.close()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_service_unit_exposure_is_ok():
    out = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(REPO / "systemd/lorawan-edge.service")],
                         capture_output=True, text=True, timeout=60)
    line = next(x for x in out.stdout.splitlines() if "Overall exposure level" in x)
    exposure = float(line.split(":")[1].split()[0])
    assert exposure <= 2.5, line


def test_service_journal_handler_sends_structured_fields(tmp_path):
    """Log records reach journald's native socket with MESSAGE, PRIORITY and the extra fields."""
    import logging

    from edge.telemetry import JournalHandler

    path = tmp_path / "journal.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(path))
    server.settimeout(2)
    handler = JournalHandler(str(path))
    logger = logging.getLogger("edge.test.journal")
    logger.addHandler(handler)
    try:
        logger.error("Buffer full: dropped %d uplinks for upstream %s", 7, "city",
                     extra={"upstream": "city", "count": 7})
        entry = server.recv(65536).decode()
        logger.warning("two\nlines", extra={"dev_eui": "a81758fffe0346f1"})
        binary = server.recv(65536)
    finally:
        logger.removeHandler(handler)
        handler.close()
        server.close()
    fields = dict(line.split("=", 1) for line in entry.strip().splitlines())
    assert fields["MESSAGE"] == "Buffer full: dropped 7 uplinks for upstream city"
    assert fields["PRIORITY"] == "3" and fields["UPSTREAM"] == "city" and fields["COUNT"] == "7"
    assert fields["SYSLOG_IDENTIFIER"] == "lorawan-edge"
    assert b"MESSAGE=two\\nlines\n" in binary  # escaped: one record never reads as two (edge/telemetry.py)
    assert b"DEV_EUI=a81758fffe0346f1\n" in binary


MDWE_SCRIPT = """
import ctypes, mmap, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN (Linux >= 6.3)
    sys.exit(3)
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    sys.exit(4)  # the kernel did not enforce it
except PermissionError:
    pass
from edge.decoding.js.runtime import JsRuntime
result = JsRuntime("function decodeUplink(i) { return {data: {t: i.bytes[0] / 10}}; }").decode_uplink(b"\\xe2", 1)
print(result.data)
"""


def test_service_js_codecs_work_under_memory_deny_write_execute():
    """The unit's MemoryDenyWriteExecute=yes is the kernel's MDWE: QuickJS (an interpreter) still decodes."""
    run = subprocess.run([sys.executable, "-c", MDWE_SCRIPT], capture_output=True, text=True, cwd=REPO, timeout=60)
    if run.returncode == 3:
        pytest.skip("this kernel has no PR_SET_MDWE")
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "{'t': 22.6}"


class _HangingDecoder:
    """A plugin decoder stuck in an endless loop (no time limit protects native Python decoders)."""

    id = "elsys/ers"  # the simulated devices' decoder tag
    fields: dict = {}

    def __init__(self) -> None:
        import threading

        self.entered = threading.Event()
        self.release = threading.Event()

    def decode(self, payload, fport, context):
        self.entered.set()
        self.release.wait()  # "forever", until the test lets go so the threads can be joined
        raise RuntimeError("released by the test")


def _collect(server: socket.socket, until: float) -> list[str]:
    got: list[str] = []
    while time.monotonic() < until:
        try:
            got.append(server.recv(4096).decode())
        except TimeoutError:
            pass
    return got


@pytest.mark.mosquitto
def test_service_hung_pipeline_stops_the_watchdog_and_fails_health(broker_factory, make_config, tmp_path,
                                                                   monkeypatch, caplog):
    """A source thread stuck in a decoder: WATCHDOG=1 stops (systemd restarts us), STATUS and /health say why."""
    import json
    import threading
    import urllib.error
    import urllib.request

    from edge import quarantine
    from edge.config import load_config
    from edge.pipeline import Pipeline
    from edge.service import Service
    from edge.simulate import Simulator, publish
    from edge.web import WebServer

    chirpstack, upstream = broker_factory(), broker_factory()
    cfg_path = make_config(chirpstack.url, upstream.url)
    sock_path = tmp_path / "notify.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(sock_path))
    server.settimeout(0.2)
    monkeypatch.setenv("NOTIFY_SOCKET", str(sock_path))
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    hang = _HangingDecoder()
    pipeline = Pipeline(load_config(cfg_path), decoders=[hang])
    service = Service(pipeline, cfg_path, stall_limit_s=3.0)
    started: list[WebServer] = []

    def start_web(stalled):
        # The service's own server on a free port (the test config turns [web] off).
        started.append(WebServer(pipeline, port=0, stalled=stalled))
        started[0].start()
        return started[0]

    monkeypatch.setattr(service, "start_web", start_web)
    runner = threading.Thread(target=service.run)
    runner.start()
    try:
        healthy = _collect(server, time.monotonic() + 2.5)
        assert "READY=1" in healthy and "WATCHDOG=1" in healthy, healthy
        sent: list = []
        publish(chirpstack.host, chirpstack.port, Simulator(1, seed=5), 1, None, on_sent=sent.append)
        assert hang.entered.wait(15), "the uplink never reached the decoder"
        # Past the stall limit the pings stop for good, and STATUS says which thread hangs.
        reaching = _collect(server, time.monotonic() + 4)  # also drains the pings sent before the limit
        hung = _collect(server, time.monotonic() + 3)
        assert "WATCHDOG=1" not in hung, hung
        assert any(m.startswith("STATUS=HUNG, no progress from source") for m in reaching + hung), reaching + hung
        assert any("No progress from source" in r.getMessage() and r.levelname == "ERROR" for r in caplog.records)
        try:
            urllib.request.urlopen(started[0].url + "health", timeout=10)
            raise AssertionError("/health answered 200 while the pipeline hangs")
        except urllib.error.HTTPError as exc:
            assert exc.code == 503
            problems = json.loads(exc.read())["problems"]
        assert any(p.startswith("no progress from source") for p in problems), problems
        # The uplink it hangs on is quarantined next to the buffer, so the restart gets past it.
        held = quarantine.load(quarantine.path_for(pipeline.cfg.buffer.path))
        assert list(held) == [sent[0].uplink_id], held
        entry = held[sent[0].uplink_id]
        assert (entry.dev_eui, entry.decoder, entry.stored) == (sent[0].dev_eui, "elsys/ers", False)
        errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR" and "quarantined" in r.getMessage()]
        assert len(errors) == 1 and sent[0].dev_eui in errors[0] and "elsys/ers" in errors[0], errors
        assert "edge redecode" in errors[0]
    finally:
        hang.release.set()
        service.stop.set()
        runner.join(30)
        server.close()
