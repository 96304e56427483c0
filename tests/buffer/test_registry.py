"""Device registry cache: schema on its own or as migration v2, atomic replace, upsert, reads, read-only use."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from edge.buffer import Buffer, migrations
from edge.buffer.registry import DeviceRegistry
from edge.errors import StorageError
from edge.sources.chirpstack_records import ApplicationRecord, DeviceRecord, ProfileRecord

APP = ApplicationRecord("app-1", "tenant-1", "Parking", "sensors in car parks")
PROFILE = ProfileRecord("prof-1", "Elsys ERS", "JS", "function decodeUplink(i) {}", {"decoder": "elsys/ers"})


def device(dev_eui: str, name: str = "sensor", **kw: object) -> DeviceRecord:
    fields: dict[str, object] = {"application_id": "app-1", "profile_id": "prof-1", "description": "a device",
                                 "tags": {"floor": "2"}, "variables": {"k": "v"}, "is_disabled": False, **kw}
    return DeviceRecord(dev_eui, name, **fields)  # type: ignore[arg-type]


@pytest.fixture
def registry(tmp_path: Path) -> DeviceRegistry:
    reg = DeviceRegistry(tmp_path / "buffer.sqlite")
    reg.replace_all([APP], [device("0000000000000001"), device("0000000000000002", is_disabled=True)], [PROFILE])
    return reg


def test_registry_reads_back_records(registry: DeviceRegistry) -> None:
    got = registry.get_device("0000000000000001")
    assert got is not None
    assert (got.name, got.application_id, got.profile_id, got.tags, got.variables, got.is_disabled) == (
        "sensor", "app-1", "prof-1", {"floor": "2"}, {"k": "v"}, False)
    assert got.synced_at > 0
    profile = registry.get_profile("prof-1")
    assert profile is not None and (profile.codec_runtime, profile.tags) == ("JS", {"decoder": "elsys/ers"})
    app = registry.get_application("app-1")
    assert app is not None and (app.name, app.tenant_id) == ("Parking", "tenant-1")
    assert [d.dev_eui for d in registry.list_devices()] == ["0000000000000001", "0000000000000002"]
    assert registry.list_devices()[1].is_disabled


def test_registry_lookup_ignores_case_and_misses_are_none(registry: DeviceRegistry) -> None:
    registry.upsert_device(device("A0B0C0D0E0F00001"))
    assert registry.get_device("a0b0c0d0e0f00001") is not None
    assert registry.get_device("A0B0C0D0E0F00001") is not None
    assert registry.get_device("ffffffffffffffff") is None
    assert registry.get_profile("nope") is None
    assert registry.get_application("nope") is None


def test_replace_all_drops_what_is_gone(registry: DeviceRegistry) -> None:
    registry.replace_all([], [device("0000000000000003", profile_id="")], [])
    assert [d.dev_eui for d in registry.list_devices()] == ["0000000000000003"]
    assert registry.list_profiles() == [] and registry.list_applications() == []


def test_replace_all_failing_midway_keeps_previous_content(registry: DeviceRegistry) -> None:
    class Broken:
        dev_eui = "0000000000000009"
        name = description = application_id = profile_id = ""
        variables = None
        is_disabled = None

        @property
        def tags(self) -> dict[str, str]:
            raise RuntimeError("boom")

    before = registry.list_devices()
    with pytest.raises(RuntimeError):
        registry.replace_all([APP], [device("0000000000000005"), Broken()], [PROFILE])
    assert registry.list_devices() == before
    assert not registry.db.in_transaction


def test_upsert_device_adds_and_updates_with_profile_and_application(registry: DeviceRegistry) -> None:
    new_profile = ProfileRecord("prof-2", "Dragino", "NONE")
    new_app = ApplicationRecord("app-2", "tenant-1", "Water")
    registry.upsert_device(device("0000000000000010", application_id="app-2", profile_id="prof-2"),
                           new_profile, new_app)
    registry.upsert_device(device("0000000000000001", name="renamed", variables=None, is_disabled=None))
    assert registry.get_profile("prof-2") == registry.list_profiles()[1]
    got = registry.get_device("0000000000000001")
    assert got is not None and (got.name, got.variables, got.is_disabled) == ("renamed", {}, False)
    assert len(registry.list_devices()) == 3
    assert {a.id for a in registry.list_applications()} == {"app-1", "app-2"}


def test_registry_shares_the_buffer_file(tmp_path: Path) -> None:
    path = tmp_path / "buffer.sqlite"
    buf = Buffer(path)
    reg = DeviceRegistry(path)
    reg.upsert_device(device("0000000000000001"))
    assert buf.counters()["received"] == 0  # the buffer's own tables are untouched
    buf.close()
    reg.close()
    assert path.stat().st_mode & 0o777 == 0o600


def test_registry_first_then_migration_v2_still_applies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "buffer.sqlite"
    DeviceRegistry(path).upsert_device(device("0000000000000001"))
    # Migration v2 applied once more: on a file where the registry made the tables itself (before
    # the migration existed), that migration must succeed and keep the rows.
    monkeypatch.setattr(migrations, "MIGRATIONS", [*migrations.MIGRATIONS, migrations.v2_device_registry])
    buf = Buffer(path)
    assert buf.db.execute("PRAGMA user_version").fetchone()[0] == len(migrations.MIGRATIONS)
    buf.close()
    reg = DeviceRegistry(path, readonly=True)
    assert reg.get_device("0000000000000001") is not None


def test_readonly_registry(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="run `edge devices sync`"):
        DeviceRegistry(tmp_path / "missing.sqlite", readonly=True)
    Buffer(tmp_path / "old.sqlite").close()  # a buffer from before the registry existed
    reg = DeviceRegistry(tmp_path / "old.sqlite", readonly=True)
    assert reg.list_devices() == [] and reg.get_device("0000000000000001") is None
    assert reg.list_profiles() == [] and reg.list_applications() == []
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        reg.db.execute("CREATE TABLE x (y)")
