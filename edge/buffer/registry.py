"""SQLite cache of ChirpStack's applications, devices and device profiles, in the buffer's database file."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson

from edge.buffer.db import connect, immediate, reported
from edge.buffer.migrations import migrate
from edge.errors import StorageError

# The tables migration v2 (edge/buffer/migrations.py) makes; the `cs_` prefix keeps them apart
# from v1's `devices` table (last uplink per device).
_TABLES = ("cs_applications", "cs_devices", "cs_device_profiles")


# What the cache accepts: anything shaped like the API client's records. Protocols, because
# buffer must not import sources (STYLE.md §4); read-only properties match frozen dataclasses.
class ApplicationLike(Protocol):
    """An application as the API client returns it."""

    @property
    def id(self) -> str: ...
    @property
    def tenant_id(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def description(self) -> str: ...


class DeviceLike(Protocol):
    """A device as the API client returns it (None: not known)."""

    @property
    def dev_eui(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def description(self) -> str: ...
    @property
    def application_id(self) -> str: ...
    @property
    def profile_id(self) -> str: ...
    @property
    def tags(self) -> Mapping[str, str]: ...
    @property
    def variables(self) -> Mapping[str, str] | None: ...
    @property
    def is_disabled(self) -> bool | None: ...


class ProfileLike(Protocol):
    """A device profile as the API client returns it."""

    @property
    def id(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def codec_runtime(self) -> str: ...
    @property
    def codec_script(self) -> str: ...
    @property
    def tags(self) -> Mapping[str, str]: ...


@dataclass(frozen=True, slots=True)
class CachedApplication:
    """An application as last synced."""

    id: str
    tenant_id: str
    name: str
    description: str
    synced_at: float


@dataclass(frozen=True, slots=True)
class CachedDevice:
    """A device as last synced or fetched."""

    dev_eui: str
    name: str
    description: str
    application_id: str
    profile_id: str
    tags: dict[str, str]
    variables: dict[str, str]
    is_disabled: bool
    synced_at: float


@dataclass(frozen=True, slots=True)
class CachedProfile:
    """A device profile as last synced or fetched."""

    id: str
    name: str
    codec_runtime: str
    codec_script: str
    tags: dict[str, str]
    synced_at: float


def _json(value: Mapping[str, str] | None) -> str:
    return orjson.dumps(dict(value or {}), option=orjson.OPT_SORT_KEYS).decode()


def _app_row(a: ApplicationLike, now: float) -> tuple[Any, ...]:
    return (a.id, a.tenant_id, a.name, a.description, now)


def _device_row(d: DeviceLike, now: float) -> tuple[Any, ...]:
    return (d.dev_eui.lower(), d.name, d.description, d.application_id, d.profile_id, _json(d.tags),
            _json(d.variables), int(bool(d.is_disabled)), now)


def _profile_row(p: ProfileLike, now: float) -> tuple[Any, ...]:
    return (p.id, p.name, p.codec_runtime, p.codec_script, _json(p.tags), now)


_DEVICE_COLS = "dev_eui, name, description, application_id, profile_id, tags, variables, is_disabled, synced_at"
_PROFILE_COLS = "id, name, codec_runtime, codec_script, tags, synced_at"
_APP_COLS = "id, tenant_id, name, description, synced_at"


def _device(r: Sequence[Any]) -> CachedDevice:
    return CachedDevice(r[0], r[1], r[2], r[3], r[4], orjson.loads(r[5]), orjson.loads(r[6]), bool(r[7]), r[8])


def _profile(r: Sequence[Any]) -> CachedProfile:
    return CachedProfile(r[0], r[1], r[2], r[3], orjson.loads(r[4]), r[5])


class DeviceRegistry:
    """The device cache. One instance per thread, like `Buffer`.

    Reads never touch the network: the pipeline's hot path and `edge devices list` work while
    ChirpStack is away.
    """

    def __init__(self, path: str | Path, *, readonly: bool = False) -> None:
        """Open the cache in the buffer database, bringing its schema up to date (migrate) if writable.

        Args:
            path: the buffer database file.
            readonly: open read-only (CLI listing); a database without the tables reads as empty.

        Raises:
            StorageError: the file cannot be opened (or, read-only, does not exist).
        """
        self.path = Path(path)
        self.readonly = readonly
        if readonly and not self.path.exists():
            raise StorageError(f"no device cache at {self.path} yet (run `edge devices sync`)")
        if not readonly:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not self.path.exists():
                self.path.touch(mode=0o600)  # same as Buffer: the file holds the fleet's data
        try:
            # NORMAL, not FULL: a cache write lost on power failure is refetched by the next sync.
            self.db = connect(self.path, readonly=readonly, synchronous="NORMAL")
            if not readonly:
                migrate(self.db)  # v2 makes the tables
        except sqlite3.Error as exc:
            raise StorageError(f"{self.path}: {exc}") from exc
        self._ready = self._has_tables()

    def _has_tables(self) -> bool:
        # False only read-only, on a buffer from before migration v2 (nothing synced yet).
        q = f"SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN ({','.join('?' * len(_TABLES))})"
        return int(self.db.execute(q, _TABLES).fetchone()[0]) == len(_TABLES)

    def close(self) -> None:
        """Close the connection."""
        self.db.close()

    def _write(self, statements: Iterable[tuple[str, Sequence[tuple[Any, ...]]]]) -> None:
        with immediate(self.db) as db:
            for sql, rows in statements:
                db.executemany(sql, rows)

    def replace_all(self, applications: Sequence[ApplicationLike], devices: Sequence[DeviceLike],
                    profiles: Sequence[ProfileLike]) -> None:
        """Replace the whole cache with a sync's result, in one transaction.

        Args:
            applications: every application synced.
            devices: every device synced (complete records, from Get).
            profiles: every device profile the devices use.
        """
        now = time.time()
        self._write([
            *((f"DELETE FROM {t}", [()]) for t in _TABLES),
            (f"INSERT INTO cs_applications({_APP_COLS}) VALUES (?,?,?,?,?)",
             [_app_row(a, now) for a in applications]),
            (f"INSERT INTO cs_devices({_DEVICE_COLS}) VALUES (?,?,?,?,?,?,?,?,?)",
             [_device_row(d, now) for d in devices]),
            (f"INSERT INTO cs_device_profiles({_PROFILE_COLS}) VALUES (?,?,?,?,?,?)",
             [_profile_row(p, now) for p in profiles]),
        ])

    def upsert_device(self, device: DeviceLike, profile: ProfileLike | None = None,
                      application: ApplicationLike | None = None) -> None:
        """Add or update one device (and its profile and application), in one transaction.

        The path for a device seen in an uplink before the next sync: fetched once, cached.

        Args:
            device: the device as fetched.
            profile: its device profile, if fetched too.
            application: its application, if fetched too.
        """
        now = time.time()
        statements: list[tuple[str, Sequence[tuple[Any, ...]]]] = [
            (f"INSERT OR REPLACE INTO cs_devices({_DEVICE_COLS}) VALUES (?,?,?,?,?,?,?,?,?)",
             [_device_row(device, now)])]
        if profile is not None:
            statements.append((f"INSERT OR REPLACE INTO cs_device_profiles({_PROFILE_COLS}) VALUES (?,?,?,?,?,?)",
                               [_profile_row(profile, now)]))
        if application is not None:
            statements.append((f"INSERT OR REPLACE INTO cs_applications({_APP_COLS}) VALUES (?,?,?,?,?)",
                               [_app_row(application, now)]))
        self._write(statements)

    def get_device(self, dev_eui: str) -> CachedDevice | None:
        """The cached device, or None if it is not cached.

        Args:
            dev_eui: the DevEUI in hex (any case).

        Returns:
            The record or None.
        """
        if not self._ready:
            return None
        row = self.db.execute(f"SELECT {_DEVICE_COLS} FROM cs_devices WHERE dev_eui = ?",
                              (dev_eui.lower(),)).fetchone()
        return _device(row) if row else None

    def get_profile(self, profile_id: str) -> CachedProfile | None:
        """The cached device profile, or None.

        Args:
            profile_id: the profile's UUID.

        Returns:
            The record or None.
        """
        if not self._ready:
            return None
        row = self.db.execute(f"SELECT {_PROFILE_COLS} FROM cs_device_profiles WHERE id = ?",
                              (profile_id,)).fetchone()
        return _profile(row) if row else None

    def get_application(self, application_id: str) -> CachedApplication | None:
        """The cached application, or None.

        Args:
            application_id: the application's UUID.

        Returns:
            The record or None.
        """
        if not self._ready:
            return None
        row = self.db.execute(f"SELECT {_APP_COLS} FROM cs_applications WHERE id = ?",
                              (application_id,)).fetchone()
        return CachedApplication(*row) if row else None

    @reported
    def list_devices(self) -> list[CachedDevice]:
        """Every cached device, by DevEUI."""
        if not self._ready:
            return []
        return [_device(r) for r in self.db.execute(f"SELECT {_DEVICE_COLS} FROM cs_devices ORDER BY dev_eui")]

    @reported
    def list_profiles(self) -> list[CachedProfile]:
        """Every cached device profile, by id."""
        if not self._ready:
            return []
        return [_profile(r) for r in self.db.execute(f"SELECT {_PROFILE_COLS} FROM cs_device_profiles ORDER BY id")]

    @reported
    def list_applications(self) -> list[CachedApplication]:
        """Every cached application, by id."""
        if not self._ready:
            return []
        return [CachedApplication(*r) for r in self.db.execute(f"SELECT {_APP_COLS} FROM cs_applications ORDER BY id")]
