"""`edge run` between two real Mosquittos with hostile ids, gateway ids, tags and names among good uplinks.

Every good uplink is delivered; a hostile value never picks or breaks a topic (it becomes the level
`invalid`, docs/records.md "Topics"), never forges a log line and never stops the service.
"""

from __future__ import annotations

import base64
import re
import sqlite3
from datetime import UTC, datetime

import orjson
import paho.mqtt.client as paho
import pytest
from click.testing import CliRunner
from paho.mqtt.enums import CallbackAPIVersion

from edge.cli import main
from edge.simulate import APPLICATION_ID, Simulator

pytestmark = pytest.mark.mosquitto

TOPICS = """
topic = "lorawan/{application}/{gateway_id}/{dev_eui}"
link_topic = "lorawan/{application_id}/{gateway_id}/{dev_eui}/link"
"""
HOSTILE = ["evil/#", "evil+", "nul\x00byte", "other-city/sensors/x", "line\nERROR forged line", "\x1b[2J\x1b]0;pwn\x07",
           "", "a" * 70000, "\ud800".encode("utf-8", "surrogatepass").decode("utf-8", "replace")]
FORGED = "ERROR forged line"


def _events(count: int, hostile_every: int) -> tuple[list[tuple[bytes, str]], set[str], set[str]]:
    """(payload, uplink id) in publish order; the good uplink ids; the hostile uplink ids."""
    sim = Simulator(4, seed=11)
    out: list[tuple[bytes, str]] = []
    good: set[str] = set()
    bad: set[str] = set()
    n_bad = 0
    for n, (_topic, body, sent) in enumerate(sim.events(count)):
        doc = orjson.loads(body)
        if n % hostile_every == hostile_every - 1:
            value = HOSTILE[n_bad % len(HOSTILE)]
            kind = n_bad // len(HOSTILE) % 4
            n_bad += 1
            if kind == 0:
                doc["deviceInfo"]["applicationId"] = value
            elif kind == 1:
                doc["rxInfo"][0]["gatewayId"] = value
            elif kind == 2:
                doc["deviceInfo"]["tags"]["decoder"] = value
            else:
                doc["deviceInfo"]["deviceName"] = value
                doc["deviceInfo"]["applicationId"] = value[:40]
            bad.add(sent.uplink_id)
        else:
            good.add(sent.uplink_id)
        doc["time"] = datetime.now(UTC).isoformat()
        doc["data"] = base64.b64encode(sent.payload).decode()
        out.append((orjson.dumps(doc), sent.uplink_id))
    return out, good, bad


def test_mqtt_hostile_ids_and_tags_never_break_topics_logs_or_the_service(broker_factory, make_config, edge_process,
                                                                          recorder, tmp_path):
    chirpstack, city = broker_factory(), broker_factory()
    rec = recorder(city)
    cfg = make_config(chirpstack.url, city.url)
    cfg.write_text(cfg.read_text().replace('topic = "lorawan/{dev_eui}"\n', TOPICS, 1))
    assert "{gateway_id}" in cfg.read_text()
    edge = edge_process(cfg)
    edge.start()
    edge.wait_connected()
    events, good, bad = _events(360, 4)
    client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="hostile-chirpstack")
    client.connect(chirpstack.host, chirpstack.port)
    client.loop_start()
    try:
        for i, (payload, _uplink_id) in enumerate(events):
            client.publish(f"application/{APPLICATION_ID}/device/a81758fffe00000{i % 4}/event/up", payload,
                           qos=1).wait_for_publish(5)
            if i == len(events) // 2:
                # A restart in the middle: whatever is at the upstream's read position must not crash it.
                edge.kill()
                edge.start()
                edge.wait_connected()
    finally:
        client.loop_stop()
        client.disconnect()
    assert rec.wait_for(good, 60), f"good uplinks missing: {len(good - rec.ids())} of {len(good)}"
    assert edge.proc is not None and edge.proc.poll() is None, "the service keeps running"
    # Topics: only the documented shape; hostile values became the level `invalid`.
    level = r"(?:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|invalid)"
    shape = re.compile(rf"lorawan/{level}/(?:[0-9a-f]{{16}}|invalid|unknown)/[0-9a-f]{{16}}(?:/link)?")
    with rec.lock:
        topics = {m.topic for m in rec.messages}
    assert topics and all(shape.fullmatch(t) for t in topics), sorted(t for t in topics if not shape.fullmatch(t))
    assert any("/invalid/" in t for t in topics)
    # Every hostile uplink is delivered on a safe topic, kept in the buffer or kept as a dead letter.
    db = sqlite3.connect(tmp_path / "buffer.sqlite")
    stored = {r[0] for r in db.execute("SELECT uplink_id FROM uplinks")}
    malformed = db.execute("SELECT count(*) FROM malformed").fetchone()[0]
    assert len(bad & (stored | rec.ids())) + malformed >= len(bad)
    db.close()
    # Logs: one line per record, no terminal escape, no forged line.
    log = (tmp_path / "edge.log").read_bytes()
    assert b"\x1b" not in log and b"\x00" not in log
    assert not any(line.startswith(FORGED.encode()) for line in log.splitlines())
    assert edge.terminate() == 0
    # Technician views: hostile names, tags and ids are shown without terminal control sequences.
    shown = ""
    for args in (["status"], ["buffer", "list", "--status", "failed"], ["devices", "list"], ["deadletter", "list"]):
        result = CliRunner().invoke(main, [*args, "-c", str(cfg)])
        assert result.exit_code == 0, result.output
        shown += result.output
        assert "\x1b" not in result.output and "\x07" not in result.output and "\x00" not in result.output, args
        assert not any(line.startswith(FORGED) for line in result.output.splitlines()), args
    assert "line\\nERROR forged" in shown and "evil" in shown, "the hostile values are visible, escaped"
