"""`edge buffer list` and `edge buffer rewind` against real buffers filled through Pipeline.handle."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from click.testing import CliRunner

from edge.buffer import Buffer
from edge.cli import _timestamp, main
from edge.config import load_config
from edge.pipeline import Pipeline
from edge.simulate import SentUplink, Simulator
from edge.sources.chirpstack_mqtt import Message

T0 = 1795600800.0  # 2026-11-25T10:00:00Z
FAILED = 3  # the fourth uplink carries a truncated Elsys frame


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def fill(make_config, count: int = 6, extra: str = "") -> tuple[Path, list[SentUplink]]:
    """Uplinks one minute apart from two devices, through the real Pipeline.handle; one fails to decode."""
    path = make_config("mqtt://127.0.0.1:1", "mqtt://127.0.0.1:2", extra=extra)
    pipeline = Pipeline(load_config(path))
    msgs, sent = [], []
    for n, (topic, body, s) in enumerate(Simulator(2, seed=5).events(count)):
        doc = json.loads(body)
        doc["time"] = iso(T0 + 60 * n)
        if n == FAILED:
            doc["data"] = "AQA="  # type 0x01 (temperature) without its two bytes
        msgs.append(Message(topic, json.dumps(doc).encode(), T0 + 60 * n))
        sent.append(s)
    pipeline.handle(msgs)
    pipeline.buffer.close()
    return path, sent


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def test_buffer_list_newest_first_with_readings_and_decode_error(make_config):
    path, sent = fill(make_config)
    code, out = run("buffer", "list", "-c", str(path))
    assert code == 0, out
    lines = out.splitlines()
    assert len(lines) == 6
    # Newest first, each with receive time (UTC), DevEUI, fCnt, fPort, decoder and status.
    assert [line.split()[2] for line in lines] == [s.dev_eui for s in reversed(sent)]
    assert lines[0].startswith("2026-11-25 10:05:00Z  a81758fffe000001  fcnt=3 fport=5  elsys/ers  decoded")
    failed = lines[5 - FAILED]
    assert " failed  error: " in failed and "truncated" in failed and "temperature=" not in failed
    assert "temperature=" in lines[0] and " Cel" in lines[0] and "humidity=" in lines[0] and " %RH" in lines[0]
    assert "payload=" not in out


def test_buffer_list_filters(make_config):
    path, sent = fill(make_config)
    _, out = run("buffer", "list", "-c", str(path), "--device", sent[0].dev_eui.upper())
    assert len(out.splitlines()) == 3 and all(sent[0].dev_eui in line for line in out.splitlines())
    _, out = run("buffer", "list", "-c", str(path), "--status", "failed")
    (line,) = out.splitlines()
    assert "fcnt=2" in line and sent[FAILED].dev_eui in line
    _, out = run("buffer", "list", "-c", str(path), "--status", "failed", "--status", "decoded")
    assert len(out.splitlines()) == 6
    _, out = run("buffer", "list", "-c", str(path), "--status", "undecoded")
    assert out.strip() == "no stored uplinks match"
    # At or after --since, before --until (either as ISO 8601 with or without offset).
    _, out = run("buffer", "list", "-c", str(path), "--since", "2026-11-25T10:02:00Z", "--until", "2026-11-25T10:04:00")
    assert [line[:20] for line in out.splitlines()] == ["2026-11-25 10:03:00Z", "2026-11-25 10:02:00Z"]
    _, out = run("buffer", "list", "-c", str(path), "--limit", "2")
    assert [line[:20] for line in out.splitlines()] == ["2026-11-25 10:05:00Z", "2026-11-25 10:04:00Z"]
    _, out = run("buffer", "list", "-c", str(path), "--since", "100000d", "--limit", "0")
    assert len(out.splitlines()) == 6
    code, out = run("buffer", "list", "-c", str(path), "--since", "yesterday")
    assert code == 2 and "--since" in out and "ISO 8601" in out


def test_buffer_list_raw_and_json(make_config):
    path, sent = fill(make_config)
    _, out = run("buffer", "list", "-c", str(path), "--raw")
    payloads = [line.rsplit("payload=", 1)[1] for line in out.splitlines()]
    expected = [s.payload.hex() for s in reversed(sent)]
    expected[5 - FAILED] = "0100"
    assert payloads == expected

    code, out = run("buffer", "list", "-c", str(path), "--json", "--limit", "0")
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]  # JSON Lines
    assert [r["uplink_id"] for r in rows] == [s.uplink_id for s in reversed(sent)]
    assert all(r["record_id"] == f"urn:uuid:{r['uplink_id']}" for r in rows)
    bad = rows[5 - FAILED]
    assert bad["status"] == "failed" and "truncated" in bad["error"] and bad["readings"] == []
    assert bad["payload"] == "0100" and bad["fcnt"] == 2 and bad["fport"] == 5 and bad["decoder"] == "elsys/ers"
    good = rows[0]
    assert good["status"] == "decoded" and good["error"] is None and good["time_utc"] == "2026-11-25T10:05:00Z"
    assert good["payload"] == sent[-1].payload.hex()
    # The SenML records exactly as stored (what upstreams are sent), radio metadata too.
    buf = Buffer(load_config(path).buffer.path, readonly=True)
    (entry,) = [e for e in buf.read(0, 10) if e.uplink_id == good["uplink_id"]]
    assert good["readings"] == json.loads(entry.readings_json) and good["readings"][0]["n"] == "temperature"
    assert good["radio"] == json.loads(entry.radio_json)


def test_buffer_store_pages_by_id_without_loading_the_table(make_config):
    path, sent = fill(make_config, count=11)
    buf = Buffer(load_config(path).buffer.path, readonly=True)
    ids = [r.uplink_id for r in buf.stored(page=3)]
    assert ids == [s.uplink_id for s in reversed(sent)]
    assert [r.id for r in buf.stored(page=3, limit=5)] == [11, 10, 9, 8, 7]
    assert [r.id for r in buf.stored(page=2, dev_eui=sent[0].dev_eui, limit=4)] == [11, 9, 7, 5]


def test_buffer_list_never_creates_a_missing_buffer(make_config, tmp_path):
    path = make_config("mqtt://127.0.0.1:1", "mqtt://127.0.0.1:2")
    for args in (["list"], ["rewind", "--upstream", "city", "--all"]):
        code, out = run("buffer", *args, "-c", str(path))
        assert code == 1 and "no buffer at" in out
    assert not (tmp_path / "buffer.sqlite").exists()


def test_timestamp_relative_and_iso():
    assert _timestamp("2h", now=10000.0) == 10000.0 - 7200
    assert _timestamp("7d", now=1e6) == 1e6 - 7 * 86400
    assert _timestamp("90s", now=100.0) == 10.0
    assert _timestamp("2026-11-25T10:00:00Z") == T0 == _timestamp("2026-11-25T10:00:00")
    assert _timestamp("2026-11-25T11:00:00+01:00") == T0


# -- rewind -----------------------------------------------------------------------------------------

def test_buffer_rewind_moves_the_cursor_back_and_a_sink_takes_it_up_once(make_config):
    path, _ = fill(make_config)
    buf = Buffer(load_config(path).buffer.path)
    buf.register_sink("city")
    buf.advance("city", 6, 6)  # everything delivered
    code, out = run("buffer", "rewind", "-c", str(path), "--upstream", "city", "--since", "2026-11-25T10:02:30Z")
    assert code == 0, out
    assert "3 delivered uplinks received since 2026-11-25 10:02:30Z will be sent again" in out
    assert "starting with one received 2026-11-25 10:03:00Z" in out and "not delivered yet" not in out
    assert "Oldest uplink held: 2026-11-25 10:00:00Z" in out
    assert buf.register_sink("city") == 3
    # A running sink's progress write, from its old position, does not undo the rewind...
    buf.advance("city", 6, 0)
    assert buf.register_sink("city") == 3
    # ...until it takes the request up, once.
    assert buf.take_rewind("city") == (3, "2026-11-25T10:02:30Z")
    assert buf.take_rewind("city") is None
    buf.advance("city", 4, 1)
    assert buf.register_sink("city") == 4


def test_buffer_rewind_never_skips_undelivered_uplinks(make_config):
    path, _ = fill(make_config)
    buf = Buffer(load_config(path).buffer.path)
    buf.register_sink("city")
    buf.advance("city", 2, 2)  # behind: 3..6 not delivered yet
    code, out = run("buffer", "rewind", "-c", str(path), "--upstream", "city", "--since", "2026-11-25T10:04:00Z",
                    "--json")
    assert code == 0
    data = json.loads(out)
    assert data["cursor"] == 2 and data["previous_cursor"] == 2 and data["already_delivered"] == 0
    assert buf.register_sink("city") == 2


def test_buffer_rewind_all_and_an_upstream_that_never_ran(make_config):
    path, _ = fill(make_config)
    code, out = run("buffer", "rewind", "-c", str(path), "--upstream", "city", "--all")
    assert code == 0, out
    assert "Upstream city: no uplink held had been delivered; nothing to send again." in out
    assert "6 uplinks not delivered yet follow as usual." in out
    buf = Buffer(load_config(path).buffer.path)
    assert buf.take_rewind("city") == (0, "the oldest uplink held")


def test_buffer_rewind_errors(make_config):
    path, _ = fill(make_config)
    code, out = run("buffer", "rewind", "-c", str(path), "--upstream", "nope", "--all")
    assert code == 2 and "no upstream named 'nope'; configured: city" in out
    code, out = run("buffer", "rewind", "-c", str(path), "--upstream", "city")
    assert code == 2 and "either --since TIME or --all" in out
    code, out = run("buffer", "rewind", "-c", str(path), "--upstream", "city", "--all", "--since", "1h")
    assert code == 2
    code, out = run("buffer", "rewind", "-c", str(path), "--upstream", "city", "--since", "soon")
    assert code == 2 and "--since" in out
    assert Buffer(load_config(path).buffer.path).take_rewind("city") is None  # nothing was asked


def test_buffer_rewind_before_the_oldest_held_says_the_size_bound_dropped_them(make_config):
    path, _ = fill(make_config)
    buf = Buffer(load_config(path).buffer.path)
    buf.register_sink("city")
    buf.advance("city", 6, 6)
    buf._drop_through(2)  # what the size bound does when it needs room
    code, out = run("buffer", "rewind", "-c", str(path), "--upstream", "city", "--since", "2026-11-25T00:00:00Z")
    assert code == 0, out
    assert "4 delivered uplinks received since 2026-11-25 00:00:00Z will be sent again" in out
    assert "Oldest uplink held: 2026-11-25 10:02:00Z (4 held)" in out
    assert "no longer held: the size bound (buffer.max_size_mb) dropped them" in out
    code, out = run("buffer", "rewind", "-c", str(path), "--upstream", "city", "--since", "2026-11-27T00:00:00Z")
    assert code == 0 and "no uplink received since 2026-11-27 00:00:00Z held had been delivered" in out
    assert "4 uplinks not delivered yet follow as usual" in out  # the first rewind is still pending


def test_buffer_rewind_size_bound_dropping_while_pending_moves_the_cursor_past_the_dropped(make_config):
    path, _ = fill(make_config)
    buf = Buffer(load_config(path).buffer.path)
    buf.register_sink("city")
    buf.advance("city", 6, 6)
    buf.rewind("city", None, "all")
    buf._drop_through(2)
    (gap,) = buf.gaps("city")  # the rewound upstream had not been sent 1..2 again: a gap notice tells it
    assert (gap.first_id, gap.last_id, gap.count) == (1, 2, 2)
    assert buf.take_rewind("city") == (2, "all")


def test_buffer_rewind_thinned_upstream_gets_what_its_rules_allow_again(make_config):
    """A thinned upstream re-reads from the rewind point: same uplinks, plus at most one per device."""
    from edge.buffer.adapters import BufferBacklog, BufferThinStore
    from edge.config import load_config as load
    from edge.formats.share import ShareFilter

    path, _ = fill(make_config, count=20)
    cfg = load(path)
    rules = cfg.upstreams[0].share.__class__(thin_s=150.0)  # one per device per 150 s; uplinks 60 s apart
    buf = Buffer(cfg.buffer.path)
    share = ShareFilter(rules, buf.device_meta, BufferThinStore(buf, "city"))
    backlog = BufferBacklog(buf, "city", "n", "gw")

    def drain(position: int) -> list[int]:
        got = []
        while entries := backlog.read(position, 4):  # small windows, as a sink reads
            got += [e.id for e in share.apply(entries)]
            position = entries[-1].id
            backlog.advance(position, len(entries))
        return got

    first = drain(backlog.cursor())
    assert first and len(first) < 19
    buf.rewind("city", T0 + 60 * 9.5, "middle")  # uplinks 11.. (ids) again
    position = backlog.rewound()
    assert position == 10
    again = drain(position)
    original = [i for i in first if i > 10]
    assert set(original) <= set(again)
    extra = set(again) - set(original)
    assert len(extra) <= 2 and all(i <= 12 for i in extra)  # the first resent uplink of each device at most
    assert backlog.rewound() is None
