"""The codec catalogue index's SQLite file (`codecs.sqlite` beside the buffer): its schema, rows in and rows out."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path

# Row shapes, catalogue column left out where the caller gives it once (see replace_catalogue).
VendorRow = tuple[str, str]  # id, name
DeviceRow = tuple[str, str, str, str, str]  # vendor, id, name, description, uuid
FirmwareRow = tuple[str, str, str, int, str, str, str]  # vendor, device, version, position, region, profile, codec
CodecRow = tuple[str, str, str, str, str, str, str]  # key, catalogue, vendor, name, path, uplink, downlink script
ProfileRow = tuple[str, str, str, str, str]  # vendor, id, region, mac_version, template (JSON)

# The schema of every index file written so far: existing files must keep opening, so it only ever grows.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS imports (catalogue TEXT PRIMARY KEY, path TEXT NOT NULL, revision TEXT NOT NULL,
                                    imported_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS vendors (catalogue TEXT NOT NULL, id TEXT NOT NULL, name TEXT NOT NULL,
                                    PRIMARY KEY (catalogue, id));
CREATE TABLE IF NOT EXISTS devices (catalogue TEXT NOT NULL, vendor TEXT NOT NULL, id TEXT NOT NULL,
                                    name TEXT NOT NULL, description TEXT NOT NULL, uuid TEXT NOT NULL,
                                    PRIMARY KEY (catalogue, vendor, id));
CREATE TABLE IF NOT EXISTS firmware (catalogue TEXT NOT NULL, vendor TEXT NOT NULL, device TEXT NOT NULL,
                                     version TEXT NOT NULL, position INTEGER NOT NULL, region TEXT NOT NULL,
                                     profile TEXT NOT NULL, codec TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS codecs (key TEXT PRIMARY KEY, catalogue TEXT NOT NULL, vendor TEXT NOT NULL,
                                   name TEXT NOT NULL, path TEXT NOT NULL, uplink_script TEXT NOT NULL,
                                   downlink_script TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS profiles (catalogue TEXT NOT NULL, vendor TEXT NOT NULL, id TEXT NOT NULL,
                                     region TEXT NOT NULL, mac_version TEXT NOT NULL, template TEXT NOT NULL,
                                     PRIMARY KEY (catalogue, vendor, id));
"""


