"""Poison uplinks: a native decoder that hangs on one payload costs one restart, not a restart loop."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson
import paho.mqtt.client as paho
import pytest
from click.testing import CliRunner
from paho.mqtt.enums import CallbackAPIVersion

from edge import quarantine
from edge.buffer import Buffer
from edge.checks import Report
from edge.cli import main
from edge.cli.doctor_checks import check_quarantine
from edge.config import load_config
from edge.model import DecodeStatus
from edge.simulate import Simulator

REPO = Path(__file__).resolve().parents[1]
POISON = bytes.fromhex("01deadbeef")

# A third-party decoder plugin (found through the `edge.decoders` entry point) that loops forever on
# one payload; HANG is swapped for nothing to "fix" it. Native decoders have no time limit.
PLUGIN = '''
import threading

from edge import DecodeResult, Field, hookimpl

POISON = bytes.fromhex("01deadbeef")


class LoopDecoder:
    id = "acme/loop"
    fields = {"t": Field("temperature", "Cel")}

    def decode(self, payload, fport, context):
        if payload == POISON:
            threading.Event().wait()  # HANG
        return DecodeResult({"t": payload[1] / 10})


@hookimpl
def edge_decoders():
    return [LoopDecoder()]
'''

# `edge run` as systemd runs it, with a stall limit short enough for a test (the real floor is 120 s).
SERVICE = """
import sys
from pathlib import Path
from edge.config import load_config
from edge.pipeline import Pipeline
from edge.service import Service
from edge.telemetry import setup_logging
cfg = load_config(Path(sys.argv[1]))
setup_logging(cfg.log_level)
Service(Pipeline(cfg), Path(sys.argv[1]), stall_limit_s=2.0).run()
"""


def _install_plugin(root: Path) -> Path:
    """A real distribution as importlib.metadata sees one: dist-info with the entry point, plus the module."""
    info = root / "edge_decoder_acme-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: edge-decoder-acme\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[edge.decoders]\nacme_loop = acme_loop\n")
    module = root / "acme_loop.py"
    module.write_text(PLUGIN)
    return module


def _events(count: int, poison_at: int) -> list[tuple[str, bytes, str]]:
    """Simulated uplinks for the plugin's decoder; the one at `poison_at` carries the poison payload."""
    out = []
    for n, (topic, body, sent) in enumerate(Simulator(3, seed=11).events(count)):
        doc = orjson.loads(body)
        doc["deviceInfo"]["tags"]["decoder"] = "acme/loop"
        if n == poison_at:
            doc["data"] = base64.b64encode(POISON).decode()
        out.append((topic, orjson.dumps(doc), sent.uplink_id))
    return out


def _publish(broker, events: list[tuple[str, bytes, str]]) -> None:
    client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}")
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        for topic, body, _ in events:
            client.publish(topic, body, qos=1).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


