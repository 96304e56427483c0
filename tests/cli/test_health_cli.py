"""`edge devices health`, `edge status` and `edge doctor` read the sensor health the service stored."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from edge.buffer import Buffer
from edge.buffer import health as store
from edge.cli import main
from edge.config import HealthConfig
from edge.health import HealthTracker
from edge.model import Reading

CONFIG = """
[edge]
id = "gw"
[chirpstack]
mqtt_url = "mqtt://127.0.0.1:1"
[buffer]
path = "{buffer}"
[web]
port = 0
[[upstream]]
name = "up"
url = "mqtt://127.0.0.1:2"
"""


def test_devices_health_status_and_doctor_show_the_unwell(tmp_path: Path) -> None:
    import time

    now = time.time()
    tracker = HealthTracker(HealthConfig())
    for dev, volts in (("a81758fffe000001", 3.6), ("a81758fffe000002", 2.9), ("a81758fffe000003", 3.6)):
        for i in range(6):
            t = now - 10_000 + i * 600 if dev.endswith("1") else now - 3000 + i * 600
            tracker.observe(dev, t, i + 1, [Reading("battery-voltage", volts, "V")], rssi=-101.0, snr=-4.5)
    tracker.check(now)
    changed, notices = tracker.take()
    buffer = Buffer(tmp_path / "b.sqlite")
    store.save(buffer.db, [(d.dev_eui, d.state, d.changed_at, d.data) for d in changed],
               [(n.id, n.dev_eui, n.time, {}) for n in notices])
    buffer.close()
    config = tmp_path / "edge.toml"
    config.write_text(CONFIG.format(buffer=tmp_path / "b.sqlite"))
    runner = CliRunner()

    listed = runner.invoke(main, ["devices", "health", "-c", str(config), "--json"])
    rows = json.loads(listed.output)["devices"]
    assert [(r["dev_eui"], r["state"], r["problems"]) for r in rows] == [
        ("a81758fffe000001", "silent", []), ("a81758fffe000002", "ok", ["low-battery"]), ("a81758fffe000003", "ok", [])]
    text = runner.invoke(main, ["devices", "health", "-c", str(config), "--unwell"]).output
    assert "a81758fffe000003" not in text and "-101 dBm" in text and "2.9 V" in text
    assert "2 devices: 1 ok, 1 silent, 0 never seen; 1 with problems" in text

    status = json.loads(runner.invoke(main, ["status", "-c", str(config), "--json"]).output)
    assert status["health"]["counts"] == {"ok": 2, "silent": 1, "never-seen": 0}
    assert [r["dev_eui"] for r in status["health"]["unwell"]] == ["a81758fffe000001", "a81758fffe000002"]
    doctor = runner.invoke(main, ["doctor", "-c", str(config)])
    assert "3 sensors: 1 silent, 0 never seen, 1 with problems" in doctor.output
