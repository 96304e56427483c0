"""Versioned schema migrations of the buffer, applied in order at startup (PRAGMA user_version)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from edge.errors import StorageError

# Each migration returns the SQL that takes the schema one version further; it runs in one
# transaction together with the user_version bump, so a crash mid-migration changes nothing.
# Shipped migrations are frozen: each returns its own literal (tests/buffer/test_migrations.py pins
# their SHA-256), never a constant the code also uses, so a later schema change appends a migration.
MIGRATIONS: list[Callable[[], str]] = []


def migration(fn: Callable[[], str]) -> Callable[[], str]:
    """Register `fn` as the next schema version."""
    MIGRATIONS.append(fn)
    return fn


@migration
def v1_initial() -> str:
    """The first schema: uplinks with readings, raw events, device events, sinks' progress."""
    return """
        -- AUTOINCREMENT: ids are never reused after the table is emptied, so a sink's
        -- "id > cursor" never skips new rows (plain rowids restart from the largest left).
        CREATE TABLE uplinks (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            uplink_id TEXT NOT NULL,
            dev_eui TEXT NOT NULL,
            application_id TEXT NOT NULL,
            gateway_id TEXT NOT NULL,
            time REAL NOT NULL,
            status INTEGER NOT NULL,
            decoder TEXT NOT NULL,
            error TEXT,
            readings BLOB NOT NULL,
            radio BLOB NOT NULL
        );
        -- The original MQTT message of each uplink (same id), kept for `edge redecode`.
        -- A table of its own so that sinks scanning `uplinks` never read these bytes.
        CREATE TABLE raw (
            id INTEGER PRIMARY KEY,
            topic TEXT NOT NULL,
            payload BLOB NOT NULL,
            received REAL NOT NULL
        );
        CREATE TABLE events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            kind TEXT NOT NULL,
            dev_eui TEXT NOT NULL,
            application_id TEXT NOT NULL,
            time REAL NOT NULL,
            summary TEXT NOT NULL,
            topic TEXT NOT NULL,
            payload BLOB NOT NULL
        );
        CREATE TABLE malformed (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            received REAL NOT NULL,
            topic TEXT NOT NULL,
            error TEXT NOT NULL,
            payload BLOB NOT NULL
        );
        CREATE TABLE devices (
            dev_eui TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            application_id TEXT NOT NULL,
            application_name TEXT NOT NULL,
            device_profile TEXT NOT NULL,
            last_uplink INTEGER NOT NULL,
            last_time REAL NOT NULL,
            fcnt INTEGER,
            rssi REAL,
            snr REAL,
            gateway_id TEXT,
            decoder TEXT NOT NULL,
            status INTEGER NOT NULL,
            readings BLOB NOT NULL
        ) WITHOUT ROWID;
        CREATE TABLE sinks (
            name TEXT PRIMARY KEY,
            cursor INTEGER NOT NULL,
            delivered INTEGER NOT NULL DEFAULT 0,
            dropped INTEGER NOT NULL DEFAULT 0,
            last_delivery REAL
        ) WITHOUT ROWID;
        CREATE TABLE gaps (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            sink TEXT NOT NULL,
            first_id INTEGER NOT NULL,
            last_id INTEGER NOT NULL,
            count INTEGER NOT NULL,
            first_time REAL,
            last_time REAL,
            created REAL NOT NULL
        );
        CREATE TABLE counters (
            name TEXT PRIMARY KEY,
            value INTEGER NOT NULL
        ) WITHOUT ROWID;
        """


@migration
def v2_device_registry() -> str:
    """ChirpStack applications, devices and device profiles, cached for decoding and `edge devices`."""
    # The `cs_` prefix keeps these apart from v1's `devices` table (last uplink per device). IF NOT
    # EXISTS: before this migration existed, DeviceRegistry created these tables itself, and on such
    # files the migration must still succeed (edge/buffer/registry.py reads them).
    return """
CREATE TABLE IF NOT EXISTS cs_applications (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    synced_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS cs_devices (
    dev_eui TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    application_id TEXT NOT NULL,
    profile_id TEXT NOT NULL,
    tags TEXT NOT NULL,
    variables TEXT NOT NULL,
    is_disabled INTEGER NOT NULL,
    synced_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS cs_device_profiles (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    codec_runtime TEXT NOT NULL,
    codec_script TEXT NOT NULL,
    tags TEXT NOT NULL,
    synced_at REAL NOT NULL
) WITHOUT ROWID;
"""


