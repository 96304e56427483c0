"""A damaged buffer is moved aside and a fresh one started; a full disk drops the oldest by policy."""

from __future__ import annotations

import logging
import sqlite3

from edge.buffer import Buffer, open_writer
from edge.config import load_config
from edge.pipeline import Pipeline
from edge.simulate import Simulator
from edge.sources.chirpstack_mqtt import Message


def _messages(n: int, seed: int = 1) -> list[Message]:
    return [Message(t, b, 0.0) for t, b, _ in Simulator(5, seed=seed).events(n)]


def test_recovery_corrupt_file_is_moved_aside_and_a_fresh_buffer_starts(tmp_path, caplog):
    path = tmp_path / "buffer.sqlite"
    path.write_bytes(b"SQLite format 3\x00" + b"\xff" * 4000)  # header, then garbage
    with caplog.at_level(logging.ERROR):
        buf = open_writer(path, 1 << 30)
    assert buf.counters()["received"] == 0
    aside = list(tmp_path.glob("buffer.sqlite.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes().endswith(b"\xff" * 100)
    assert any("damaged" in r.message and "moved to" in r.message for r in caplog.records)
    buf.close()


def test_recovery_truncated_file_after_unclean_shutdown_is_detected(tmp_path):
    path = tmp_path / "buffer.sqlite"
    p = Pipeline(load_config(_cfg(tmp_path, path)))
    p.handle(_messages(300))
    p.buffer.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    p.buffer.db.close()  # no clean close: no marker, as after a power cut
    size = path.stat().st_size
    with path.open("r+b") as f:
        f.truncate(size // 2)
    buf = open_writer(path, 1 << 30)
    assert list(tmp_path.glob("buffer.sqlite.corrupt-*"))
    assert buf.read(0, 10) == []
    buf.close()


def test_recovery_clean_close_skips_the_check_and_keeps_data(tmp_path):
    path = tmp_path / "buffer.sqlite"
    p = Pipeline(load_config(_cfg(tmp_path, path)))
    p.handle(_messages(20))
    p.buffer.close()
    assert (tmp_path / "buffer.sqlite.clean").exists()
    buf = open_writer(path, 1 << 30)
    assert len(buf.read(0, 100)) == 20 and not (tmp_path / "buffer.sqlite.clean").exists()
    buf.close()


def test_recovery_disk_full_drops_oldest_counts_and_keeps_receiving(tmp_path, caplog):
    path = tmp_path / "buffer.sqlite"
    p = Pipeline(load_config(_cfg(tmp_path, path)))
    p.buffer.register_sink("city")
    # SQLite's own page limit stands in for a full disk: the same SQLITE_FULL error.
    p.handle(_messages(200))
    pages = p.buffer.db.execute("PRAGMA page_count").fetchone()[0]
    p.buffer.db.execute(f"PRAGMA max_page_count = {pages + 2}")
    with caplog.at_level(logging.ERROR):
        for seed in range(2, 8):
            p.handle(_messages(100, seed=seed))  # never raises: room is made by dropping the oldest
    counters = p.buffer.counters()
    assert counters["received"] == 800 and counters["dropped"] > 0
    assert any("disk holding the buffer is full" in r.message for r in caplog.records)
    assert p.buffer.gaps("city")  # the upstream will be told
    newest = p.buffer.read(p.buffer.last_id() - 1, 10)
    assert newest, "the newest uplinks are stored"
    p.buffer.close()
    assert sqlite3.connect(path).execute("PRAGMA quick_check").fetchone()[0] == "ok"


def test_recovery_readonly_status_still_opens(tmp_path):
    path = tmp_path / "buffer.sqlite"
    open_writer(path, 1 << 30).close()
    assert Buffer(path, readonly=True).counters()["received"] == 0


def _cfg(tmp_path, path):
    cfg = tmp_path / "edge.toml"
    cfg.write_text(f'[chirpstack]\nmqtt_url = "mqtt://127.0.0.1:1"\n[buffer]\npath = "{path}"\n'
                   '[[upstream]]\nname = "city"\nurl = "mqtt://127.0.0.1:2"\n')
    return cfg



def test_recovery_damage_that_stops_the_check_itself_is_moved_aside_too(tmp_path, caplog):
    """Some damage makes `PRAGMA quick_check` raise ("malformed") instead of reporting: same handling."""
    path = tmp_path / "buffer.sqlite"
    p = Pipeline(load_config(_cfg(tmp_path, path)))
    p.handle(_messages(300))
    p.buffer.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    p.buffer.db.close()  # no clean close: no marker, as after a power cut
    with path.open("r+b") as f:
        f.seek(3 * 4096)
        f.write(b"\xa5" * 4096)  # one b-tree page is garbage: the file opens, the check raises
    with caplog.at_level(logging.ERROR):
        buf = open_writer(path, 1 << 30)
    assert list(tmp_path.glob("buffer.sqlite.corrupt-*"))
    assert any("damaged" in r.message for r in caplog.records)
    assert buf.read(0, 10) == []
    buf.close()
