"""A real full disk: the buffer on a small tmpfs, filled by the edge itself or by someone else.

`edge run` must keep running (same process, no crash loop), drop the oldest uplinks by policy,
count them, and deliver everything new once space returns (the tmpfs is grown in place). When
another file takes the last byte, nothing can be freed: the batch stays unacknowledged at the
broker (StorageFull) and the sinks keep running. Needs root to mount a tmpfs; skipped otherwise.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge.buffer import Buffer
from edge.buffer.adapters import BufferBacklog
from edge.config import load_config
from edge.errors import StorageFull
from edge.pipeline import Pipeline
from edge.simulate import SentUplink, Simulator, publish
from edge.sources.chirpstack_mqtt import Message
from tests.conftest import REPO

pytestmark = pytest.mark.mosquitto

N = 8000


def _mount(mount: Path, size: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount.mkdir()
    run = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "edge-test-full", str(mount)],
                         capture_output=True, text=True, check=False)
    if run.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {run.stderr.strip()}")


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 16 MiB tmpfs; yields its mount point and unmounts it afterwards."""
    _mount(tmp_path / "disk", "16m")
    yield tmp_path / "disk"
    subprocess.run(["umount", "-l", str(tmp_path / "disk")], check=False)


@pytest.fixture
def brim_full_disk(tmp_path: Path):
    """A 2 MiB tmpfs holding a small buffer, then filled to the last byte by another file."""
    _mount(tmp_path / "disk", "2m")
    yield tmp_path / "disk"
    subprocess.run(["umount", "-l", str(tmp_path / "disk")], check=False)


def _fill(directory: Path) -> None:
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 16, 4096, 512, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                pass
    finally:
        os.close(fd)
    assert _df_free(directory) == 0


def test_disk_full_with_no_room_at_all_is_storage_full_and_cursor_writes_do_not_stop_the_sink(
        brim_full_disk, caplog):
    """Another process took the last byte: nothing can be freed, yet nothing raises what would stop the service."""
    cfg = brim_full_disk.parent / "edge.toml"
    cfg.write_text(f'[chirpstack]\nmqtt_url = "mqtt://127.0.0.1:1"\n[buffer]\npath = "{brim_full_disk}/b.sqlite"\n'
                   '[[upstream]]\nname = "city"\nurl = "mqtt://127.0.0.1:2"\n')
    p = Pipeline(load_config(cfg))
    backlog = BufferBacklog(Buffer(p.cfg.buffer.path, synchronous="NORMAL"), "city", "", "test")
    p.handle(_messages(20))
    p.buffer.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    backlog.buffer.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    _fill(brim_full_disk)
    with pytest.raises(StorageFull):
        p.handle(_messages(200, seed=2))  # the source keeps it unacknowledged and retries later
    with caplog.at_level(logging.WARNING):
        backlog.advance(10, 10)  # a cursor write that does not fit must not kill the sink thread
    assert any("could not record upstream city's progress" in r.message for r in caplog.records)
    (brim_full_disk / "filler").unlink()  # space returns, more than the headroom the buffer keeps
    subprocess.run(["mount", "-o", "remount,size=32m", str(brim_full_disk)], check=True)
    p.handle(_messages(200, seed=2))
    backlog.advance(20, 10)
    assert backlog.cursor() == 20 and p.buffer.counters()["received"] == 220
    p.buffer.close()


def _messages(n: int, seed: int = 1) -> list[Message]:
    return [Message(t, b, 0.0) for t, b, _ in Simulator(5, seed=seed).events(n)]


def _status(cfg: Path) -> dict:
    out = subprocess.run([sys.executable, "-m", "edge", "status", "--json", "--config", str(cfg)], cwd=REPO,
                         capture_output=True, text=True, check=True, timeout=30)
    return json.loads(out.stdout)


def _df_free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def test_disk_full_keeps_running_drops_oldest_counts_and_recovers(small_disk, broker_factory, make_config,
                                                                  edge_process, recorder):
    chirpstack, upstream = broker_factory(), broker_factory()
    rec = recorder(upstream)
    upstream.stop()  # the backhaul is down: everything stays in the buffer until the disk is full
    cfg = make_config(chirpstack.url, upstream.url, max_size_mb=256)  # the bound is far above the disk
    cfg.write_text(cfg.read_text().replace(str(cfg.parent / "buffer.sqlite"), str(small_disk / "buffer.sqlite")))
    edge = edge_process(cfg)
    edge.start()
    edge.wait_connected()
    pid = edge.proc.pid
    # Far more than 16 MiB of uplinks (each about 1 kB raw plus its records and indexes).
    first: list[SentUplink] = []
    publish(chirpstack.host, chirpstack.port, Simulator(20, seed=5), N, 2000.0, first.append)
    assert len(first) == N, "ChirpStack's broker acknowledged every uplink"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and _status(cfg)["counters"]["received"] < N:
        time.sleep(0.5)
    status = _status(cfg)
    assert status["counters"]["received"] >= N, status["counters"]
    assert status["counters"]["dropped"] > 0, "the oldest uplinks were dropped to make room"
    assert edge.proc.poll() is None and edge.proc.pid == pid, "the service kept running"
    log = edge.log.read_text()
    assert "The disk holding the buffer is almost full" in log
    assert "Traceback" not in log, log[-3000:]

    # Space returns and the backhaul comes back: what is left is delivered, with a gap notice,
    # and new uplinks flow again without a restart.
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    upstream.start()
    second: list[SentUplink] = []
    publish(chirpstack.host, chirpstack.port, Simulator(20, seed=6), 500, 500.0, second.append)
    assert rec.wait_for({s.uplink_id for s in second}, 60), "new uplinks are delivered once space returns"
    assert rec.wait_for({s.uplink_id for s in first[-200:]}, 30), "the newest buffered uplinks were kept"
    with rec.lock:
        notices = [json.loads(m.payload) for m in rec.messages if "/notice" in m.topic or "notice" in m.topic]
    status = _status(cfg)
    delivered_first = {s.uplink_id for s in first} & rec.ids()
    assert len(delivered_first) + status["upstreams"][0]["dropped"] >= N, (len(delivered_first), status)
    assert notices, "the upstream was told about the dropped uplinks"
    assert edge.proc.poll() is None and edge.proc.pid == pid
    assert _df_free(small_disk) > 0
    rc = edge.terminate()
    assert rc == 0, edge.log.read_text()[-3000:]
