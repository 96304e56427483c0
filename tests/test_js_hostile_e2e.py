"""Hostile JS codecs in a running gateway: each bad uplink costs one decode error, the raw uplink is
kept, and `edge redecode` after the codec is fixed forwards the new readings (real Mosquitto brokers,
a real `edge run` process, a real SQLite file)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge.model import DecodeStatus
from edge.simulate import Simulator

pytestmark = pytest.mark.mosquitto

REPO = Path(__file__).resolve().parents[1]

# One codec, four behaviours chosen by fPort: throw, loop forever, exhaust memory, or decode.
HOSTILE_JS = """
function decodeUplink(input) {
  if (input.fPort === 11) { throw new Error('vendor bug'); }
  if (input.fPort === 12) { for (;;) {} }
  if (input.fPort === 13) { var a = []; for (;;) { a.push([input.bytes, {x: 1}]); } }
  return {data: {temperature: ((input.bytes[1] << 24 >> 16) | input.bytes[2]) / 10}};
}
"""
FIXED_JS = """
function decodeUplink(input) {
  return {data: {temperature: ((input.bytes[1] << 24 >> 16) | input.bytes[2]) / 10}};
}
"""
CODEC_YAML = "uplinkDecoder:\n  fileName: acme-th.js\n"


def _publish(host: str, port: int, messages: list[tuple[str, bytes]]) -> None:
    client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}")
    client.connect(host, port)
    client.loop_start()
    try:
        for topic, body in messages:
            client.publish(topic, body, qos=1).wait_for_publish(10)
    finally:
        client.loop_stop()
        client.disconnect()


def _statuses(db: Path) -> dict[str, tuple[int, str, str]]:
    """uplink id -> (status, decoder, error) of the newest row of each uplink."""
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT uplink_id, status, decoder, error FROM uplinks ORDER BY id").fetchall()
    finally:
        conn.close()
    return {uid: (status, decoder, error) for uid, status, decoder, error in rows}


def _wait(predicate, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def test_hostile_js_codec_costs_one_error_per_uplink_and_redecode_forwards_the_fix(
        broker_factory, make_config, edge_process, recorder, tmp_path):
    chirpstack, upstream = broker_factory(), broker_factory()
    rec = recorder(upstream)
    codecs = tmp_path / "codecs" / "acme"
    codecs.mkdir(parents=True)
    (codecs / "th-codec.yaml").write_text(CODEC_YAML)
    (codecs / "acme-th.js").write_text(HOSTILE_JS)
    # The codec's field map (issue #13): without one its fields would go out unit-less.
    maps = tmp_path / "maps"
    maps.mkdir()
    (maps / "th.yaml").write_text("codecs: [ttn:acme/th-codec]\nfields:\n  temperature: {n: temperature, u: Cel}\n"
                                  "  humidity: {n: humidity, u: '%'}\n")
    config = make_config(chirpstack.url, upstream.url, extra=(
        f'\n[decoding]\ncodec_paths = ["{codecs.parent}"]\nmap_paths = ["{maps}"]\njs_time_limit_ms = 100\n'
        'js_memory_limit_mb = 8\n'))
    edge = edge_process(config)
    edge.start()
    edge.wait_connected()

    ports = {11: "JS error in the call: Error: vendor bug", 12: "exceeded the CPU time limit of 100 ms",
             13: "ran out of memory (limit 8 MiB)", 5: ""}
    messages, by_port = [], {}
    for (topic, body, sent), fport in zip(Simulator(1, seed=5).events(8), [11, 12, 13, 5] * 2, strict=True):
        doc = orjson.loads(body)
        doc["fPort"] = fport
        doc["deviceInfo"]["tags"]["decoder"] = "acme/th-codec"
        messages.append((topic, orjson.dumps(doc)))
        by_port.setdefault(fport, []).append(sent.uplink_id)
    _publish(chirpstack.host, chirpstack.port, messages)

    db = tmp_path / "buffer.sqlite"
    assert _wait(lambda: len(_statuses(db)) == 8, 30), _statuses(db) if db.exists() else "no buffer"
    statuses = _statuses(db)
    for fport, wanted in ports.items():
        for uplink_id in by_port[fport]:
            status, decoder, error = statuses[uplink_id]
            assert decoder == "acme/th-codec"
            assert (status == DecodeStatus.FAILED) == bool(wanted)
            if wanted:
                assert wanted in error, (fport, error)
            else:
                assert not error
    good = set(by_port[5])
    assert rec.wait_for(good, 30)
    assert all(rec.copies[u][0] and rec.copies[u][0][0][0] == "temperature" for u in good)
    # The raw uplinks of the failed decodes are kept, payload and all.
    conn = sqlite3.connect(db)
    kept = conn.execute("SELECT count(*) FROM uplinks JOIN raw USING (id)"
                        " WHERE uplinks.error != '' AND length(raw.payload) > 0").fetchone()[0]
    conn.close()
    assert kept == 6
    assert edge.proc is not None and edge.proc.poll() is None, "the gateway must survive hostile codecs"

    # The vendor fixes the codec; redecode (while `edge run` keeps running) sends the new readings.
    (codecs / "acme-th.js").write_text(FIXED_JS)
    out = subprocess.run([sys.executable, "-m", "edge", "redecode", "--config", str(config),
                          "--decoder", "acme/th-codec"], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "6 uplinks re-decoded: 6 decoded" in out.stdout, out.stdout
    failed = {u for p in (11, 12, 13) for u in by_port[p]}
    assert rec.wait_for(failed, 30), failed - rec.ids()
    for uplink_id in failed:
        readings = next(c for c in rec.copies[uplink_id] if c)
        assert readings[0][0] == "temperature" and readings[0][2] == "Cel"
    assert edge.terminate() == 0