def _wait(predicate, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def _row(buffer_path: str, uplink_id: str) -> list[tuple[int, str, str, bytes]]:
    buf = Buffer(buffer_path, readonly=True)
    try:
        return buf.db.execute("SELECT u.status, u.decoder, u.error, r.payload FROM uplinks u JOIN raw r ON r.id = u.id"
                              " WHERE u.uplink_id = ? ORDER BY u.id",
                              (uplink_id,)).fetchall()
    finally:
        buf.close()


@pytest.mark.mosquitto
def test_quarantine_poison_uplink_costs_one_restart_and_is_redecoded_later(
        broker_factory, make_config, recorder, edge_process, tmp_path, monkeypatch):
    """Hang → quarantine → SIGKILL (systemd) → restart stores the redelivered uplink raw → fixed decoder, redecode."""
    chirpstack, upstream = broker_factory(), broker_factory()
    cfg_path = make_config(chirpstack.url, upstream.url)
    cfg = load_config(cfg_path)
    held_path = quarantine.path_for(cfg.buffer.path)
    plugins = tmp_path / "plugins"
    module = _install_plugin(plugins)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(plugins), str(REPO), os.environ.get("PYTHONPATH", "")]))
    rec = recorder(upstream)
    events = _events(6, poison_at=1)
    ids = [uplink_id for _, _, uplink_id in events]
    poison = ids[1]

    # 1. The service hangs in the plugin on the poison uplink; its stall detection quarantines it.
    log1 = tmp_path / "first.log"
    with log1.open("wb") as out:
        first = subprocess.Popen([sys.executable, "-c", SERVICE, str(cfg_path)], stdout=out,
                                 stderr=subprocess.STDOUT, cwd=REPO)
    try:
        assert _wait(lambda: b"Connected to ChirpStack broker" in log1.read_bytes(), 20), log1.read_text()
        _publish(chirpstack, events[:1])
        assert rec.wait_for({ids[0]}, 20), log1.read_text()  # decoding works until the poison uplink
        _publish(chirpstack, events[1:3])
        assert _wait(held_path.exists, 30), log1.read_text()
    finally:
        first.send_signal(signal.SIGKILL)  # what systemd does once the watchdog pings stopped
        first.wait()
    held = json.loads(held_path.read_text())["uplinks"]
    assert [(e["uplink_id"], e["decoder"], e["stored"]) for e in held] == [(poison, "acme/loop", False)]
    errors = [line for line in log1.read_text().splitlines() if " ERROR " in line and "quarantined" in line]
    assert len(errors) == 1 and "acme/loop" in errors[0] and "edge redecode" in errors[0], errors
    assert _row(cfg.buffer.path, poison) == []  # never committed, so never acknowledged: the broker keeps it
    _publish(chirpstack, events[3:])  # more traffic while the gateway is down

    # 2. After the restart the broker redelivers the poison uplink; it is stored raw, not decoded
    # (the plugin would hang again), and everything behind it flows upstream.
    run = edge_process(cfg_path)
    run.start()
    run.wait_connected()
    assert rec.wait_for(set(ids) - {poison}, 30), (rec.ids(), run.log.read_text())
    assert _wait(lambda: _row(cfg.buffer.path, poison) != [], 10)
    [(status, decoder, error, payload)] = _row(cfg.buffer.path, poison)
    assert status == DecodeStatus.FAILED and decoder == "acme/loop"
    assert error == ("not decoded: decoder acme/loop hung on this uplink before (quarantined);"
                     " fix the decoder, then run edge redecode")
    assert base64.b64decode(orjson.loads(payload)["data"]) == POISON  # the raw event is kept
    assert poison not in rec.ids()
    held = json.loads(held_path.read_text())["uplinks"]
    assert [(e["uplink_id"], e["stored"]) for e in held] == [(poison, True)]
    status_json = json.loads(CliRunner().invoke(main, ["status", "--config", str(cfg_path), "--json"]).output)
    assert [e["uplink_id"] for e in status_json["quarantined"]] == [poison]
    assert status_json["counters"]["decode_failed"] == 1
    text = CliRunner().invoke(main, ["status", "--config", str(cfg_path)]).output
    assert ("quarantine: 1 uplink quarantined: decoder acme/loop hung on it (1 stored raw, 0 awaiting redelivery);"
            " fix the decoder or block it") in text

    # 3. The plugin is fixed (a new release installed); `edge redecode` decodes the stored raw uplink
    # while the service runs, and its reading goes upstream under the same uplink id.
    module.write_text(PLUGIN.replace("threading.Event().wait()  # HANG", "pass"))
    done = subprocess.run([sys.executable, "-m", "edge", "redecode", "--config", str(cfg_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "1 uplinks re-decoded: 1 decoded" in done.stdout
    assert "acme/loop hung on before" in done.stderr  # said before running the decoder again
    assert rec.wait_for({poison}, 30), run.log.read_text()
    assert rec.copies[poison][-1] == [("temperature", 0xde / 10, "Cel")]
    assert not held_path.exists()  # decoded now: nothing left to remind of
    assert "quarantine" not in CliRunner().invoke(main, ["status", "--config", str(cfg_path)]).output
    assert run.terminate() == 0


def _entry(uplink_id: str, age_s: float = 0.0, stored: bool = False) -> quarantine.Quarantined:
    return quarantine.Quarantined(uplink_id, "a81758fffe000001", "acme/loop", time.time() - age_s, stored)


def test_quarantine_file_is_atomic_pruned_and_survives_damage(tmp_path):
    path = quarantine.path_for(tmp_path / "buffer.sqlite")
    assert path.name == "buffer.sqlite.quarantine"
    quarantine.add(path, _entry("old", age_s=8 * 86400))
    quarantine.add(path, _entry("new"))
    assert list(quarantine.load(path)) == ["new"]  # older than a week: forgotten
    assert list(json.loads(path.read_text())["uplinks"][0]) == ["uplink_id", "dev_eui", "decoder", "time", "stored"]
    assert path.stat().st_mode & 0o777 == 0o600  # it names devices, like the buffer
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left behind
    quarantine.mark_stored(path, ["new", "unknown"])
    assert quarantine.load(path)["new"].stored
    quarantine.remove(path, ["new"])
    assert not path.exists()
    path.write_text('{"uplinks": [{"uplink_')  # torn by hand: ignored, never fatal
    assert quarantine.load(path) == {}


def test_quarantine_pipeline_start_prunes_committed_uplinks(make_config):
    """An uplink that was committed after all (a slow decoder finished before the restart) is not awaited."""
    from edge.pipeline import Pipeline
    from edge.sources.chirpstack_mqtt import Message

    cfg = load_config(make_config("mqtt://127.0.0.1:1", "mqtt://127.0.0.1:2"))
    pipeline = Pipeline(cfg)
    (topic, body, sent), (topic2, body2, sent2) = list(Simulator(1, seed=3).events(2))
    pipeline.handle([Message(topic, body, 0.0)])
    pipeline.buffer.close()
    path = quarantine.path_for(cfg.buffer.path)
    quarantine.add(path, _entry(sent.uplink_id))
    quarantine.add(path, _entry(sent2.uplink_id))
    pipeline = Pipeline(cfg)
    assert list(pipeline.quarantined) == [sent2.uplink_id]
    assert list(quarantine.load(path)) == [sent2.uplink_id]
    # The awaited one arrives: stored raw with the quarantine error, not decoded (elsys/ers would decode it).
    pipeline.handle([Message(topic2, body2, 0.0)])
    [entry] = pipeline.buffer.read(0, 10)[1:]
    assert entry.uplink_id == sent2.uplink_id and entry.readings == []
    assert pipeline.buffer.counters()["decode_failed"] == 1 and not pipeline.quarantined
    assert quarantine.load(path)[sent2.uplink_id].stored
    pipeline.buffer.close()


def test_quarantine_doctor_warns_only_when_uplinks_are_held(make_config):
    cfg = load_config(make_config("mqtt://127.0.0.1:1", "mqtt://127.0.0.1:2"))
    report = Report(None)
    check_quarantine(report, cfg)
    assert report.findings == []
    quarantine.add(quarantine.path_for(cfg.buffer.path), _entry("u1"))
    check_quarantine(report, cfg)
    [finding] = report.findings
    assert finding.status == "WARN" and "decoder acme/loop hung on it (0 stored raw, 1 awaiting redelivery)" in (
        finding.detail) and "edge redecode" in finding.fix
