"""The MQTT sink sets aside a message it can never publish (dead letter) and goes on (real Mosquitto brokers)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence

import pytest
from click.testing import CliRunner

from edge.broker import Mosquitto
from edge.cli import main
from edge.config import load_config
from edge.model import Entry
from edge.pipeline import Pipeline, wait_until
from edge.simulate import SentUplink, Simulator, dev_eui_of, publish
from edge.sinks.base import OutMessage

pytestmark = pytest.mark.mosquitto


def test_mqtt_sink_formatter_failure_costs_one_uplink_not_the_queue(broker_factory, make_config, recorder, tmp_path):
    """A formatter that raises for one device's uplinks: those become dead letters, everything else is delivered."""
    chirpstack, city = broker_factory(), broker_factory()
    rec = recorder(city)
    pipeline = Pipeline(load_config(make_config(chirpstack.url, city.url)))
    sink = pipeline.sinks[0]
    real = sink.format
    poisoned = dev_eui_of(2)

    def format_entries(entries: Sequence[Entry]) -> list[OutMessage]:
        if any(e.dev_eui == poisoned for e in entries):
            raise RecursionError("maximum recursion depth exceeded")
        return real(entries)

    sink.format = format_entries
    stop = threading.Event()
    runner = threading.Thread(target=pipeline.run, args=(stop,), daemon=True)
    runner.start()
    try:
        assert wait_until(lambda: pipeline.source.connected.is_set() and sink.stats.connected, 10)
        sent: list[SentUplink] = []
        publish(chirpstack.host, chirpstack.port, Simulator(4, seed=3), 40, None, sent.append)
        good = {s.uplink_id for s in sent if s.dev_eui != poisoned}
        assert rec.wait_for(good, 20)
        assert wait_until(lambda: sink.stats.extra["dead_letters"] == 10, 10)
        db = sqlite3.connect(tmp_path / "buffer.sqlite")
        assert wait_until(lambda: db.execute("SELECT cursor FROM sinks WHERE name = 'city'").fetchone()[0] == 40, 10)
        details = [r[0] for r in db.execute("SELECT detail FROM dead_letters WHERE sink = 'city'")]
        db.close()
        assert len(details) == 10 and all("RecursionError" in d for d in details)
        assert not any(s.dev_eui == poisoned for s in sent if s.uplink_id in rec.ids())
        assert runner.is_alive() and not pipeline.failed
    finally:
        stop.set()
        runner.join(15)


def test_mqtt_sink_message_over_the_brokers_packet_size_is_a_dead_letter_and_can_be_replayed(
        broker_factory, make_config, edge_process, recorder, tmp_path):
    """Mosquitto with max_packet_size (announced in CONNACK). A backlog whose packs are too large for it leaves one
    uplink per pack instead; an uplink too large on its own is set aside with the reason, later uplinks are still
    delivered, and `edge deadletter replay` sends it once the broker allows it."""
    chirpstack = broker_factory()
    city = Mosquitto()
    with city.conf.open("a") as conf:
        conf.write("max_packet_size 3000\n")
    try:
        city.start()
        rec = recorder(city)
        cfg = make_config(chirpstack.url, city.url)
        edge = edge_process(cfg)
        city.stop()  # a backlog builds up: it would leave in packs larger than the broker takes
        edge.start()
        edge.wait_connected()
        backlog: list[SentUplink] = []
        publish(chirpstack.host, chirpstack.port, Simulator(1, seed=8), 60, None, backlog.append)
        db = sqlite3.connect(tmp_path / "buffer.sqlite")
        assert wait_until(lambda: db.execute("SELECT count(*) FROM uplinks").fetchone()[0] == 60, 10)
        city.start()
        assert rec.wait_for({s.uplink_id for s in backlog}, 30), "the backlog gets through, one uplink per pack"
        assert db.execute("SELECT count(*) FROM dead_letters").fetchone()[0] == 0
        assert "accepts packets of at most 3000 bytes" in (tmp_path / "edge.log").read_text()
        assert edge.terminate() == 0
        # A broker limit below a single uplink's pack: those become dead letters, and delivery goes on.
        city.stop()
        city.conf.write_text(city.conf.read_text().replace("max_packet_size 3000", "max_packet_size 200"))
        city.start()
        edge.start()
        edge.wait_connected()
        tiny: list[SentUplink] = []
        publish(chirpstack.host, chirpstack.port, Simulator(1, seed=9), 3, None, tiny.append)
        assert wait_until(lambda: db.execute("SELECT count(*) FROM dead_letters").fetchone()[0] == 6, 20), \
            "3 measurement and 3 radio packs"
        assert wait_until(lambda: db.execute("SELECT cursor FROM sinks WHERE name = 'city'").fetchone()[0] == 63, 10)
        log = (tmp_path / "edge.log").read_text()
        assert "kept as a dead letter" in log
        listing = CliRunner().invoke(main, ["deadletter", "list", "-c", str(cfg)])
        assert listing.exit_code == 0 and "is larger than the broker" in listing.output
        assert edge.proc is not None and edge.proc.poll() is None
        assert edge.terminate() == 0
        # The operator raises the broker's limit and replays: the uplinks arrive with their ids.
        city.stop()
        city.conf.write_text(city.conf.read_text().replace("max_packet_size 200\n", ""))
        city.start()
        replayed = CliRunner().invoke(main, ["deadletter", "replay", "--upstream", "city", "-c", str(cfg)])
        assert replayed.exit_code == 0, replayed.output
        assert rec.wait_for({s.uplink_id for s in tiny}, 20)
        assert db.execute("SELECT count(*) FROM dead_letters").fetchone()[0] == 0
        db.close()
    finally:
        city.close()
