"""Killed mid-write and mid-checkpoint: the buffer opens and holds every batch that was committed.

A writer process appends batches with a tiny WAL auto-checkpoint (so checkpoints run all the
time) and prints the last id of each batch after `append` returned, i.e. after the point where
the source would acknowledge. It is SIGKILLed at random moments; every time, the file must pass
`PRAGMA quick_check` and contain every batch the writer had reported.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

WRITER = """  # noqa: E501 - a script run in a subprocess
import sys
from edge.buffer.store import Buffer, Batch, NewUplink
from edge.decoding.builtin.elsys import ElsysDecoder
from edge.simulate import Simulator
from edge.sources.chirpstack_events import parse
from edge.model import DecodeStatus

buf = Buffer(sys.argv[1])
buf.db.execute("PRAGMA wal_autocheckpoint = 8")  # checkpoint every 8 pages: constantly
sim = Simulator(20, seed=int(sys.argv[2]))
while True:
    batch = Batch()
    for topic, body, _ in sim.events(50):
        batch.uplinks.append(NewUplink(parse(topic, body, 0.0), topic, body, 0.0, DecodeStatus.UNDECODED,
                                       "", "", []))
    ids = buf.append(batch)
    print(ids[-1], flush=True)  # committed: this is where the broker would get its PUBACK
"""


def test_power_loss_sigkill_during_writes_and_checkpoints_loses_nothing_committed(tmp_path: Path) -> None:
    path = tmp_path / "buffer.sqlite"
    rng = random.Random(7)
    committed = 0
    for round_ in range(8):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(round_)], stdout=subprocess.PIPE,
                                text=True, cwd=Path(__file__).resolve().parents[2],
                                env=dict(os.environ, PYTHONUNBUFFERED="1"))
        assert proc.stdout is not None
        first = proc.stdout.readline()  # the writer is up and committing
        assert first.strip().isdigit(), first
        time.sleep(rng.uniform(0.05, 0.4))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
        reported = [int(x) for x in (first + out).split() if x.isdigit()]
        committed = max(committed, *reported)
        db = sqlite3.connect(path)
        assert db.execute("PRAGMA quick_check").fetchone()[0] == "ok"
        last = db.execute("SELECT max(id) FROM uplinks").fetchone()[0]
        count = db.execute("SELECT count(*) FROM uplinks").fetchone()[0]
        db.close()
        assert last >= committed, f"round {round_}: committed up to {committed}, file has {last}"
        assert count == last  # nothing in between went missing either
