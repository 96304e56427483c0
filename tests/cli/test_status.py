"""One status model: the page's JSON, `edge status --json`, doctor and the metrics show the same backlog."""

from __future__ import annotations

import json
import re
import sqlite3
import time
import urllib.request
from contextlib import closing
from pathlib import Path

import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from edge.broker import free_port
from edge.cli import main
from edge.cli.doctor import doctor
from edge.simulate import Simulator, publish

UPLINKS = 1200


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return bytes(answer.read())


def _held(cfg: Path) -> int:
    """Uplink rows in the buffer, counted one by one: the exact figure every view must show."""
    with closing(sqlite3.connect(f"file:{cfg.parent / 'buffer.sqlite'}?mode=ro", uri=True)) as db:
        return int(db.execute("SELECT count(*) FROM uplinks").fetchone()[0])


def _status(cfg: Path) -> dict:
    result = CliRunner().invoke(main, ["status", "--json", "-c", str(cfg)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


@pytest.mark.mosquitto
def test_status_backlog_is_the_same_in_page_status_doctor_and_metrics(broker_factory, make_config, edge_process):
    """`edge run` with its upstream down and a buffer small enough to drop the oldest: one backlog everywhere."""
    chirpstack, upstream = broker_factory(), broker_factory()
    upstream.stop()  # the backhaul is down: everything stays in the buffer, which trims the oldest
    port = free_port()
    cfg = make_config(chirpstack.url, upstream.url, max_size_mb=0.25)
    cfg.write_text(cfg.read_text().replace("[web]\nport = 0", f"[web]\nport = {port}"))
    edge = edge_process(cfg)
    edge.start()
    edge.wait_connected()
    assert publish(chirpstack.host, chirpstack.port, Simulator(5, seed=11), UPLINKS, None) == UPLINKS
    end = time.monotonic() + 60
    while _status(cfg)["counters"].get("received", 0) < UPLINKS:
        assert time.monotonic() < end, _status(cfg)["counters"]
        time.sleep(0.2)
    # The last batch is committed; the size bound is enforced just after, in a transaction of its
    # own. Once the row count holds still nothing moves any more: no traffic, no delivery.
    held, before = _held(cfg), -1
    while held != before:
        assert time.monotonic() < end, "the buffer never settled"
        time.sleep(0.5)
        before, held = held, _held(cfg)
    status = _status(cfg)
    assert status["counters"]["dropped"] > 0, "the test needs the buffer to have dropped the oldest"
    assert 0 < held < UPLINKS

    (shown,) = status["upstreams"]
    page = json.loads(_get(f"http://127.0.0.1:{port}/api/status"))
    metrics = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(_get(f"http://127.0.0.1:{port}/metrics").decode())
               for s in family.samples}
    result = CliRunner().invoke(doctor, ["--config", str(cfg)], catch_exceptions=False)
    (line,) = [x for x in result.output.splitlines() if x[6:].startswith("upstream city backlog:")]
    waiting = re.search(r"backlog: (\d+) uplinks waiting", line)
    assert waiting, line

    assert shown["backlog"] == held
    assert page["upstreams"][0]["backlog"] == held
    assert metrics[("edge_upstream_backlog_uplinks", (("upstream", "city"),))] == held
    assert int(waiting.group(1)) == held
    assert page["buffer"]["uplinks"] == metrics[("edge_buffer_uplinks", ())] == held
    assert _held(cfg) == held, "the buffer changed while the views were read"
    assert edge.terminate() == 0


def test_status_lists_a_removed_upstreams_cursor_sorted_by_name(make_config) -> None:
    """A sink the config no longer names keeps its cursor row; `edge status` shows it, by name, with its backlog."""
    from edge.buffer import Batch, Buffer, NewUplink
    from edge.model import Uplink
    from edge.sources.chirpstack_events import parse

    cfg = make_config("mqtt://127.0.0.1:1", "mqtt://127.0.0.1:2")
    buffer = Buffer(cfg.parent / "buffer.sqlite")
    batch = Batch()
    for topic, payload, _ in Simulator(2, seed=3).events(4):
        event = parse(topic, payload, time.time())
        assert isinstance(event, Uplink)
        batch.uplinks.append(NewUplink(event, topic, payload, time.time(), 2, "", "", []))
    buffer.append(batch)
    buffer.register_sink("attic")
    buffer.advance("attic", 3, 3)
    buffer.close()
    shown = [(u["name"], u["cursor"], u["backlog"], u["delivered"]) for u in _status(cfg)["upstreams"]]
    assert shown == [("attic", 3, 1, 3), ("city", 0, 4, 0)]  # city never started: no cursor row yet
