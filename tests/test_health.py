"""Sensor health: learned intervals, silence, losses vs rejoins, batteries, stuck and impossible values."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from edge.buffer import Buffer
from edge.buffer import health as store
from edge.config import HealthBatteryRule, HealthConfig, HealthIntervalRule
from edge.formats import health as health_format
from edge.formats import senml
from edge.health import HealthTracker
from edge.health_state import NEVER_SEEN, OK, SILENT, DeviceHealth
from edge.model import Reading

DEV = "a81758fffe000001"
T0 = 1_800_000_000.0


def feed(tracker: HealthTracker, n: int, *, start: float = T0, every: float = 600, fcnt0: int = 1,
         readings: list[Reading] | None = None, jitter: float = 0.0, seed: int = 1, dev: str = DEV) -> float:
    rng = random.Random(seed)
    t = start
    for i in range(n):
        t = start + i * every + rng.uniform(-jitter, jitter)
        tracker.observe(dev, t, fcnt0 + i, readings or [], rssi=-90.0 - i % 3, snr=5.0, gateway_id="gw-a")
    return t


def test_health_learns_interval_robust_to_jitter_losses_and_retransmissions() -> None:
    tracker = HealthTracker(HealthConfig())
    t = feed(tracker, 8, every=600, jitter=30)
    # A lost frame (fcnt jumps by 2 over 1200 s) is still one 600 s interval per frame.
    tracker.observe(DEV, t + 1200, 10, [])
    # A retransmission of the same frame 2 s later counts once and teaches nothing.
    tracker.observe(DEV, t + 1202, 10, [])
    dev = tracker.devices[DEV]
    assert 560 <= tracker.expected_interval(dev) <= 640
    assert dev.lost == 1 and dev.uplinks == 10


def test_health_silent_after_factor_then_ok_with_next_uplink_one_notice_each() -> None:
    tracker = HealthTracker(HealthConfig(silent_factor=3))
    last = feed(tracker, 6, every=600)
    tracker.check(last + 1700)
    assert tracker.devices[DEV].state == OK  # 1700 s < 3 × 600 s
    tracker.check(last + 1900)
    tracker.check(last + 2500)  # still silent: no second notice
    assert tracker.devices[DEV].state == SILENT
    tracker.observe(DEV, last + 2600, 7, [])
    _, notices = tracker.take()
    assert [(n.previous, n.state) for n in notices] == [(OK, SILENT), (SILENT, OK)]
    assert len({n.id for n in notices}) == 2


def test_health_does_not_judge_silence_while_learning_unless_configured() -> None:
    tracker = HealthTracker(HealthConfig(learn_uplinks=5))
    last = feed(tracker, 3, every=600)
    tracker.check(last + 86400)
    assert tracker.devices[DEV].state == OK
    rule = HealthIntervalRule(interval_s=60, device_profile=("Elsys ERS",))
    configured = HealthTracker(HealthConfig(intervals=(rule,)))
    configured.observe(DEV, T0, 1, [], profile="Elsys ERS")
    configured.check(T0 + 181)
    assert configured.devices[DEV].state == SILENT


def test_health_rejoin_is_not_loss_but_gaps_are_lossy() -> None:
    tracker = HealthTracker(HealthConfig(lossy_ratio=0.2))
    feed(tracker, 20, every=60)
    feed(tracker, 20, start=T0 + 1200, every=60, fcnt0=1)  # rejoined: the counter starts again
    dev = tracker.devices[DEV]
    assert dev.resets == 1 and dev.lost == 0 and "lossy" not in dev.problems
    lossy = "a81758fffe000002"
    for i in range(30):  # every third frame lost on the air
        tracker.observe(lossy, T0 + i * 90, 1 + i * 3 // 2, [])
    assert "lossy" in tracker.devices[lossy].problems
    assert tracker.loss_ratio(tracker.devices[lossy]) == pytest.approx(1 / 3, abs=0.03)


def test_health_low_battery_with_hysteresis_and_profile_override() -> None:
    tracker = HealthTracker(HealthConfig(battery_low_voltage=3.0))
    volts = [3.2, 3.1, 3.0, 3.05, 3.08, 3.2]
    for i, v in enumerate(volts):
        tracker.observe(DEV, T0 + i * 60, i + 1, [Reading("battery-voltage", v, "V")])
        tracker.settle(T0 + i * 60 + 1)  # a health round between uplinks, as in the service
    _, notices = tracker.take()
    # Low at 3.0 V; 3.05 and 3.08 are within the 0.1 V margin, so it clears only at 3.2 V.
    assert [list(n.problems) for n in notices] == [["low-battery"], []]
    override = HealthTracker(HealthConfig(batteries=(HealthBatteryRule(10, 3.3, device_profile=("Li-SOCl2",)),)))
    override.observe(DEV, T0, 1, [Reading("battery-voltage", 3.25, "V")], profile="Li-SOCl2")
    override.settle(T0)
    assert override.devices[DEV].problems == ["low-battery"]
    percent = HealthTracker(HealthConfig())
    percent.observe(DEV, T0, 1, [Reading("battery", 15, "%EL")])
    percent.settle(T0)
    assert percent.devices[DEV].problems == ["low-battery"]


def test_health_stuck_and_out_of_range_readings() -> None:
    tracker = HealthTracker(HealthConfig(stuck_uplinks=5))
    for i in range(5):
        tracker.observe(DEV, T0 + i * 60, i + 1, [Reading("temperature", 21.5, "Cel"), Reading("volume", 7, "m3")])
        tracker.settle(T0 + i * 60)
    assert tracker.devices[DEV].problems == ["stuck:temperature"]  # a meter's volume may rest
    tracker.observe(DEV, T0 + 600, 6, [Reading("temperature", 21.6, "Cel"), Reading("humidity", 140, "%RH")])
    tracker.settle(T0 + 600)
    assert tracker.devices[DEV].problems == ["out-of-range:humidity"]
    # Several uplinks between two rounds: an unchanged value counts each of them.
    for i in range(5):
        tracker.observe(DEV, T0 + 700 + i * 60, 7 + i, [Reading("temperature", 21.6, "Cel")])
    tracker.settle(T0 + 1000)
    assert tracker.devices[DEV].problems == ["stuck:temperature", "out-of-range:humidity"]


def test_health_never_seen_devices_from_the_registry() -> None:
    tracker = HealthTracker(HealthConfig())
    tracker.check(T0, known=["0000000000000001", DEV])
    assert tracker.devices["0000000000000001"].state == NEVER_SEEN
    tracker.check(T0 + 10, known=["0000000000000001"])  # no second notice
    tracker.observe("0000000000000001", T0 + 20, 1, [])
    _, notices = tracker.take()
    assert [(n.dev_eui, n.previous, n.state) for n in notices] == [
        ("0000000000000001", "", NEVER_SEEN), (DEV, "", NEVER_SEEN), ("0000000000000001", NEVER_SEEN, OK)]


def test_health_counts_have_bounded_labels() -> None:
    tracker = HealthTracker(HealthConfig())
    for i in range(500):
        tracker.observe(f"{i:016x}", T0, 1, [Reading("battery", 5, "%EL")] if i % 2 else [])
    counts = tracker.counts()  # counts after a round
    assert counts["state:ok"] == 500 and counts["problem:low-battery"] == 250
    assert len(counts) == 7  # 3 states + 4 problem kinds, whatever the fleet's size


def test_health_store_keeps_states_and_notices_together(tmp_path: Path) -> None:
    buffer = Buffer(tmp_path / "b.sqlite")
    try:
        buffer.register_sink("city")
        tracker = HealthTracker(HealthConfig())
        last = feed(tracker, 6)
        tracker.check(last + 10_000)
        changed, notices = tracker.take()
        store.save(buffer.db, [(d.dev_eui, d.state, d.changed_at, d.data) for d in changed],
                   [(n.id, n.dev_eui, n.time, {"id": n.id, "dev_eui": n.dev_eui, "time": n.time, "state": n.state,
                                               "problems": list(n.problems), "summary": n.summary})
                    for n in notices])
        loaded = {d: DeviceHealth.from_dict(v) for d, v in store.load_states(buffer.db).items()}
        assert loaded[DEV].state == SILENT and loaded[DEV].intervals == tracker.devices[DEV].intervals
        again = HealthTracker(HealthConfig(), loaded)
        again.check(last + 20_000)
        assert again.take() == ([], [])  # after a restart the same silence is not reported again
        pending = store.pending(buffer.db, "city")
        assert [body["state"] for _, _, body in pending] == [SILENT]
        store.delivered(buffer.db, "city", pending[-1][0])
        assert store.pending(buffer.db, "city") == []
        records = senml.resolve(senml.decode(health_format.pack(pending[0][2], "senml+cbor"), "senml+cbor"))
        by_name = {r["n"].rsplit("_", 1)[1]: r for r in records}
        assert by_name["health"]["vs"] == SILENT and by_name["health-notice"]["vs"].startswith("urn:uuid:")
        assert by_name["expected-interval"]["u"] == "s" and by_name["rssi"]["u"] == "dBW"
    finally:
        buffer.close()


def test_health_store_failure_keeps_changes_for_the_next_round(tmp_path: Path) -> None:
    tracker = HealthTracker(HealthConfig())
    last = feed(tracker, 6)
    tracker.check(last + 10_000)
    changed, notices = tracker.take()
    db = sqlite3.connect(":memory:")  # no tables: the write fails
    with pytest.raises(sqlite3.OperationalError):
        store.save(db, [(d.dev_eui, d.state, d.changed_at, d.data) for d in changed],
               [(n.id, n.dev_eui, n.time, {}) for n in notices])
    tracker.give_back(changed, notices)
    again_changed, again_notices = tracker.take()
    assert [d.dev_eui for d in again_changed] == [DEV] and again_notices == notices


def test_health_gateway_downtime_blames_no_sensor() -> None:
    tracker = HealthTracker(HealthConfig(silent_factor=3))
    last = feed(tracker, 6, every=600)
    tracker.check(last + 5000, listening_since=None)  # cut from ChirpStack's broker: nobody is judged
    tracker.check(last + 5000, listening_since=last + 4000)  # listening again for 1000 s only
    assert tracker.devices[DEV].state == OK
    tracker.check(last + 6000, listening_since=last + 4000)  # 2000 s of listening without a word
    assert tracker.devices[DEV].state == SILENT


def test_health_notice_updates_the_ngsi_ld_device_state_at_the_context_broker(tmp_path: Path) -> None:
    """An NGSI-LD upstream gets each change as its Device entity's deviceState, at its own upsert endpoint."""
    import threading
    import time as clock

    from edge.config import parse_config
    from edge.pipeline import Pipeline
    from edge.simulate import Simulator
    from edge.sources.chirpstack_mqtt import Message
    from tests.http_server import serving, wait_for

    with serving() as broker:
        upsert = f"{broker.url.rstrip('/')}/ngsi-ld/v1/entityOperations/upsert?options=update"
        cfg = parse_config({
            "edge": {"id": "gw-health"}, "chirpstack": {"mqtt_url": "mqtt://127.0.0.1:9"},
            "buffer": {"path": str(tmp_path / "b.sqlite")}, "web": {"port": 0},
            "health": {"check_interval_s": 0.2},
            "http_upstream": [{"name": "context", "format": "ngsi-ld", "backoff_min_s": 0.1, "backoff_max_s": 0.2,
                               "endpoint": upsert}],
        })
        pipeline = Pipeline(cfg)
        start = clock.time() - 7200  # six uplinks 10 min apart, the last one 70 min ago
        for i, (topic, body, _) in enumerate(Simulator(1, seed=3).events(6)):
            pipeline.handle([Message(topic, body, start + i * 600)])
        pipeline.source.connected.set()
        pipeline.health_round(clock.time(), start)  # listening all along: 70 minutes without a word
        stop = threading.Event()
        sink = threading.Thread(target=pipeline.sinks[0].run, args=(stop,), daemon=True)
        sink.start()
        try:
            def device_updates() -> list[dict[str, Any]]:
                return [e for r in broker.snapshot() for e in r.json if e.get("type") == "Device"
                        and "deviceState" in e]
            assert wait_for(lambda: bool(device_updates()), 15), broker.snapshot()
        finally:
            stop.set()
            sink.join(10)
            pipeline.buffer.close()
        (entity,) = device_updates()
        assert entity["id"] == "urn:ngsi-ld:Device:a81758fffe000000"
        assert entity["deviceState"]["type"] == "Property" and entity["deviceState"]["value"] == "silent"
        assert entity["deviceState"]["observedAt"].endswith("Z")
        assert any("options=update" in r.path or r.query.get("options") == ["update"] for r in broker.snapshot())
