"""Runs the MQTT read-path fuzz target (fuzz/harnesses.py mqtt_read) for a fixed budget, seeded with real packets."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mqtt5
import pytest

pytest.importorskip("atheris")
HARNESSES = Path(__file__).resolve().parents[2] / "fuzz" / "harnesses.py"


def test_fuzz_mqtt_read_path_fixed_budget(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    # Seeds: a v5 flag byte, a packet size limit, then whole packets the broker may send.
    pub = mqtt5.PublishPacket("application/a/device/0011223344556677/event/up", b"{}" * 40,
                              qos=mqtt5.QoS.AT_LEAST_ONCE, packet_id=7).write()
    seeds = [pub, mqtt5.ConnAckPacket(session_present=True, server_keep_alive=5).write(),
             mqtt5.SubAckPacket(1, [mqtt5.SubAckReasonCode.GRANTED_QOS_AT_LEAST_ONCE]).write(), b"\xd0\x00"]
    for i, seed in enumerate(seeds):
        (corpus / f"v5-{i}").write_bytes(b"\x01\xff\x0f" + b"\x40" + seed)
    run = subprocess.run([sys.executable, str(HARNESSES), "mqtt_read", str(corpus), "-runs=20000",
                          "-max_total_time=20", f"-artifact_prefix={tmp_path}/"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Done" in run.stderr
