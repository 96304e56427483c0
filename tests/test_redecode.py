"""`edge redecode`: stored raw uplinks decoded again with today's decoders and queued for every upstream."""

from __future__ import annotations

from click.testing import CliRunner

from edge.buffer import Buffer
from edge.cli import main
from edge.config import load_config
from edge.decoding.base import DecodeResult, Field
from edge.decoding.builtin import builtin_decoders
from edge.decoding.registry import DecoderRegistry
from edge.model import DecodeStatus
from edge.pipeline import Pipeline
from edge.redecode import redecode
from edge.simulate import Simulator
from edge.sources.chirpstack_mqtt import Message


class FixedAcme:
    """Stands in for a decoder installed after the uplinks arrived."""

    id = "acme/th-1"
    fields = {"t": Field("temperature", "Cel")}

    def decode(self, payload, fport, context):
        return DecodeResult({"t": payload[1] / 10})


def _fill(cfg_path, count=6):
    """Uplinks whose `decoder` tag names a decoder the gateway does not have yet."""
    cfg = load_config(cfg_path)
    pipeline = Pipeline(cfg)
    msgs = []
    for topic, body, _ in Simulator(2, seed=4).events(count):
        msgs.append(Message(topic, body.replace(b'"decoder":"elsys/ers"', b'"decoder":"acme/th-1"'), 0.0))
    pipeline.handle(msgs)
    pipeline.buffer.close()
    return cfg


def test_redecode_failed_uplinks_get_readings_and_are_queued(make_config, tmp_path):
    cfg = _fill(make_config("mqtt://127.0.0.1:1", "mqtt://127.0.0.1:2"))
    buf = Buffer(cfg.buffer.path)
    before = buf.read(0, 100)
    assert len(before) == 6 and all(not e.readings for e in before)
    assert buf.counters()["decode_failed"] == 6
    buf.register_sink("city")
    buf.advance("city", before[-1].id, 6)  # already delivered (without readings)

    registry = DecoderRegistry([*builtin_decoders(), FixedAcme()])
    totals = redecode(cfg, registry=registry)
    assert totals["seen"] == 6 and totals["decoded"] == 6

    after = buf.read(before[-1].id, 100)  # what the upstream's cursor reaches next
    assert [e.uplink_id for e in after] == [e.uplink_id for e in before]  # same stable ids
    assert all(e.readings and e.readings[0].name == "temperature" for e in after)
    statuses = dict(buf.db.execute("SELECT status, count(*) FROM uplinks GROUP BY status").fetchall())
    assert statuses == {DecodeStatus.SUPERSEDED: 6, DecodeStatus.DECODED: 6}
    assert buf.counters()["redecoded"] == 6
    # Running again finds nothing left to fix.
    assert redecode(cfg, registry=registry)["seen"] == 0


def test_redecode_dry_run_and_filters_change_nothing(make_config):
    cfg = _fill(make_config("mqtt://127.0.0.1:1", "mqtt://127.0.0.1:2"))
    registry = DecoderRegistry([*builtin_decoders(), FixedAcme()])
    assert redecode(cfg, registry=registry, dry_run=True)["decoded"] == 6
    assert redecode(cfg, registry=registry, dev_eui="a81758fffe000001", dry_run=True)["seen"] == 3
    assert redecode(cfg, registry=registry, decoder="elsys/ers", dry_run=True)["seen"] == 0
    buf = Buffer(cfg.buffer.path)
    assert len(buf.read(0, 100)) == 6


def test_cli_redecode_reports_counts(make_config):
    path = make_config("mqtt://127.0.0.1:1", "mqtt://127.0.0.1:2")
    _fill(path)
    result = CliRunner().invoke(main, ["redecode", "--config", str(path), "--since", "2000-01-01T00:00:00"])
    assert result.exit_code == 0, result.output
    # acme/th-1 is still not installed: all six still fail, and say so.
    assert "6 uplinks re-decoded" in result.output and "6 still failing" in result.output


def test_redecode_still_failing_stores_nothing_new(make_config):
    cfg = _fill(make_config("mqtt://127.0.0.1:1", "mqtt://127.0.0.1:2"))
    assert redecode(cfg)["decode_failed"] == 6
    buf = Buffer(cfg.buffer.path)
    assert len(buf.read(0, 100)) == 6
    assert buf.counters()["redecoded"] == 0