class CodecIndex:
    """One connection to an index file; what edge.decoding.catalogue.CatalogueIndex reads and writes through.

    Writable (what `edge codecs import` opens) creates the tables; read-only opens the file as it is.
    The connection may be used from any thread; the caller serialises its use.
    """

    def __init__(self, path: str | Path, *, readonly: bool = False) -> None:
        self.path = Path(path)
        if readonly:
            self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
        else:
            self._db = sqlite3.connect(self.path, check_same_thread=False)
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def replace_catalogue(self, catalogue: str, source: str, revision: str, imported_at: float, *,
                          vendors: Iterable[VendorRow], devices: Iterable[DeviceRow],
                          firmware: Iterable[FirmwareRow], codecs: Iterable[CodecRow],
                          profiles: Iterable[ProfileRow]) -> None:
        """Replace everything held from `catalogue` with these rows, and record the import, in one transaction."""
        with self._db:
            for table in ("vendors", "devices", "firmware", "codecs", "profiles"):
                self._db.execute(f"DELETE FROM {table} WHERE catalogue = ?", (catalogue,))
            self._db.executemany("INSERT OR REPLACE INTO vendors VALUES (?, ?, ?)",
                                 [(catalogue, *r) for r in vendors])
            self._db.executemany("INSERT OR REPLACE INTO devices VALUES (?, ?, ?, ?, ?, ?)",
                                 [(catalogue, *r) for r in devices])
            self._db.executemany("INSERT INTO firmware VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                 [(catalogue, *r) for r in firmware])
            self._db.executemany("INSERT OR REPLACE INTO codecs VALUES (?, ?, ?, ?, ?, ?, ?)", list(codecs))
            self._db.executemany("INSERT OR REPLACE INTO profiles VALUES (?, ?, ?, ?, ?, ?)",
                                 [(catalogue, *r) for r in profiles])
            self._db.execute("INSERT OR REPLACE INTO imports VALUES (?, ?, ?, ?)",
                             (catalogue, source, revision, imported_at))

    def codec(self, key: str) -> CodecRow | None:
        """The codec with this key, or None."""
        row: CodecRow | None = self._db.execute(
            "SELECT key, catalogue, vendor, name, path, uplink_script, downlink_script"
            " FROM codecs WHERE key = ?", (key,)).fetchone()
        return row

    def imports(self) -> list[tuple[str, str, str, float]]:
        """(catalogue, path, revision, imported_at) of every import, by catalogue."""
        return list(self._db.execute("SELECT catalogue, path, revision, imported_at FROM imports ORDER BY catalogue"))

    def counts(self, catalogue: str) -> dict[str, int]:
        """How many vendors, devices, codecs, profiles and (distinct) firmware versions a catalogue holds."""
        counts: dict[str, int] = {
            table: self._db.execute(f"SELECT COUNT(*) FROM {table} WHERE catalogue = ?", (catalogue,)).fetchone()[0]
            for table in ("vendors", "devices", "codecs", "profiles")}
        counts["firmware"] = self._db.execute(
            "SELECT COUNT(*) FROM (SELECT DISTINCT vendor, device, version FROM firmware WHERE catalogue = ?)",
            (catalogue,)).fetchone()[0]
        return counts

    def codec_rows(self, catalogue: str | None = None,
                   vendor: str | None = None) -> list[tuple[str, int, int, str | None]]:
        """(key, has uplink, has downlink, comma-joined names of the devices using it) of every codec, by key."""
        where, args = [], []
        if catalogue:
            where.append("c.catalogue = ?")
            args.append(catalogue)
        if vendor:
            where.append("c.vendor = ?")
            args.append(vendor)
        sql = ("SELECT c.key, c.uplink_script != '', c.downlink_script != '',"
               " (SELECT GROUP_CONCAT(DISTINCT d.name) FROM firmware f JOIN devices d ON d.catalogue = f.catalogue"
               "  AND d.vendor = f.vendor AND d.id = f.device WHERE f.codec = c.key)"
               " FROM codecs c" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY c.key")
        return list(self._db.execute(sql, args))

    def profile_templates(self, vendor: str | None = None) -> list[ProfileRow]:
        """ChirpStack's device-profile templates (of one vendor), by vendor and id."""
        sql = "SELECT vendor, id, region, mac_version, template FROM profiles"
        return list(self._db.execute(sql + (" WHERE vendor = ?" if vendor else "") + " ORDER BY vendor, id",
                                     (vendor,) if vendor else ()))

    def device_by_uuid(self, uuid: str) -> tuple[str, str] | None:
        """(vendor, name) of the catalogue device with this profile id, or None."""
        row: tuple[str, str] | None = self._db.execute(
            "SELECT vendor, name FROM devices WHERE uuid = ? AND uuid != ''", (uuid,)).fetchone()
        return row

    def newest_firmware(self, catalogue: str, vendor: str, device: str, firmware: str) -> tuple[str, str] | None:
        """(codec key, version) of a device's last-listed firmware with a codec (this version only, if given)."""
        args: tuple[str, ...] = (catalogue, vendor, device)
        sql = ("SELECT codec, version FROM firmware"
               " WHERE catalogue = ? AND vendor = ? AND device = ? AND codec != ''")
        if firmware:
            sql += " AND version = ?"
            args += (firmware,)
        row: tuple[str, str] | None = self._db.execute(sql + " ORDER BY position DESC LIMIT 1", args).fetchone()
        return row

    def device_names(self) -> list[tuple[str, str, str, str, str]]:
        """(catalogue, vendor id, device id, device name, vendor name) of every device."""
        return list(self._db.execute("SELECT d.catalogue, d.vendor, d.id, d.name, v.name FROM devices d JOIN vendors v"
                                     " ON v.catalogue = d.catalogue AND v.id = d.vendor"))


def open_existing(path: str | Path) -> CodecIndex | None:
    """The index at `path`, read-only, or None when there is none (nothing was imported) or it cannot be opened."""
    if not Path(path).exists():
        return None
    try:
        return CodecIndex(path, readonly=True)
    except sqlite3.Error:
        return None
