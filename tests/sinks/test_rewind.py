"""`edge buffer rewind` against a real `edge run`: MQTT (running and stopped) and HTTP upstreams resend."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import pytest
from click.testing import CliRunner

from edge.cli import main
from edge.formats import senml
from edge.simulate import SentUplink, Simulator, publish
from tests.http_server import HttpServer, wait_for

pytestmark = pytest.mark.mosquitto

HTTP = """
[[http_upstream]]
name = "portal"
endpoint = "{url}/senml"
format = "senml+json"
max_batch = 5
backoff_min_s = 0.05
backoff_max_s = 0.2
"""


def two_batches(chirpstack) -> tuple[list[SentUplink], list[SentUplink], str]:
    """Ten uplinks, a pause, ten more; returns them and an ISO time between the two."""
    sim = Simulator(4, seed=31)
    first: list[SentUplink] = []
    publish(chirpstack.host, chirpstack.port, sim, 10, None, first.append)
    time.sleep(0.3)
    second: list[SentUplink] = []
    publish(chirpstack.host, chirpstack.port, sim, 10, None, second.append)
    middle = (first[-1].time + second[0].time) / 2
    return first, second, datetime.fromtimestamp(middle, UTC).isoformat()


def wait_delivered(config, name: str, timeout: float = 15) -> None:
    """Until the upstream's progress is on disk (written a moment after the acknowledgements)."""
    def backlog() -> int:
        out = CliRunner().invoke(main, ["status", "--json", "-c", str(config)]).output
        return next(u["backlog"] for u in json.loads(out)["upstreams"] if u["name"] == name)

    assert wait_for(lambda: backlog() == 0, timeout), f"{name} did not record its progress"


def copies(rec, sent: list[SentUplink]) -> list[int]:
    with rec.lock:
        return [len(rec.copies.get(s.uplink_id, [])) for s in sent]


def rewind(config, upstream: str, since: str) -> str:
    result = CliRunner().invoke(main, ["buffer", "rewind", "-c", str(config), "--upstream", upstream, "--since", since])
    assert result.exit_code == 0, result.output
    return result.output


def test_rewind_while_edge_runs_resends_from_the_point_with_the_same_ids(broker_factory, make_config, edge_process,
                                                                        recorder, tmp_path):
    chirpstack, upstream = broker_factory(), broker_factory()
    rec = recorder(upstream, topic="lorawan/+")  # measurement packs only
    config = make_config(chirpstack.url, upstream.url)
    edge = edge_process(config)
    edge.start()
    edge.wait_connected()
    first, second, middle = two_batches(chirpstack)
    assert rec.wait_for({s.uplink_id for s in first + second}, 30)
    wait_delivered(config, "city")
    assert copies(rec, first + second) == [1] * 20

    out = rewind(config, "city", middle)
    assert "10 delivered uplinks received since" in out
    # The running edge takes it up: the second batch arrives again under the same ids, the first does not.
    assert wait_for(lambda: min(copies(rec, second)) >= 2, 20), copies(rec, second)
    assert copies(rec, first) == [1] * 10
    assert all(rec.copies[s.uplink_id][0] == rec.copies[s.uplink_id][1] for s in second)
    log = (tmp_path / "edge.log").read_text()
    assert "Upstream city rewound to " in log and "10 uplinks will be sent again" in log
    # Same process, same upstream connection: nothing was restarted.
    assert edge.proc is not None and edge.proc.poll() is None
    assert log.count("Connected to upstream city") == 1
    # And delivery goes on as before.
    later: list[SentUplink] = []
    publish(chirpstack.host, chirpstack.port, Simulator(2, seed=32), 5, None, later.append)
    assert rec.wait_for({s.uplink_id for s in later}, 30)
    wait_delivered(config, "city")
    assert copies(rec, first) == [1] * 10 and max(copies(rec, second)) == 2
    assert edge.terminate() == 0


def test_rewind_while_edge_is_stopped_is_taken_up_at_start(broker_factory, make_config, edge_process, recorder,
                                                           tmp_path):
    chirpstack, upstream = broker_factory(), broker_factory()
    rec = recorder(upstream, topic="lorawan/+")
    config = make_config(chirpstack.url, upstream.url)
    edge = edge_process(config)
    edge.start()
    edge.wait_connected()
    first, second, middle = two_batches(chirpstack)
    assert rec.wait_for({s.uplink_id for s in first + second}, 30)
    wait_delivered(config, "city")
    assert edge.terminate() == 0

    rewind(config, "city", middle)
    edge.start()
    assert wait_for(lambda: min(copies(rec, second)) >= 2, 30), copies(rec, second)
    assert copies(rec, first) == [1] * 10
    assert "Upstream city rewound to " in (tmp_path / "edge.log").read_text()
    assert edge.terminate() == 0


def test_rewind_http_upstream_while_edge_runs(broker_factory, make_config, edge_process, recorder, tmp_path):
    chirpstack, upstream = broker_factory(), broker_factory()
    rec = recorder(upstream, topic="lorawan/+")
    server = HttpServer().start()
    try:
        config = make_config(chirpstack.url, upstream.url, extra=HTTP.format(url=server.url))
        edge = edge_process(config)
        edge.start()
        edge.wait_connected()
        first, second, middle = two_batches(chirpstack)

        def posted() -> dict[str, int]:
            counts: dict[str, int] = {}
            for request in server.answered(2):
                for r in senml.resolve(senml.decode(request.body, "senml+json")):
                    if r["n"].endswith("_uplink"):
                        uid = r["vs"].removeprefix("urn:uuid:")
                        counts[uid] = counts.get(uid, 0) + 1
            return counts

        everything = {s.uplink_id for s in first + second}
        assert wait_for(lambda: everything <= posted().keys(), 30)
        wait_delivered(config, "portal")
        assert rec.wait_for(everything, 30)
        wait_delivered(config, "city")

        rewind(config, "portal", middle)
        assert wait_for(lambda: all(posted().get(s.uplink_id, 0) >= 2 for s in second), 20), posted()
        counts = posted()
        assert [counts[s.uplink_id] for s in first] == [1] * 10
        # Only the rewound upstream sends again.
        time.sleep(1.5)
        assert copies(rec, first + second) == [1] * 20
        assert "Upstream portal rewound to " in (tmp_path / "edge.log").read_text()
        assert edge.terminate() == 0
    finally:
        server.close()
