"""Applies one upstream's sharing rules to entries: which devices, which quantities, how coarse.

Pure apart from the device lookup it is given (application, profile, tags per DevEUI, read from
the buffer's device table). A filtered-out entry still counts as handled for that upstream, so
its cursor moves on: a record no rule lets through is simply never sent there.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from edge.config import ShareRules
from edge.model import Entry, Reading

DeviceLookup = Callable[[Iterable[str]], Mapping[str, Mapping[str, Any]]]


class ShareFilter:
    """Sharing rules as a function from entries to the entries (and readings) a destination gets."""

    def __init__(self, rules: ShareRules, lookup: DeviceLookup | None = None) -> None:
        self.rules = rules
        self.lookup = lookup
        self._rounding = dict(rules.round)
        self._kept: dict[str, tuple[int, str]] = {}  # dev_eui -> (thinning bucket, uplink id kept)
        self.transforms = bool(rules.quantities or rules.drop_quantities or rules.round)

    @property
    def active(self) -> bool:
        """False when the rules let everything through unchanged."""
        return self.rules.selects_devices or self.transforms or self.rules.thin_s > 0 or bool(self.rules.enrich)

    def apply(self, entries: Sequence[Entry]) -> list[Entry]:
        """The entries this destination may receive, with only the readings it may receive."""
        out = list(entries)
        meta: Mapping[str, Mapping[str, Any]] = {}
        if (self.rules.selects_devices or self.rules.enrich) and self.lookup is not None:
            meta = self.lookup({e.dev_eui for e in out})
        if self.rules.selects_devices:
            out = [e for e in out if self._device_allowed(e.dev_eui, meta.get(e.dev_eui))]
        if self.rules.thin_s > 0:
            out = [e for e in out if self._thin(e)]
        if self.transforms:
            out = [self._readings(e) for e in out]
        if self.rules.enrich:
            out = [self._enriched(e, meta.get(e.dev_eui)) for e in out]
        return out

    def allows_device(self, dev_eui: str) -> bool:
        """Whether this destination's rules cover a device (used to police its downlink commands)."""
        meta = self.lookup([dev_eui]) if self.lookup is not None else {}
        return self._device_allowed(dev_eui, meta.get(dev_eui))

    def _enriched(self, entry: Entry, meta: Mapping[str, Any] | None) -> Entry:
        if meta is None or not entry.has_readings:
            return entry
        extra: list[Reading] = []
        for item in self.rules.enrich:
            value = meta["tags"].get(item[4:]) if item.startswith("tag:") else meta.get(item)
            if value:
                name = "device-name" if item == "name" else item.replace(":", "-").replace("_", "-")
                extra.append(Reading(name, str(value)))
        if not extra:
            return entry
        return Entry(entry.id, entry.uplink_id, entry.dev_eui, entry.application_id, entry.gateway_id, entry.time,
                     [*entry.readings, *extra], entry.radio)

    def _device_allowed(self, dev_eui: str, meta: Mapping[str, Any] | None) -> bool:
        r = self.rules
        if r.devices and dev_eui not in r.devices:
            return False
        if meta is None:
            # Unknown device (never seen with metadata): only a DevEUI rule alone can admit it.
            return not (r.applications or r.device_profiles or r.tags)
        if r.applications and not set(r.applications) & meta["applications"]:
            return False
        if r.device_profiles and not set(r.device_profiles) & meta["device_profiles"]:
            return False
        tags = meta["tags"]
        return all(tags.get(k) == v for k, v in r.tags)

    def _thin(self, entry: Entry) -> bool:
        # Deterministic per bucket: a re-send of the uplink kept for a bucket is kept again, so a
        # reconnect never loses it; any other uplink of the same device and bucket is dropped.
        bucket = math.floor(entry.time / self.rules.thin_s)
        kept = self._kept.get(entry.dev_eui)
        if kept is None or bucket > kept[0]:
            self._kept[entry.dev_eui] = (bucket, entry.uplink_id)
            return True
        return kept == (bucket, entry.uplink_id)

    def _readings(self, entry: Entry) -> Entry:
        r = self.rules
        readings: list[Reading] = []
        for reading in entry.readings:
            if (r.quantities and reading.name not in r.quantities) or reading.name in r.drop_quantities:
                continue
            decimals = self._rounding.get(reading.name, self._rounding.get("*"))
            if decimals is not None and isinstance(reading.value, float | int) and not isinstance(reading.value, bool):
                reading = Reading(reading.name, round(reading.value, decimals), reading.unit)
            readings.append(reading)
        return Entry(entry.id, entry.uplink_id, entry.dev_eui, entry.application_id, entry.gateway_id, entry.time,
                     readings, entry.radio)
