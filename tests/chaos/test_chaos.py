"""Chaos: steady traffic while the edge is SIGKILLed and both brokers are restarted and partitioned.

One command, short in CI; longer on demand:

    EDGE_CHAOS_ROUNDS=40 EDGE_CHAOS_RATE=400 .venv/bin/pytest tests/chaos -s

Each round does one of: SIGKILL the edge and start it again; stop and restart the upstream
broker or ChirpStack's broker; partition the edge from one of them (a TCP forwarder in between
stops moving bytes both ways and lets new connections hang, so only keepalive notices; on
healing, the held connections resume or are reset). The first rounds do each action once.

Afterwards every uplink ChirpStack's broker acknowledged must have reached every upstream whose
sharing rules include it, with the right decoded values; duplicates are allowed only under the
same uplink id. The summary line (use -s to see it) gives rounds, uplinks, lost and duplicates.
"""

from __future__ import annotations

import os
import random
import threading
import time

import pytest

from edge.simulate import SentUplink, Simulator, dev_eui_of, publish
from tests.netcut import CutProxy
from tests.test_e2e import expected_readings

pytestmark = pytest.mark.mosquitto

ROUNDS = int(os.environ.get("EDGE_CHAOS_ROUNDS", "8"))
RATE = float(os.environ.get("EDGE_CHAOS_RATE", "300"))
ACTIONS = ("kill edge", "restart upstream", "restart chirpstack broker", "partition upstream",
           "partition chirpstack broker")
PARTNER_DEVICES = {dev_eui_of(0), dev_eui_of(1)}


def test_chaos_rounds_lose_nothing(broker_factory, make_config, edge_process, recorder):
    chirpstack, upstream = broker_factory(), broker_factory()
    to_chirpstack = CutProxy(chirpstack.host, chirpstack.port)
    to_upstream = CutProxy(upstream.host, upstream.port)
    city = recorder(upstream, topic="lorawan/#")
    partner = recorder(upstream, topic="partner/#")
    cfg = make_config(to_chirpstack.url, to_upstream.url)
    # A second destination that shares only two devices, to check rules hold under chaos too.
    cfg.write_text(cfg.read_text() + (
        '\n[[upstream]]\nname = "partner"\nurl = "' + to_upstream.url + '"\ntopic = "partner/{dev_eui}"\n'
        'link_topic = ""\nreconnect_min_s = 0.1\nreconnect_max_s = 1.0\n'
        f'[upstream.share]\ndevices = {sorted(PARTNER_DEVICES)}\n'.replace("'", '"')))
    # A short keepalive, so that partitions longer than 1.5 x 2 s are noticed by both ends.
    cfg.write_text(cfg.read_text().replace("reconnect_min_s = 0.1\n", "reconnect_min_s = 0.1\nkeepalive_s = 2\n"))
    edge = edge_process(cfg)
    edge.start()
    edge.wait_connected()
    sent: list[SentUplink] = []
    stop = threading.Event()
    producer = threading.Thread(
        target=lambda: publish(chirpstack.host, chirpstack.port, Simulator(20, seed=99), None, RATE,
                               sent.append, stop), daemon=True)
    producer.start()
    rng = random.Random(int(os.environ.get("EDGE_CHAOS_SEED", "2026")))
    plan = rng.sample(ACTIONS, len(ACTIONS)) + [rng.choice(ACTIONS) for _ in range(max(0, ROUNDS - len(ACTIONS)))]
    done = {a: 0 for a in ACTIONS}
    try:
        for action in plan[:ROUNDS]:
            time.sleep(rng.uniform(0.3, 1.0))
            done[action] += 1
            if action == "kill edge":
                edge.kill()
                time.sleep(rng.uniform(0.05, 0.5))
                edge.start()
            elif action.startswith("restart"):
                broker = upstream if action == "restart upstream" else chirpstack
                broker.stop()  # the producer keeps retrying; only broker-acknowledged uplinks count
                time.sleep(rng.uniform(0.1, 1.0))
                broker.start()
            else:
                proxy = to_upstream if action == "partition upstream" else to_chirpstack
                proxy.cut()
                time.sleep(rng.uniform(0.2, 5.0))  # some shorter, some longer than 1.5 x keepalive
                proxy.heal(reset=rng.random() < 0.5)
        time.sleep(0.5)
        stop.set()
        producer.join(40)
        wanted = {s.uplink_id for s in sent}
        shared = {s.uplink_id for s in sent if s.dev_eui in PARTNER_DEVICES}
        city.wait_for(wanted, 90)
        partner.wait_for(shared, 30)
        lost_city, lost_partner = wanted - city.ids(), shared - partner.ids()
        dup_city = sum(len(city.copies[u]) - 1 for u in wanted - lost_city)
        dup_partner = sum(len(partner.copies[u]) - 1 for u in shared - lost_partner)
        print(f"\nchaos: rounds={ROUNDS} {done} uplinks={len(wanted)} lost={len(lost_city)}+{len(lost_partner)}"
              f" duplicates={dup_city}+{dup_partner} (city+partner; partner shares {len(shared)})")
        assert sent and not lost_city, f"city lost {len(lost_city)} of {len(wanted)}"
        assert not lost_partner, f"partner lost {len(lost_partner)} of {len(shared)}"
        for s in sent:
            # Right values, and every duplicate is the same record under the same id.
            assert all(c == expected_readings(s) for c in city.copies[s.uplink_id]), s
            assert all(c == expected_readings(s) for c in partner.copies.get(s.uplink_id, [])), s
        assert set(partner.copies) <= shared, "the partner received uplinks of devices it is not shared"
        rc = edge.terminate()
        assert rc == 0, f"edge exited with {rc}; log tail:\n{edge.log.read_text()[-4000:]}"
    finally:
        to_chirpstack.close()
        to_upstream.close()
