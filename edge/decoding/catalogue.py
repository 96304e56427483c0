"""The codec catalogue index: what `edge codecs import` read from local clones of the TTN and ChirpStack repos."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import threading
import time
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.errors import ConfigError

INDEX_NAME = "codecs.sqlite"
TTN = "ttn"
CHIRPSTACK = "chirpstack"
CATALOGUES = (TTN, CHIRPSTACK)
# The device or device-profile tag that names a catalogue codec outright, e.g. codec = "ttn:elsys/elsys".
CODEC_TAG = "codec"
# Profile tags that name the catalogue device a profile was made for (e.g. by a provisioning tool).
VENDOR_TAGS = ("vendor", "vendor_id")
DEVICE_TAGS = ("device", "device_id", "model")
FIRMWARE_TAG = "firmware"
KEY_RE = re.compile(r"^(ttn|chirpstack):([^/\s]+)/([^/\s]+)$")

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


def index_path(buffer_path: str | Path) -> Path:
    """Where the index lives: `codecs.sqlite` in the buffer's folder."""
    return Path(buffer_path).parent / INDEX_NAME


@dataclass(frozen=True, slots=True)
class Codec:
    """One codec in the index; `key` is `<catalogue>:<vendor folder>/<codec name>`."""

    key: str
    catalogue: str
    vendor: str
    name: str
    path: str
    uplink_script: str
    downlink_script: str


@dataclass(frozen=True, slots=True)
class ImportSummary:
    """What one import read."""

    catalogue: str
    path: str
    revision: str
    vendors: int
    devices: int
    firmware: int
    codecs: int
    profiles: int
    problems: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Match:
    """A catalogue codec chosen for a device profile, and the sentence that says why."""

    key: str
    why: str


def _words(text: str) -> str:
    """A name reduced for matching: lowercase alphanumeric words joined by single spaces."""
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


