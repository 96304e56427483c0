"""Read-only looks at the buffer: the Inspector on sound, damaged and missing files; how read failures are reported."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from edge.buffer import Batch, Buffer, Inspector
from edge.buffer.migrations import MIGRATIONS
from edge.buffer.registry import DeviceRegistry
from edge.errors import StorageError
from edge.model import DeviceEvent
from tests.buffer.test_migrations import make_v1
from tests.buffer.test_store import DEV, T0, batch_of, uplink


def test_inspector_answers_what_doctor_and_the_cli_ask(tmp_path: Path) -> None:
    path = tmp_path / "buffer.sqlite"
    buf = Buffer(path)
    with Inspector(path) as look:
        assert look.quick_check() == ["ok"] and look.schema_version() == len(MIGRATIONS)
        assert look.newest_device_time() is None and look.last_uplink_message(DEV) is None
        assert look.queue_event("q-1", ("ack", "txack")) is None
    buf.append(batch_of(uplink(1), uplink(2)))
    events = Batch()
    for summary in ("queueItemId=q-10 acknowledged=true", "queueItemId=q-1 acknowledged=true"):
        events.events.append((DeviceEvent("ack", DEV, "app-1", T0, summary), "topic", b"{}"))
    buf.append(events)
    with Inspector(path) as look:
        assert look.newest_device_time() == T0 + 2
        assert look.last_uplink_message(DEV) == (uplink(2).topic, uplink(2).payload, uplink(2).received)
        assert look.last_uplink_row(DEV) == 2 and look.last_uplink_row("0000000000000000") is None
        got = look.queue_event("q-1", ("ack",))  # not q-10, which it prefixes
        assert got is not None and got["summary"] == "queueItemId=q-1 acknowledged=true"
        assert look.queue_event("q-1", ("txack",)) is None
        assert look.counters() == buf.counters() and look.devices() == buf.devices()
    buf.close()


def test_inspector_reports_a_file_it_cannot_open_with_sqlites_message(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="unable to open"):
        Inspector(tmp_path / "missing.sqlite")
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"this is not a database" * 300)
    with pytest.raises(StorageError, match="not a database") as caught:
        Inspector(garbage)
    assert isinstance(caught.value.__cause__, sqlite3.DatabaseError)


def test_reads_fail_as_storage_error_read_only_and_as_sqlite3_errors_on_the_writer(tmp_path: Path) -> None:
    """The status page and the CLI catch StorageError; the writer's size policy needs sqlite3's own error."""
    path = tmp_path / "buffer.sqlite"
    writer = Buffer(path)
    for table in ("counters", "uplinks", "devices", "malformed", "device_health"):
        writer.db.execute(f"DROP TABLE {table}")  # a file these reads cannot make sense of
    reader = Buffer(path, readonly=True)
    reads = {"counters": (), "decode_failures": (5,), "progress": (["city"], T0), "devices": (),
             "recent_malformed": (), "health_states": ()}
    for name, args in reads.items():
        with pytest.raises(sqlite3.OperationalError, match="no such table") as raw:
            getattr(writer, name)(*args)
        assert not isinstance(raw.value, StorageError)
        with pytest.raises(StorageError, match="no such table"):
            getattr(reader, name)(*args)
    writer.close()
    reader.close()


def test_registry_on_a_buffer_from_before_it(tmp_path: Path) -> None:
    """A schema-v1 file: read-only it is an empty cache; the writable registry migrates it (v2 makes the tables)."""
    path = tmp_path / "buffer.sqlite"
    make_v1(path)
    reg = DeviceRegistry(path, readonly=True)
    assert reg.list_devices() == [] and reg.get_device("0000000000000001") is None
    reg.close()
    reg = DeviceRegistry(path)
    assert reg.db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert reg.list_devices() == [] and reg.list_applications() == []
    reg.close()
