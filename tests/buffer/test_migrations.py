"""Schema migrations on real files: a first-version buffer with data upgrades intact, also when opened concurrently."""

from __future__ import annotations

import ast
import hashlib
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import orjson

from edge.buffer import Buffer
from edge.buffer.migrations import MIGRATIONS, migrate
from edge.model import radio_json, readings_json
from tests.buffer.test_store import READINGS, T0, batch_of, uplink

REPO = Path(__file__).resolve().parents[2]


def make_v1(path: Path) -> None:
    """A buffer written by the first schema version: two uplinks, a device, a sink half-way, a gap."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode = WAL")  # as every buffer file is from its first open on
    db.executescript(MIGRATIONS[0]() + "PRAGMA user_version = 1;")
    for n in (1, 2):
        up = uplink(n).uplink
        db.execute("INSERT INTO uplinks(id, uplink_id, dev_eui, application_id, gateway_id, time, status, decoder,"
                   " error, readings, radio) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                   (n, up.uplink_id, up.device.dev_eui, "app-1", "acde48fffe000001", up.time, 1, "elsys/ers", None,
                    readings_json(READINGS), radio_json(up.radio)))
        db.execute("INSERT INTO raw(id, topic, payload, received) VALUES (?,?,?,?)",
                   (n, "application/app-1/device/x/event/up", b"raw", T0 + n))
    db.execute("INSERT INTO devices VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
               (up.device.dev_eui, "dev", "app-1", "climate", "Elsys ERS", 2, T0 + 2, 2, -88.0, 9.5,
                "acde48fffe000001", "elsys/ers", 1, readings_json(READINGS)))
    db.execute("INSERT INTO sinks(name, cursor, delivered) VALUES ('city', 1, 1)")
    db.execute("INSERT INTO gaps(sink, first_id, last_id, count, created) VALUES ('city', 0, 0, 3, 1.0)")
    db.execute("INSERT INTO counters(name, value) VALUES ('received', 2)")
    db.commit()
    db.close()


def test_migrations_first_version_with_data_reaches_latest_and_keeps_it(tmp_path: Path) -> None:
    path = tmp_path / "buffer.sqlite"
    make_v1(path)
    buf = Buffer(path)
    try:
        assert buf.db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) > 1
        assert [e.uplink_id for e in buf.read(0, 10)] == [uplink(1).uplink.uplink_id, uplink(2).uplink.uplink_id]
        assert buf.read(0, 10)[1].readings == READINGS
        assert buf.register_sink("city") == 1  # the cursor survived: only id 2 is still to deliver
        assert [g.count for g in buf.gaps("city")] == [3]
        assert buf.counters()["received"] == 2
        (device,) = buf.devices()
        assert device["fcnt"] == 2 and device["readings"] == orjson.loads(readings_json(READINGS))
        assert buf.device_meta([device["dev_eui"]])[device["dev_eui"]]["tags"] == {}  # v3 column, default
        # New rows go after the migrated ones and the ids keep increasing.
        assert buf.append(batch_of(uplink(3))) == [3]
    finally:
        buf.close()


OPEN = """\
import sys, time
from pathlib import Path
from edge.buffer import Buffer
go = Path(sys.argv[2])
while not go.exists():
    time.sleep(0.001)
Buffer(sys.argv[1]).close()
"""


def test_migrations_concurrent_processes_on_an_old_file_all_succeed(tmp_path: Path) -> None:
    """`edge run` and another command opening a first-version file at once: both work, none runs a step twice.

    Before the version was re-read under the write lock, the loser re-ran an idempotent step and set
    user_version back, after which every start failed with "duplicate column".
    """
    for round_ in range(3):
        path = tmp_path / f"buffer{round_}.sqlite"
        go = tmp_path / f"go{round_}"
        make_v1(path)
        procs = [subprocess.Popen([sys.executable, "-c", OPEN, str(path), str(go)], cwd=REPO,
                                  stderr=subprocess.PIPE) for _ in range(4)]
        time.sleep(0.5)  # let every process reach the starting line
        go.touch()
        errors = [p.communicate(timeout=60)[1].decode() for p in procs]
        assert [p.returncode for p in procs] == [0, 0, 0, 0], errors
        db = sqlite3.connect(path)
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert migrate(db) == len(MIGRATIONS)  # and opening it again is a no-op
        db.close()


# Shipped migrations, frozen: SHA-256 of the SQL each returns, in order. A buffer in the field has
# run exactly this SQL, so editing one would give files of the same version different schemas.
# A schema change appends a migration (and its line here); it never edits one above.
SHIPPED = [
    ("v1_initial", "1c53ee32e04259dd1f254aaf71362b551d2797541092de4c8c3f9bc9b5b78f5d"),
    ("v2_device_registry", "72ac60bdec949db52889ea230c8ad26e2250acfec0bb9b3468cad0c5787dfadf"),
    ("v3_sharing_and_dead_letters", "a67a015466123a056016b7757f59c76a829c18a437ae18e473dd0cc3d9f63b2f"),
    ("v4_share_thinning", "4e00b9d2d05de4fa71a7ebec141c3b62856c9ac59f68aaf07b5a41ad453c66fd"),
    ("v5_rewind_requests", "2c61bace7dbd6900e40924920fb81f234c3777f459e0c0ee7785eb0468b675cb"),
    ("v6_command_ids", "f18176e74d315eb9e8c0e11e4480f82363db4f96528d6e831b27f3500415c446"),
    ("v7_device_health", "de16b07ed99087ca98f66cea634273d34092ef9477a1b4cdc4b5d0dae9791f3e"),
]


def test_shipped_migrations_are_frozen() -> None:
    got = [(m.__name__, hashlib.sha256(m().encode()).hexdigest()) for m in MIGRATIONS[:len(SHIPPED)]]
    assert got == SHIPPED, "a shipped migration changed: restore it and append a new migration instead"
    # Each returns its own literal, so nothing else in the code can change what a migration runs.
    tree = ast.parse((REPO / "edge" / "buffer" / "migrations.py").read_text())
    bodies = {f.name: [s for s in f.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
              for f in tree.body if isinstance(f, ast.FunctionDef)}
    for m in MIGRATIONS:
        (statement,) = bodies[m.__name__]
        assert isinstance(statement, ast.Return) and isinstance(statement.value, ast.Constant), m.__name__
