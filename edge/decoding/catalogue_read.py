"""Reads local clones of the TTN Device Repository and ChirpStack's device-profiles repository into index rows."""

from __future__ import annotations

import json
import subprocess
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.errors import ConfigError

TTN = "ttn"
CHIRPSTACK = "chirpstack"


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


class Rows:
    """What one repository holds, as rows of the index's tables (and the problems met reading it)."""

    def __init__(self) -> None:
        self.vendors: list[tuple[str, str]] = []
        self.devices: list[tuple[str, str, str, str, str]] = []
        self.firmware: list[tuple[str, str, str, int, str, str, str]] = []
        self.codecs: dict[str, Codec] = {}
        self.profiles: list[tuple[str, str, str, str, str]] = []
        self.problems: list[str] = []


def read_repository(root: Path) -> tuple[str, Path, Rows]:
    """Which catalogue a local clone is, its vendor folder, and its rows.

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
    rows = Rows()
    if catalogue == TTN:
        _read_ttn(vendors_dir, rows)
    else:
        _read_chirpstack(vendors_dir, rows)
    return catalogue, vendors_dir, rows


def read_revision(root: Path) -> str:
    """The clone's commit, if it is a git checkout (read locally; nothing is fetched)."""
    try:
        done = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def _read_text(path: Path) -> str:
    return path.read_text(encoding="utf-8-sig")


def _read_ttn(vendor_root: Path, rows: Rows) -> None:
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


def _ttn_codec(folder: Path, vendor_id: str, codec: str, rows: Rows) -> str:
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


def _toml(path: Path, rows: Rows) -> dict[str, Any]:
    try:
        return tomllib.loads(_read_text(path))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        rows.problems.append(f"{path}: {exc}")
        return {}


def _read_chirpstack(vendors_root: Path, rows: Rows) -> None:
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
