"""Chaos: steady traffic while the edge is SIGKILLed and both brokers are stopped and restarted.

Short in CI; longer on demand:

    EDGE_CHAOS_ROUNDS=40 EDGE_CHAOS_RATE=400 .venv/bin/pytest tests/chaos -s

Afterwards every uplink the ChirpStack broker acknowledged must have reached every upstream whose
sharing rules include it, with the right decoded values; duplicates are allowed only with the same
uplink id. The summary line is printed (use -s to see it).
"""

from __future__ import annotations

import os
import random
import threading
import time

import pytest

from edge.simulate import SentUplink, Simulator, dev_eui_of, publish
from tests.test_e2e import expected_readings

pytestmark = pytest.mark.mosquitto

ROUNDS = int(os.environ.get("EDGE_CHAOS_ROUNDS", "6"))
RATE = float(os.environ.get("EDGE_CHAOS_RATE", "300"))


def test_chaos_rounds_lose_nothing(broker_factory, make_config, edge_process, recorder):
    chirpstack, upstream = broker_factory(), broker_factory()
    rec = recorder(upstream)
    cfg = make_config(chirpstack.url, upstream.url)
    # A second destination that shares only two devices, to check rules hold under chaos too.
    cfg.write_text(cfg.read_text() + (
        '\n[[upstream]]\nname = "partner"\nurl = "' + upstream.url + '"\ntopic = "partner/{dev_eui}"\n'
        'link_topic = ""\nreconnect_min_s = 0.1\nreconnect_max_s = 1.0\n'
        f'[upstream.share]\ndevices = ["{dev_eui_of(0)}", "{dev_eui_of(1)}"]\n'))
    edge = edge_process(cfg)
    edge.start()
    edge.wait_connected()
    sent: list[SentUplink] = []
    stop = threading.Event()
    producer = threading.Thread(
        target=lambda: publish(chirpstack.host, chirpstack.port, Simulator(20, seed=99), None, RATE,
                               sent.append, stop), daemon=True)
    producer.start()
    rng = random.Random(2026)
    actions = {"kill edge": 0, "restart upstream": 0, "restart chirpstack broker": 0}
    for _ in range(ROUNDS):
        time.sleep(rng.uniform(0.3, 1.0))
        action = rng.choice(sorted(actions))
        actions[action] += 1
        if action == "kill edge":
            edge.kill()
            time.sleep(rng.uniform(0.05, 0.5))
            edge.start()
        elif action == "restart upstream":
            upstream.stop()
            time.sleep(rng.uniform(0.1, 1.0))
            upstream.start()
        else:
            chirpstack.stop()  # the producer keeps retrying; only broker-acknowledged uplinks count
            time.sleep(rng.uniform(0.1, 1.0))
            chirpstack.start()
    time.sleep(0.5)
    stop.set()
    producer.join(40)
    wanted = {s.uplink_id for s in sent}
    assert rec.wait_for(wanted, 90), f"lost: {len(wanted - rec.ids())} of {len(wanted)}"
    duplicates = 0
    for s in sent:
        copies = rec.copies[s.uplink_id]
        duplicates += len(copies) - 1
        assert all(c == expected_readings(s) for c in copies), s
    with rec.lock:
        partner = [m for m in rec.messages if m.topic.startswith("partner/")]
    partner_devices = {m.topic.split("/")[1] for m in partner}
    assert partner_devices <= {dev_eui_of(0), dev_eui_of(1)}
    partner_ids = {s.uplink_id for s in sent if s.dev_eui in partner_devices}
    assert all(any(u in m.payload.decode() for m in partner) for u in list(partner_ids)[:50])
    print(f"\nchaos: rounds={ROUNDS} actions={actions} uplinks={len(wanted)} lost=0 duplicates={duplicates}")
    assert edge.terminate() == 0
