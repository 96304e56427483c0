"""The codec catalogue index: what `edge codecs import` read from local clones of the TTN and ChirpStack repos."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from edge.decoding.catalogue_read import CHIRPSTACK, TTN, Codec, read_repository, read_revision

INDEX_NAME = "codecs.sqlite"
CATALOGUES = (TTN, CHIRPSTACK)
# The device or device-profile tag that names a catalogue codec outright, e.g. codec = "ttn:elsys/elsys".
CODEC_TAG = "codec"
# Profile tags that name the catalogue device a profile was made for (e.g. by a provisioning tool).
VENDOR_TAGS = ("vendor", "vendor_id")
DEVICE_TAGS = ("device", "device_id", "model")
FIRMWARE_TAG = "firmware"
KEY_RE = re.compile(r"^(ttn|chirpstack):([^/\s]+)/([^/\s]+)$")


def index_path(buffer_path: str | Path) -> Path:
    """Where the index lives: `codecs.sqlite` in the buffer's folder."""
    return Path(buffer_path).parent / INDEX_NAME


class CatalogueStore(Protocol):
    """The index's storage, as CatalogueIndex uses it (edge.buffer.codec_index.CodecIndex is the real one).

    Rows are plain tuples in the index's column order; see that module for what each query returns.
    """

    @property
    def path(self) -> Path:
        """The index file."""

    def close(self) -> None:
        """Close the storage."""

    def replace_catalogue(self, catalogue: str, source: str, revision: str, imported_at: float, *,
                          vendors: Iterable[tuple[str, str]], devices: Iterable[tuple[str, str, str, str, str]],
                          firmware: Iterable[tuple[str, str, str, int, str, str, str]],
                          codecs: Iterable[tuple[str, str, str, str, str, str, str]],
                          profiles: Iterable[tuple[str, str, str, str, str]]) -> None:
        """Replace one catalogue's rows and record its import, all or nothing."""

    def codec(self, key: str) -> tuple[str, str, str, str, str, str, str] | None:
        """The codec row with this key."""

    def imports(self) -> list[tuple[str, str, str, float]]:
        """(catalogue, path, revision, imported_at) of every import."""

    def counts(self, catalogue: str) -> dict[str, int]:
        """Rows per table of one catalogue (firmware: distinct versions)."""

    def codec_rows(self, catalogue: str | None = None,
                   vendor: str | None = None) -> list[tuple[str, int, int, str | None]]:
        """(key, has uplink, has downlink, comma-joined device names) per codec."""

    def profile_templates(self, vendor: str | None = None) -> list[tuple[str, str, str, str, str]]:
        """(vendor, id, region, mac_version, template JSON) per profile template."""

    def device_by_uuid(self, uuid: str) -> tuple[str, str] | None:
        """(vendor, name) of the device with this profile id."""

    def newest_firmware(self, catalogue: str, vendor: str, device: str, firmware: str) -> tuple[str, str] | None:
        """(codec key, version) of the device's last-listed firmware with a codec."""

    def device_names(self) -> list[tuple[str, str, str, str, str]]:
        """(catalogue, vendor id, device id, device name, vendor name) per device."""


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
    """The index of imported catalogues, over its storage. Reads are cheap; the matching tables are built once."""

    def __init__(self, store: CatalogueStore) -> None:
        self._store = store
        self.path = store.path
        self._names: dict[str, list[tuple[str, str, str]]] | None = None
        # The pipeline asks per uplink: answers are remembered (bounded), the connection is shared.
        self._memo: dict[tuple[Any, ...], Match | None] = {}
        self._lock = threading.RLock()

    def close(self) -> None:
        """Close the database."""
        self._store.close()

    # -- import ----------------------------------------------------------------------------------

    def import_path(self, root: Path) -> ImportSummary:
        """Read a local clone of either repository into the index, replacing that catalogue's rows.

        Raises:
            ConfigError: `root` is neither repository (nor its vendor/ or vendors/ folder).
        """
        catalogue, vendors_dir, rows = read_repository(root)
        revision = read_revision(vendors_dir.parent)
        self._store.replace_catalogue(
            catalogue, str(vendors_dir.parent), revision, time.time(), vendors=rows.vendors, devices=rows.devices,
            firmware=rows.firmware, profiles=rows.profiles,
            codecs=[(c.key, c.catalogue, c.vendor, c.name, c.path, c.uplink_script, c.downlink_script)
                    for c in rows.codecs.values()])
        self._names = None
        self._memo.clear()
        return ImportSummary(catalogue, str(vendors_dir.parent), revision, len(rows.vendors), len(rows.devices),
                             len({(r[0], r[1], r[2]) for r in rows.firmware}), len(rows.codecs), len(rows.profiles),
                             tuple(rows.problems))

    # -- queries ---------------------------------------------------------------------------------

    def codec(self, key: str) -> Codec | None:
        """The codec with this key, or None."""
        with self._lock:
            row = self._store.codec(key)
        return Codec(*row) if row else None

    def imports(self) -> list[dict[str, Any]]:
        """One row per imported catalogue, with counts."""
        return [{"catalogue": catalogue, "path": path, "revision": revision, "imported_at": when,
                 **self._store.counts(catalogue)}
                for catalogue, path, revision, when in self._store.imports()]

    def codec_rows(self, catalogue: str | None = None, vendor: str | None = None) -> list[dict[str, Any]]:
        """Every codec (optionally of one catalogue or vendor) with what it can do and the devices using it."""
        return [{"key": key, "uplink": bool(up), "downlink": bool(down),
                 "devices": sorted(set((names or "").split(","))) if names else []}
                for key, up, down, names in self._store.codec_rows(catalogue, vendor)]

    def profile_templates(self, vendor: str | None = None) -> list[dict[str, Any]]:
        """ChirpStack's device-profile templates: vendor, id (file stem), region, MAC version, the template."""
        return [{"vendor": v, "id": i, "region": r, "mac_version": m, "template": json.loads(t)}
                for v, i, r, m, t in self._store.profile_templates(vendor)]

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
            row = self._store.device_by_uuid(profile_id)
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
            row = self._store.newest_firmware(catalogue, vendor, device, firmware)
            if row:
                book = "TTN Device Repository" if catalogue == TTN else "ChirpStack device-profiles"
                return row[0], f"{book} device ({vendor}/{device}, firmware {row[1]}) with codec {row[0]}"
        return None

    def _name_table(self) -> dict[str, list[tuple[str, str, str]]]:
        table: dict[str, list[tuple[str, str, str]]] = {}
        for catalogue, vendor, device, name, vendor_name in self._store.device_names():
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


def is_key(text: str) -> bool:
    """True for a catalogue codec key, `<ttn|chirpstack>:<vendor>/<codec>`."""
    return bool(KEY_RE.match(text.strip()))
