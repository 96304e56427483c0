"""Enrichment end to end (issue #4, point 4): one destination asks for the device name and a tag and gets
them as string records; a destination that asks for nothing gets nothing added (real Mosquitto, real edge)."""

from __future__ import annotations

import pytest

from edge.simulate import SentUplink, Simulator, publish

pytestmark = pytest.mark.mosquitto

MAP_UPSTREAM = """
[[upstream]]
name = "map"
url = "{url}"
topic = "map/{{dev_eui}}"
link_topic = "map/{{dev_eui}}/link"
reconnect_min_s = 0.1
reconnect_max_s = 1.0

[upstream.share]
enrich = ["name", "tag:site", "tag:absent"]
"""


def test_enrich_adds_only_what_each_destination_configured(broker_factory, make_config, edge_process, recorder):
    chirpstack, upstream = broker_factory(), broker_factory()
    city, city_map = recorder(upstream, topic="lorawan/#"), recorder(upstream, topic="map/#")
    cfg = make_config(chirpstack.url, upstream.url, extra=MAP_UPSTREAM.format(url=upstream.url))
    edge = edge_process(cfg)
    edge.start()
    edge.wait_connected()
    sent: list[SentUplink] = []
    publish(chirpstack.host, chirpstack.port, Simulator(3, seed=5), 9, None, sent.append)
    ids = {s.uplink_id for s in sent}
    assert city.wait_for(ids, 30) and city_map.wait_for(ids, 30)
    names = {s.uplink_id: f"ers-{int(s.dev_eui[-6:], 16):04d}" for s in sent}
    for uplink_id in ids:
        plain = {n for copy in city.copies[uplink_id] for n, _, _ in copy}
        assert plain and not plain & {"device-name", "tag-site", "tag-absent"}  # nothing unless configured
        for copy in city_map.copies[uplink_id]:
            extra = {n: v for n, v, _ in copy if n in ("device-name", "tag-site", "tag-absent")}
            assert extra == {"device-name": names[uplink_id], "tag-site": "demo"}  # a missing tag adds nothing
            assert {n for n, _, _ in copy} - set(extra) == plain  # the readings themselves are the same
    assert edge.terminate() == 0
