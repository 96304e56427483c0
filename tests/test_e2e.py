"""End to end with real parts: Mosquitto brokers, `edge run` processes killed with SIGKILL, SQLite files."""

from __future__ import annotations

import random
import threading
import time

import pytest

from edge.decoding.base import DeviceContext
from edge.decoding.builtin.elsys import ElsysDecoder
from edge.decoding.fieldmap import map_for
from edge.decoding.normalize import normalise
from edge.simulate import SentUplink, Simulator, publish

pytestmark = pytest.mark.mosquitto


def expected_readings(sent: SentUplink) -> list[tuple[str, object, object]]:
    decoder = ElsysDecoder()
    result = decoder.decode(sent.payload, 5, DeviceContext(sent.dev_eui))
    readings = [(r.name, r.value, r.unit) for r in normalise(result.data, map_for(decoder)[1]).readings]
    # Cross-checked against the simulator's byte layout (edge.simulate.elsys_payload), so the
    # expectation does not rest on the decoder under test alone.
    b = sent.payload
    assert readings == [("temperature", int.from_bytes(b[1:3], "big", signed=True) / 10, "Cel"),
                        ("humidity", b[4], "%RH"), ("illuminance", int.from_bytes(b[6:8], "big"), "lx"),
                        ("motion", b[9], "count"), ("battery-voltage", int.from_bytes(b[11:13], "big") / 1000, "V")]
    return readings


def test_e2e_chaos_no_uplink_lost(broker_factory, make_config, edge_process, recorder):
    """Thousands of uplinks while the upstream restarts and the edge is SIGKILLed: all arrive, right values."""
    chirpstack, upstream = broker_factory(), broker_factory()
    rec = recorder(upstream)
    edge = edge_process(make_config(chirpstack.url, upstream.url))
    edge.start()
    edge.wait_connected()  # the persistent session exists from the first subscription on
    sent: list[SentUplink] = []
    done = threading.Event()

    def produce() -> None:
        publish(chirpstack.host, chirpstack.port, Simulator(50, seed=7), 4000, 800.0, sent.append)
        done.set()

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    rng = random.Random(11)
    kills = restarts = 0
    for round_ in range(6):
        time.sleep(rng.uniform(0.3, 0.9))
        if round_ % 2 == 0:
            edge.kill()  # SIGKILL at a random moment: mid-batch, mid-commit, mid-publish
            kills += 1
            time.sleep(rng.uniform(0.05, 0.4))
            edge.start()
        else:
            upstream.stop()
            restarts += 1
            time.sleep(rng.uniform(0.2, 1.0))
            upstream.start()
    producer.join(60)
    assert done.is_set(), "the simulator did not finish publishing"
    wanted = {s.uplink_id for s in sent}
    assert len(wanted) == len(sent) == 4000
    if not rec.wait_for(wanted, 60):
        missing = wanted - rec.ids()
        open("/tmp/missing.txt", "w").write("\n".join(sorted(missing)))
        raise AssertionError(f"{len(missing)} of {len(wanted)} uplinks never arrived upstream")
    assert kills == 3 and restarts == 3
    for s in sent:
        copies = rec.copies[s.uplink_id]
        # Correct decoded values, and any duplicate is the same record under the same id.
        assert copies[0] == expected_readings(s), s
        assert all(c == copies[0] for c in copies)
        assert rec.link[s.uplink_id][0]["fcnt"] == s.fcnt
    assert edge.terminate() == 0


def test_e2e_persistent_session_keeps_uplinks_while_edge_down(broker_factory, make_config, edge_process, recorder):
    """Uplinks published while the edge is not running arrive after it starts."""
    chirpstack, upstream = broker_factory(), broker_factory()
    rec = recorder(upstream)
    edge = edge_process(make_config(chirpstack.url, upstream.url))
    edge.start()
    edge.wait_connected()
    first: list[SentUplink] = []
    publish(chirpstack.host, chirpstack.port, Simulator(5, seed=1), 10, None, first.append)
    assert rec.wait_for({s.uplink_id for s in first}, 30)
    assert edge.terminate() == 0
    offline: list[SentUplink] = []
    publish(chirpstack.host, chirpstack.port, Simulator(5, seed=2), 300, None, offline.append)
    assert len(offline) == 300
    edge.start()
    assert rec.wait_for({s.uplink_id for s in offline}, 30)


def test_e2e_cbor_upstream(broker_factory, make_config, edge_process, recorder):
    chirpstack, upstream = broker_factory(), broker_factory()
    rec = recorder(upstream, fmt="senml+cbor")
    edge = edge_process(make_config(chirpstack.url, upstream.url, fmt="senml+cbor"))
    edge.start()
    edge.wait_connected()
    sent: list[SentUplink] = []
    publish(chirpstack.host, chirpstack.port, Simulator(3, seed=3, protobuf=True), 30, None, sent.append)
    assert rec.wait_for({s.uplink_id for s in sent}, 30)
    for s in sent:
        assert rec.copies[s.uplink_id][0] == expected_readings(s)
    props = [m.properties for m in rec.messages if not m.topic.endswith("/link")]
    assert all(p.ContentType == "application/senml+cbor" for p in props)


def test_e2e_buffer_full_drops_oldest_and_sends_gap_notice(broker_factory, make_config, edge_process, recorder,
                                                          tmp_path):
    """Upstream down, buffer bound reached: oldest dropped, counted, announced; the newest still arrive."""
    import json
    import sqlite3

    chirpstack, upstream = broker_factory(), broker_factory()
    rec = recorder(upstream)  # its persistent session survives the broker restart below
    time.sleep(0.3)
    upstream.stop()
    edge = edge_process(make_config(chirpstack.url, upstream.url, max_size_mb=0.5))
    edge.start()
    edge.wait_connected()
    sent: list[SentUplink] = []
    publish(chirpstack.host, chirpstack.port, Simulator(20, seed=9), 1500, None, sent.append)
    db = sqlite3.connect(tmp_path / "buffer.sqlite")
    end = time.monotonic() + 30
    received = "SELECT value FROM counters WHERE name='received'"
    while time.monotonic() < end and db.execute(received).fetchone()[0] < 1500:
        time.sleep(0.1)
    dropped = db.execute("SELECT value FROM counters WHERE name='dropped'").fetchone()[0]
    assert dropped > 0
    upstream.start()
    # The newest uplinks survive the bound and arrive.
    assert rec.wait_for({s.uplink_id for s in sent[-100:]}, 30)
    end = time.monotonic() + 10
    notices: list[dict] = []
    while time.monotonic() < end and sum(n["dropped"] for n in notices) < dropped:
        notices = [json.loads(m.payload) for m in list(rec.messages) if m.topic == "lorawan-edge/test/notice"]
        # The last batch's trim may commit just after its uplinks were counted as received.
        dropped = db.execute("SELECT value FROM counters WHERE name='dropped'").fetchone()[0]
        time.sleep(0.1)
    assert notices and all(n["type"] == "gap" and n["upstream"] == "city" for n in notices)
    # Every uplink either arrived or was announced as dropped.
    assert sum(n["dropped"] for n in notices) == dropped
    assert len(rec.ids() & {s.uplink_id for s in sent}) + dropped == 1500
    assert edge.terminate() == 0
