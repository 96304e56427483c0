"""Applies one upstream's sharing rules to entries: which devices, which quantities, how coarse.

Pure apart from the device lookup and the thinning store it is given at construction (the
pipeline binds both to the sink's own buffer connection). A filtered-out entry still counts as
handled for that upstream, so its cursor moves on: a record no rule lets through is simply never
sent there. Filtered entries keep their stored radio records, and their stored readings when the
rules change none of them, so nothing is parsed and written again for nothing.

Thinning (`thin_s`) keeps an uplink when its interval, `floor(time / thin_s)`, is later than that
of the device's previous kept uplink, in buffer order; `time` is the event's own time, but never
later than 5 minutes after the local receive time (edge.model.control_time), so one uplink dated
2099 cannot suppress its device until 2099; only uplinks that still carry readings
after the quantity rules take part. The decision for an entry depends only on the decisions
before it, and those are stored per upstream: an uplink kept once is kept again when a reconnect
or a restart reads it again (at-least-once holds for what passes), and a restart does not let a
second uplink through for an interval already served.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from edge.config import ShareRules
from edge.model import TRUSTED_FUTURE_S, Entry, Reading, control_time

DeviceLookup = Callable[[Iterable[str]], Mapping[str, Mapping[str, Any]]]


# Units whose values are tiny numbers (CO2 420 ppm is 4.2e-4 "/", PM2.5 12 ug/m3 is 1.2e-8 kg/m3):
# rounding them to a few decimals would send zeros. The "*" rounding rule leaves them alone; a rule
# that names such a quantity applies as written.
_WILDCARD_SPARES = frozenset({"/", "kg/m3", "m3/s"})


class ThinStore(Protocol):
    """Where one upstream's thinning decisions are kept across reconnects and restarts."""

    def load(self, dev_euis: Iterable[str]) -> Mapping[str, Sequence[tuple[int, int]]]:
        """The stored decisions per device: (entry id, interval number) of kept uplinks, oldest first."""
        ...

    def save(self, redo_from: Mapping[str, int], kept: Sequence[tuple[str, int, int]]) -> int:
        """Replace each device's decisions from `redo_from[dev]` on, add `kept` (dev, entry id, interval);
        returns the upstream's durable cursor (decisions below it are no longer needed but the newest)."""
        ...

    def received(self, ids: Sequence[int]) -> Mapping[int, float]:
        """Local receive time of each entry id (thinning trusts the event time only near it)."""
        ...


class ShareFilter:
    """Sharing rules as a function from entries to the entries (and readings) a destination gets."""

    def __init__(self, rules: ShareRules, lookup: DeviceLookup | None = None, store: ThinStore | None = None) -> None:
        self.rules = rules
        self._lookup = lookup
        self._store = store
        self._rounding = dict(rules.round)
        # dev_eui -> (entry id, interval) of the uplinks kept since the upstream's cursor, plus the
        # newest one at or before it; loaded from `store` when a device is first seen.
        self._kept: dict[str, list[tuple[int, int]]] = {}
        self.transforms = bool(rules.quantities or rules.drop_quantities or rules.round)

    @property
    def active(self) -> bool:
        """False when the rules let everything through unchanged."""
        return self.rules.selects_devices or self.transforms or self.rules.thin_s > 0 or bool(self.rules.enrich)

    def apply(self, entries: Sequence[Entry]) -> list[Entry]:
        """The entries this destination may receive, with only the readings it may receive."""
        out = list(entries)
        meta: Mapping[str, Mapping[str, Any]] = {}
        if (self.rules.selects_devices or self.rules.enrich) and self._lookup is not None:
            meta = self._lookup({e.dev_eui for e in out})
        if self.rules.selects_devices:
            out = [e for e in out if self._device_allowed(e.dev_eui, meta.get(e.dev_eui))]
        if self.transforms:
            out = [self._readings(e) for e in out]
        if self.rules.thin_s > 0:
            out = self._thin(out)
        if self.rules.enrich:
            out = [self._enriched(e, meta.get(e.dev_eui)) for e in out]
        return out

    def allows_device(self, dev_eui: str) -> bool:
        """Whether this destination's rules cover a device (used to police its downlink commands)."""
        meta = self._lookup([dev_eui]) if self._lookup is not None else {}
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
        return _with_readings(entry, [*entry.readings, *extra])

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

    def _thin(self, entries: list[Entry]) -> list[Entry]:
        # Uplinks left without readings are not sent at a thinned rate (not even their radio data)
        # and claim no interval, so a status-only frame never displaces the next measurement.
        entries = [e for e in entries if e.has_readings]
        new = {e.dev_eui for e in entries} - self._kept.keys()
        if new:
            stored = self._store.load(new) if self._store is not None else {}
            for dev in new:
                self._kept[dev] = list(stored.get(dev, ()))
        out: list[Entry] = []
        redo_from: dict[str, int] = {}
        kept: list[tuple[str, int, int]] = []
        received: Mapping[int, float] = {}
        if entries and self._store is not None and hasattr(self._store, "received"):
            received = self._store.received([e.id for e in entries])
        # Without receive times (no store), at least the future is cut at now + 5 min.
        ceiling = time.time() + TRUSTED_FUTURE_S
        for e in entries:
            history = self._kept[e.dev_eui]
            if history and history[-1][0] >= e.id:
                # Read again (a reconnect or restart resumes at the cursor): decide anew from the
                # decisions before this entry, which gives the same answer as the first time.
                while history and history[-1][0] >= e.id:
                    history.pop()
                redo_from[e.dev_eui] = min(e.id, redo_from.get(e.dev_eui, e.id))
            at = received.get(e.id)
            when = control_time(e.time, at) if at is not None else min(e.time, ceiling)
            bucket = math.floor(when / self.rules.thin_s)
            if history and bucket <= history[-1][1]:
                continue
            history.append((e.id, bucket))
            kept.append((e.dev_eui, e.id, bucket))
            out.append(e)
        if (redo_from or kept) and self._store is not None:
            cursor = self._store.save(redo_from, kept)
            for dev in {*redo_from, *(k[0] for k in kept)}:
                history = self._kept[dev]
                done = sum(1 for i, _ in history if i <= cursor)
                if done > 1:
                    del history[:done - 1]
        return out

    def _readings(self, entry: Entry) -> Entry:
        r = self.rules
        readings: list[Reading] = []
        changed = False
        for reading in entry.readings:
            if (r.quantities and reading.name not in r.quantities) or reading.name in r.drop_quantities:
                changed = True
                continue
            decimals = self._rounding.get(reading.name)
            if decimals is None and reading.unit not in _WILDCARD_SPARES:
                decimals = self._rounding.get("*")
            if decimals is not None and isinstance(reading.value, float | int) and not isinstance(reading.value, bool):
                rounded = round(reading.value, decimals)
                if rounded != reading.value:
                    # A history sample keeps its own time (and its source field) when rounded.
                    reading = Reading(reading.name, rounded, reading.unit, reading.field, reading.time)
                    changed = True
            readings.append(reading)
        # Unchanged, the entry goes on with its stored records (formatted without writing them anew).
        return _with_readings(entry, readings) if changed else entry


def _with_readings(entry: Entry, readings: list[Reading]) -> Entry:
    """`entry` with other readings; its radio records stay as stored (never parsed and written again)."""
    return Entry(entry.id, entry.uplink_id, entry.dev_eui, entry.application_id, entry.gateway_id, entry.time,
                 readings, radio_blob=entry.radio_json)
