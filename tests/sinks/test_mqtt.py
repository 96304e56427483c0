"""The MQTT sink against real Mosquitto brokers: independent upstreams, refused messages kept and replayed."""

from __future__ import annotations

import json
import signal
import sqlite3
import time

import pytest
from click.testing import CliRunner

from edge.broker import Mosquitto
from edge.cli import main
from edge.simulate import SentUplink, Simulator, publish

pytestmark = pytest.mark.mosquitto

SECOND = """
[[upstream]]
name = "region"
url = "{url}"
reconnect_min_s = 0.1
reconnect_max_s = 0.5
"""


def test_mqtt_sink_one_upstream_down_never_holds_back_another(broker_factory, make_config, edge_process, recorder,
                                                               tmp_path):
    chirpstack, city, region = broker_factory(), broker_factory(), broker_factory()
    city_rec, region_rec = recorder(city), recorder(region)  # persistent sessions: region's survive its outage
    region.stop()
    edge = edge_process(make_config(chirpstack.url, city.url, extra=SECOND.format(url=region.url)))
    edge.start()
    edge.wait_connected()
    sent: list[SentUplink] = []
    publish(chirpstack.host, chirpstack.port, Simulator(10, seed=21), 500, None, sent.append)
    wanted = {s.uplink_id for s in sent}
    assert city_rec.wait_for(wanted, 30), "the upstream that is up got everything while the other was down"

    def backlogs() -> dict[str, int]:
        result = CliRunner().invoke(main, ["status", "--json", "-c", str(tmp_path / "edge.toml")])
        return {u["name"]: u["backlog"] for u in json.loads(result.output)["upstreams"]}

    end = time.monotonic() + 10  # progress is written a moment after the acknowledgements
    while time.monotonic() < end and backlogs()["city"]:
        time.sleep(0.1)
    assert backlogs() == {"city": 0, "region": 500}
    assert not region_rec.ids()
    region.start()
    end = time.monotonic() + 60  # the sink's own record first: everything acknowledged by the broker
    while time.monotonic() < end and backlogs()["region"]:
        time.sleep(0.2)
    assert backlogs()["region"] == 0, "the other drains once its broker is back"
    assert region_rec.wait_for(wanted, 60), "and the subscriber's persistent session gets every uplink"
    assert edge.terminate() == 0


def test_mqtt_sink_refused_message_is_kept_and_delivered_once_the_broker_allows_it(make_config, edge_process,
                                                                                   recorder, tmp_path):
    """A broker that refuses messages (MQTT 5 PUBACK 0x87 from an ACL; Mosquitto also drops the connection).

    Nothing is released from the buffer while it refuses; an ERROR names the topic; once the ACL
    is fixed, every reading and every link record arrives, without a restart or a manual replay.
    """
    chirpstack, upstream = Mosquitto(), Mosquitto()
    acl = upstream.dir / "acl"
    acl.write_text("topic read #\ntopic write lorawan/+\ntopic write lorawan-edge/#\n")  # not lorawan/+/link
    acl.chmod(0o644)
    with upstream.conf.open("a") as conf:
        conf.write(f"acl_file {acl}\n")
    try:
        chirpstack.start()
        upstream.start()
        rec = recorder(upstream)
        cfg = make_config(chirpstack.url, upstream.url)
        edge = edge_process(cfg)
        edge.start()
        edge.wait_connected()
        sent: list[SentUplink] = []
        publish(chirpstack.host, chirpstack.port, Simulator(4, seed=5), 40, None, sent.append)
        wanted = {s.uplink_id for s in sent}
        log = tmp_path / "edge.log"
        end = time.monotonic() + 30
        while time.monotonic() < end and b"refused a message" not in log.read_bytes():
            time.sleep(0.1)
        text = log.read_text()
        assert "ERROR" in text and "Not authorized (PUBACK reason 0x87) on topic lorawan/a81758fffe00000" in text
        db = sqlite3.connect(tmp_path / "buffer.sqlite")
        assert db.execute("SELECT value FROM counters WHERE name = 'received'").fetchone()[0] == 40
        time.sleep(1.0)
        assert db.execute("SELECT cursor FROM sinks WHERE name = 'city'").fetchone()[0] == 0, \
            "a refused message is never released"
        # The operator fixes the ACL and reloads the broker (SIGHUP; a restart would not do here, as
        # Mosquitto 2.0 with an ACL does not queue for a persistent session restored from disk
        # until its client is back): everything arrives.
        acl.write_text("topic readwrite #\n")
        assert upstream.proc is not None
        upstream.proc.send_signal(signal.SIGHUP)
        assert rec.wait_for(wanted, 60), "the readings arrive once the broker allows them"
        end = time.monotonic() + 30
        while time.monotonic() < end and set(rec.link) != wanted:
            time.sleep(0.1)
        assert {u: copies[0]["fcnt"] for u, copies in rec.link.items()} == {s.uplink_id: s.fcnt for s in sent}
        end = time.monotonic() + 30
        while time.monotonic() < end and db.execute("SELECT cursor FROM sinks WHERE name = 'city'").fetchone()[0] < 40:
            time.sleep(0.1)
        assert db.execute("SELECT cursor FROM sinks WHERE name = 'city'").fetchone()[0] == 40
        db.close()
        assert edge.terminate() == 0
    finally:
        chirpstack.close()
        upstream.close()


def test_mqtt_sink_backlog_drains_over_a_link_that_drops_before_a_window_is_sent(broker_factory, make_config,
                                                                               edge_process, recorder, tmp_path):
    """A backhaul that resets every connection after ~300 kB, far less than one 4,000-uplink window.

    Windows are released whole, so without shrinking them the same window would be resent forever;
    the sink halves its reads after each cut window until windows get through, and the backlog drains.
    """
    from tests.netcut import CutProxy

    chirpstack, upstream = broker_factory(), broker_factory()
    rec = recorder(upstream)
    upstream.stop()
    proxy = CutProxy(upstream.host, upstream.port)
    try:
        cfg = make_config(chirpstack.url, proxy.url, extra="read_batch = 4000\n")
        edge = edge_process(cfg)
        edge.start()
        edge.wait_connected()
        sent: list[SentUplink] = []
        publish(chirpstack.host, chirpstack.port, Simulator(20, seed=8), 4000, None, sent.append)
        wanted = {s.uplink_id for s in sent}
        end = time.monotonic() + 30
        while time.monotonic() < end:  # the whole backlog is buffered before the link comes up
            status = CliRunner().invoke(main, ["status", "--json", "-c", str(cfg)])
            if json.loads(status.output)["upstreams"][0]["backlog"] == 4000:
                break
            time.sleep(0.2)
        proxy.budget = 300_000
        upstream.start()
        assert rec.wait_for(wanted, 60), f"{len(wanted - rec.ids())} of 4000 never arrived"
        assert proxy.resets >= 3, "the link really dropped before a whole window was sent"
        assert "at a time until windows get through" in (tmp_path / "edge.log").read_text()
        assert edge.terminate() == 0
    finally:
        proxy.close()