class CatalogueIndex:
    """The SQLite index of imported catalogues. Reads are cheap; the matching tables are built once."""

    def __init__(self, path: str | Path, *, readonly: bool = False) -> None:
        self.path = Path(path)
        if readonly:
            self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
        else:
            self._db = sqlite3.connect(self.path, check_same_thread=False)
            self._db.executescript(_SCHEMA)
        self._names: dict[str, list[tuple[str, str, str]]] | None = None
        # The pipeline asks per uplink: answers are remembered (bounded), the connection is shared.
        self._memo: dict[tuple[Any, ...], Match | None] = {}
        self._lock = threading.RLock()

    @classmethod
    def open_for(cls, buffer_path: str | Path) -> CatalogueIndex | None:
        """The index next to this buffer, read-only, or None if nothing was imported."""
        path = index_path(buffer_path)
        if not path.exists():
            return None
        try:
            return cls(path, readonly=True)
        except sqlite3.Error:
            return None

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    # -- import ----------------------------------------------------------------------------------

    def import_path(self, root: Path) -> ImportSummary:
        """Read a local clone of either repository into the index, replacing that catalogue's rows.

        Raises:
            ConfigError: `root` is neither repository (nor its vendor/ or vendors/ folder).
        """
        root = root.resolve()
        if (root / "vendor" / "index.yaml").is_file():
            catalogue, vendors_dir = TTN, root / "vendor"
        elif root.name == "vendor" and (root / "index.yaml").is_file():
            catalogue, vendors_dir = TTN, root
        elif (root / "vendors").is_dir():
            catalogue, vendors_dir = CHIRPSTACK, root / "vendors"
        elif root.name == "vendors" and root.is_dir():
            catalogue, vendors_dir = CHIRPSTACK, root
        else:
            raise ConfigError([f"{root}: neither the TTN device repository (vendor/index.yaml) nor ChirpStack's"
                               " device-profiles repository (vendors/)"])
        rows = _Rows()
        if catalogue == TTN:
            _read_ttn(vendors_dir, rows)
        else:
            _read_chirpstack(vendors_dir, rows)
        revision = _revision(vendors_dir.parent)
        with self._db:
            for table in ("vendors", "devices", "firmware", "codecs", "profiles"):
                self._db.execute(f"DELETE FROM {table} WHERE catalogue = ?", (catalogue,))
            self._db.executemany("INSERT OR REPLACE INTO vendors VALUES (?, ?, ?)",
                                 [(catalogue, *r) for r in rows.vendors])
            self._db.executemany("INSERT OR REPLACE INTO devices VALUES (?, ?, ?, ?, ?, ?)",
                                 [(catalogue, *r) for r in rows.devices])
            self._db.executemany("INSERT INTO firmware VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                 [(catalogue, *r) for r in rows.firmware])
            self._db.executemany("INSERT OR REPLACE INTO codecs VALUES (?, ?, ?, ?, ?, ?, ?)",
                                 [(c.key, c.catalogue, c.vendor, c.name, c.path, c.uplink_script, c.downlink_script)
                                  for c in rows.codecs.values()])
            self._db.executemany("INSERT OR REPLACE INTO profiles VALUES (?, ?, ?, ?, ?, ?)",
                                 [(catalogue, *r) for r in rows.profiles])
            self._db.execute("INSERT OR REPLACE INTO imports VALUES (?, ?, ?, ?)",
                             (catalogue, str(vendors_dir.parent), revision, time.time()))
        self._names = None
        self._memo.clear()
        return ImportSummary(catalogue, str(vendors_dir.parent), revision, len(rows.vendors), len(rows.devices),
                             len({(r[0], r[1], r[2]) for r in rows.firmware}), len(rows.codecs), len(rows.profiles),
                             tuple(rows.problems))

    # -- queries ---------------------------------------------------------------------------------

    def codec(self, key: str) -> Codec | None:
        """The codec with this key, or None."""
        with self._lock:
            row = self._db.execute("SELECT key, catalogue, vendor, name, path, uplink_script, downlink_script"
                                   " FROM codecs WHERE key = ?", (key,)).fetchone()
        return Codec(*row) if row else None

    def imports(self) -> list[dict[str, Any]]:
        """One row per imported catalogue, with counts."""
        out = []
        for catalogue, path, revision, when in self._db.execute(
                "SELECT catalogue, path, revision, imported_at FROM imports ORDER BY catalogue"):
            counts = {table: self._db.execute(f"SELECT COUNT(*) FROM {table} WHERE catalogue = ?",
                                              (catalogue,)).fetchone()[0]
                      for table in ("vendors", "devices", "codecs", "profiles")}
            counts["firmware"] = self._db.execute(
                "SELECT COUNT(*) FROM (SELECT DISTINCT vendor, device, version FROM firmware WHERE catalogue = ?)",
                (catalogue,)).fetchone()[0]
            out.append({"catalogue": catalogue, "path": path, "revision": revision, "imported_at": when, **counts})
        return out

    def codec_rows(self, catalogue: str | None = None, vendor: str | None = None) -> list[dict[str, Any]]:
        """Every codec (optionally of one catalogue or vendor) with what it can do and the devices using it."""
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
        return [{"key": key, "uplink": bool(up), "downlink": bool(down),
                 "devices": sorted(set((names or "").split(","))) if names else []}
                for key, up, down, names in self._db.execute(sql, args)]

    def profile_templates(self, vendor: str | None = None) -> list[dict[str, Any]]:
        """ChirpStack's device-profile templates: vendor, id (file stem), region, MAC version, the template."""
        sql = "SELECT vendor, id, region, mac_version, template FROM profiles"
        rows = self._db.execute(sql + (" WHERE vendor = ?" if vendor else "") + " ORDER BY vendor, id",
                                (vendor,) if vendor else ())
        return [{"vendor": v, "id": i, "region": r, "mac_version": m, "template": json.loads(t)}
                for v, i, r, m, t in rows]

    def match(self, profile_name: str, profile_id: str = "", device_tags: Mapping[str, str] | None = None,
              profile_tags: Mapping[str, str] | None = None) -> Match | None:
        """The catalogue codec for a device whose ChirpStack profile came from a catalogue, or None.

        Order: a `codec` tag on the device, then on the profile (even a key the index lacks, so the
        uplink fails loudly rather than silently going elsewhere); the profile's vendor/device tags;
        then the profile's name (or id), which ChirpStack's templates make "<Vendor> <Device> ..."
        (a region or firmware after it is ignored). Of several firmware versions the newest listed
        wins unless a `firmware` tag names one; a name both catalogues know picks ChirpStack's.
        """
        device_tags = device_tags or {}
        profile_tags = profile_tags or {}
        memo_key = (profile_name, profile_id, tuple(sorted(device_tags.items())), tuple(sorted(profile_tags.items())))
        if memo_key in self._memo:
            return self._memo[memo_key]
        with self._lock:
            found = self._match(profile_name, profile_id, device_tags, profile_tags)
        if len(self._memo) > 4096:
            self._memo.clear()
        self._memo[memo_key] = found
        return found

    def _match(self, profile_name: str, profile_id: str, device_tags: Mapping[str, str],
               profile_tags: Mapping[str, str]) -> Match | None:
        for where, tags in (("The device has", device_tags), ("Its device profile has", profile_tags)):
            key = tags.get(CODEC_TAG, "").strip()
            if is_key(key):
                held = "" if self.codec(key) else f" (the codec index at {self.path} does not hold it)"
                return Match(key, f"{where} the tag {CODEC_TAG}={key}{held}.")
        firmware = profile_tags.get(FIRMWARE_TAG, "") or device_tags.get(FIRMWARE_TAG, "")
        vendor = next((profile_tags[t] for t in VENDOR_TAGS if profile_tags.get(t)), "")
        device = next((profile_tags[t] for t in DEVICE_TAGS if profile_tags.get(t)), "")
        if vendor and device:
            found = self._by_name(f"{_words(vendor)} {_words(device)}", firmware)
            if found:
                return Match(found[0], f"Its device profile's tags name {vendor} {device}, a {found[1]}.")
        if profile_id:
            row = self._db.execute("SELECT vendor, name FROM devices WHERE uuid = ? AND uuid != ''",
                                   (profile_id,)).fetchone()
            found = self._by_name(f"{_words(row[0])} {_words(row[1])}", firmware) if row else None
            if found:
                return Match(found[0], f"Its device profile's id {profile_id} is that of a {found[1]}.")
        for label, text in (("name", profile_name), ("id", profile_id)):
            words = _words(text).split()
            for end in range(len(words), 1, -1):
                found = self._by_name(" ".join(words[:end]), firmware)
                if found:
                    return Match(found[0], f"Its device profile's {label} {text!r} names a {found[1]}.")
        return None

    def _by_name(self, words: str, firmware: str) -> tuple[str, str] | None:
        """(codec key, description) of the catalogue device named `words` ("<vendor> <device>")."""
        if self._names is None:
            self._names = self._name_table()
        for catalogue, vendor, device in self._names.get(words, []):
            args: tuple[str, ...] = (catalogue, vendor, device)
            sql = ("SELECT codec, version FROM firmware"
                   " WHERE catalogue = ? AND vendor = ? AND device = ? AND codec != ''")
            if firmware:
                sql += " AND version = ?"
                args += (firmware,)
            row = self._db.execute(sql + " ORDER BY position DESC LIMIT 1", args).fetchone()
            if row:
                book = "TTN Device Repository" if catalogue == TTN else "ChirpStack device-profiles"
                return row[0], f"{book} device ({vendor}/{device}, firmware {row[1]}) with codec {row[0]}"
        return None

    def _name_table(self) -> dict[str, list[tuple[str, str, str]]]:
        table: dict[str, list[tuple[str, str, str]]] = {}
        rows = self._db.execute("SELECT d.catalogue, d.vendor, d.id, d.name, v.name FROM devices d JOIN vendors v"
                                " ON v.catalogue = d.catalogue AND v.id = d.vendor")
        for catalogue, vendor, device, name, vendor_name in rows:
            vendor_forms = {_words(vendor), _words(vendor_name)} - {""}
            for device_words in {_words(device), _words(name)} - {""}:
                forms = {f"{v} {device_words}" for v in vendor_forms}
                if any(device_words.startswith(v + " ") for v in vendor_forms):
                    forms.add(device_words)  # "Milesight AM307" already says its vendor
                for form in forms:
                    if (catalogue, vendor, device) not in table.get(form, []):
                        table.setdefault(form, []).append((catalogue, vendor, device))
        for entries in table.values():
            # ChirpStack's own catalogue first: its profile templates are what ChirpStack shows.
            entries.sort(key=lambda e: (e[0] != CHIRPSTACK, e[1], e[2]))
        return table


# -- reading the repositories ----------------------------------------------------------------


class _Rows:
    def __init__(self) -> None:
        self.vendors: list[tuple[str, str]] = []
        self.devices: list[tuple[str, str, str, str, str]] = []
        self.firmware: list[tuple[str, str, str, int, str, str, str]] = []
        self.codecs: dict[str, Codec] = {}
        self.profiles: list[tuple[str, str, str, str, str]] = []
        self.problems: list[str] = []


def _revision(root: Path) -> str:
    """The clone's commit, if it is a git checkout (read locally; nothing is fetched)."""
    try:
        done = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def _read_text(path: Path) -> str:
    return path.read_text(encoding="utf-8-sig")


def _read_ttn(vendor_root: Path, rows: _Rows) -> None:
    """The TTN repository as its validator walks it: index → vendors → devices → firmware → codecs."""
    # Imported here: `edge run` opens the index but never parses YAML, so it does not load the parser.
    from edge.decoding.examples import read_yaml

    doc = read_yaml(vendor_root / "index.yaml")
    for entry in doc.get("vendors") or []:
        if not isinstance(entry, Mapping) or not entry.get("id"):
            continue
        vendor_id = str(entry["id"])
        folder = vendor_root / vendor_id
        if not (folder / "index.yaml").is_file():
            continue  # vendors without devices are listed for their vendor id only
        rows.vendors.append((vendor_id, str(entry.get("name") or vendor_id)))
        try:
            devices = read_yaml(folder / "index.yaml").get("endDevices") or []
        except ConfigError as exc:
            rows.problems.extend(exc.problems)
            continue
        for device_id in map(str, devices):
            try:
                device = read_yaml(folder / f"{device_id}.yaml")
            except ConfigError as exc:
                rows.problems.extend(exc.problems)
                continue
            rows.devices.append((vendor_id, device_id, str(device.get("name") or device_id),
                                 str(device.get("description") or ""), ""))
            for position, version in enumerate(device.get("firmwareVersions") or []):
                if not isinstance(version, Mapping):
                    continue
                profiles = version.get("profiles")
                for region, profile in (profiles.items() if isinstance(profiles, Mapping) else []):
                    if not isinstance(profile, Mapping):
                        continue
                    codec = str(profile.get("codec") or "")
                    key = _ttn_codec(folder, vendor_id, codec, rows) if codec else ""
                    rows.firmware.append((vendor_id, device_id, str(version.get("version", "")), position,
                                          str(region), str(profile.get("id") or ""), key))


def _ttn_codec(folder: Path, vendor_id: str, codec: str, rows: _Rows) -> str:
    """Index one TTN codec YAML (once) and return its key; '' if it cannot be read."""
    key = f"{TTN}:{vendor_id}/{codec}"
    if key in rows.codecs:
        return key
    from edge.decoding.js.codec import codec_script

    path = folder / f"{codec}.yaml"
    scripts = {}
    for section in ("uplinkDecoder", "downlinkEncoder"):
        try:
            scripts[section] = codec_script(path, section)[1]
        except ConfigError as exc:
            scripts[section] = ""
            if section == "uplinkDecoder" or "fileName is missing" not in exc.problems[0]:
                rows.problems.extend(p for p in exc.problems if "fileName is missing" not in p)
    if not scripts["uplinkDecoder"] and not scripts["downlinkEncoder"]:
        return ""
    rows.codecs[key] = Codec(key, TTN, vendor_id, codec, str(path), scripts["uplinkDecoder"],
                             scripts["downlinkEncoder"])
    return key


def _toml(path: Path, rows: _Rows) -> dict[str, Any]:
    try:
        return tomllib.loads(_read_text(path))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        rows.problems.append(f"{path}: {exc}")
        return {}


def _read_chirpstack(vendors_root: Path, rows: _Rows) -> None:
    """ChirpStack's device-profiles repository: vendors/<v>/{vendor.toml, codecs, devices, profiles}."""
    for folder in sorted(p for p in vendors_root.iterdir() if p.is_dir()):
        vendor_id = folder.name
        vendor = _toml(folder / "vendor.toml", rows).get("vendor", {}) if (folder / "vendor.toml").is_file() else {}
        rows.vendors.append((vendor_id, str(vendor.get("name") or vendor_id)))
        regions: dict[str, str] = {}
        for path in sorted((folder / "profiles").glob("*.toml")):
            profile = _toml(path, rows).get("profile", {})
            regions[path.name] = str(profile.get("region", ""))
            rows.profiles.append((vendor_id, path.stem, regions[path.name], str(profile.get("mac_version", "")),
                                  json.dumps(profile, sort_keys=True, default=str)))
        for path in sorted((folder / "codecs").glob("*.js")):
            key = f"{CHIRPSTACK}:{vendor_id}/{path.stem}"
            try:
                source = _read_text(path)
            except (OSError, UnicodeDecodeError) as exc:
                rows.problems.append(f"{path}: {exc}")
                continue
            # One script holds both functions in ChirpStack's format.
            rows.codecs[key] = Codec(key, CHIRPSTACK, vendor_id, path.stem, str(path),
                                     source if "decodeUplink" in source else "",
                                     source if "encodeDownlink" in source else "")
        # Every devices/*.toml, as ChirpStack's own tooling reads them (vendor.toml's list may lag).
        for path in sorted((folder / "devices").glob("*.toml")):
            device = _toml(path, rows).get("device", {}) if path.is_file() else {}
            if not device:
                continue
            rows.devices.append((vendor_id, path.stem, str(device.get("name") or path.stem),
                                 str(device.get("description") or ""), str(device.get("id") or "")))
            for position, fw in enumerate(device.get("firmware") or []):
                codec = str(fw.get("codec") or "")
                key = f"{CHIRPSTACK}:{vendor_id}/{Path(codec).stem}" if codec else ""
                if key and key not in rows.codecs:
                    rows.problems.append(f"{path}: firmware {fw.get('version')} names codec {codec}, not in codecs/")
                for profile in fw.get("profiles") or [""]:
                    rows.firmware.append((vendor_id, path.stem, str(fw.get("version", "")), position,
                                          regions.get(str(profile), ""), Path(str(profile)).stem, key))


def is_key(text: str) -> bool:
    """True for a catalogue codec key, `<ttn|chirpstack>:<vendor>/<codec>`."""
    return bool(KEY_RE.match(text.strip()))