@migration
def v3_sharing_and_dead_letters() -> str:
    """Device tags and profile ids for sharing rules; dead letters of HTTP upstreams."""
    return """
        ALTER TABLE devices ADD COLUMN device_profile_id TEXT NOT NULL DEFAULT '';
        ALTER TABLE devices ADD COLUMN tags BLOB NOT NULL DEFAULT '{}';
        CREATE TABLE dead_letters (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            sink TEXT NOT NULL,
            created REAL NOT NULL,
            status INTEGER NOT NULL,
            content_type TEXT NOT NULL,
            topic TEXT NOT NULL,
            payload BLOB NOT NULL,
            detail TEXT NOT NULL
        );
    """


@migration
def v4_share_thinning() -> str:
    """Thinning decisions of each upstream's sharing rules, so they survive reconnects and restarts."""
    return """
        -- One row per uplink an upstream's `thin_s` rule let through: (entry id, interval number).
        -- Rows at or below the upstream's cursor are pruned to the newest per device.
        CREATE TABLE share_thinning (
            sink TEXT NOT NULL,
            dev_eui TEXT NOT NULL,
            entry_id INTEGER NOT NULL,
            bucket INTEGER NOT NULL,
            PRIMARY KEY (sink, dev_eui, entry_id)
        ) WITHOUT ROWID;
    """


@migration
def v5_rewind_requests() -> str:
    """A pending `edge buffer rewind` per upstream, for the running sink to take up."""
    return """
        -- NULL, or what the upstream was rewound to (for the service's log line). While set, the
        -- sink's progress writes leave the (lowered) cursor alone, until the sink takes the request.
        ALTER TABLE sinks ADD COLUMN rewind TEXT;
    """


@migration
def v6_command_ids() -> str:
    """Ids of downlink commands an upstream sent, so a redelivered command is enqueued only once."""
    return """
        -- One row per command accepted from an upstream; rows older than the upstream's
        -- command_max_age_s (plus a margin) are pruned, since such commands are refused as stale anyway.
        CREATE TABLE command_ids (
            upstream TEXT NOT NULL,
            id TEXT NOT NULL,
            received REAL NOT NULL,
            PRIMARY KEY (upstream, id)
        ) WITHOUT ROWID;
        CREATE INDEX command_ids_received ON command_ids(received);
    """


@migration
def v7_device_health() -> str:
    """Sensor health (edge/health.py): each device's state, and health notices until every upstream has them."""
    return """
        CREATE TABLE device_health (
            dev_eui TEXT PRIMARY KEY,
            state TEXT NOT NULL,
            changed_at REAL NOT NULL,
            data BLOB NOT NULL          -- the whole DeviceHealth as JSON
        ) WITHOUT ROWID;
        CREATE TABLE health_notices (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            notice_id TEXT NOT NULL,    -- stable across re-sends: receivers drop repeats by it
            dev_eui TEXT NOT NULL,
            time REAL NOT NULL,
            body BLOB NOT NULL          -- the notice as JSON
        );
        CREATE TABLE health_sent (
            sink TEXT PRIMARY KEY,
            last_id INTEGER NOT NULL    -- every notice up to this id is delivered to this upstream
        ) WITHOUT ROWID;
    """


def _statements(script: str) -> list[str]:
    """The SQL statements of a migration script, split where SQLite itself says one ends."""
    out: list[str] = []
    current = ""
    for part in script.split(";"):
        current += part + ";"
        if sqlite3.complete_statement(current):
            if current.strip(" \t\r\n;"):
                out.append(current)
            current = ""
    if current.strip(" \t\r\n;"):
        out.append(current)
    return out


def _version(db: sqlite3.Connection) -> int:
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def migrate(db: sqlite3.Connection) -> int:
    """Bring the schema to the newest version; returns the version reached.

    Safe when several processes open an old file at once (`edge run` starting while an operator
    runs `edge devices sync`): the version is read again after the write lock is taken, so a step
    another process already applied is never run twice (which could set user_version back).
    """
    while True:
        version = _version(db)
        if version > len(MIGRATIONS):
            raise StorageError(f"buffer schema version {version} is newer than this lorawan-edge ({len(MIGRATIONS)})")
        if version == len(MIGRATIONS):
            return version
        # Not executescript: it commits any open transaction first, which would drop the lock.
        db.execute("BEGIN IMMEDIATE")
        try:
            if _version(db) != version:  # another connection migrated while we waited for the lock
                db.execute("ROLLBACK")
                continue
            for statement in _statements(MIGRATIONS[version]()):
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {version + 1}")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
