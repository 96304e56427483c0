"""Sensor health: which devices are silent, lossy, low on battery or stuck, learned incrementally from their uplinks.

Everything is computed on the hot path in O(1) per uplink from a small per-device state (no query
over history): the expected interval is the median of the last per-frame intervals (the time
between two uplinks divided by the frame counter's step, so lost frames and jitter do not skew it,
and retransmissions of one frame count once); losses are frame counter gaps, told apart from a
counter reset after a rejoin (the counter going backwards). Silence is judged by a periodic check
against the local receive time, never the device's or ChirpStack's clock (issue #11). A notice is
made when a device's state or problems change; `edge.buffer.health` stores states and notices in one
transaction, so each change is reported exactly once, across restarts.
"""

from __future__ import annotations

import math
import statistics
import threading
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from edge.config import HealthConfig
from edge.model import Reading
from edge.vocabulary import BY_NAME

OK, SILENT, NEVER_SEEN = "ok", "silent", "never-seen"
STATES = (OK, SILENT, NEVER_SEEN)
PROBLEMS = ("low-battery", "lossy", "stuck", "out-of-range")  # a problem is "<kind>" or "<kind>:<reading>"
INTERVALS_KEPT = 16
GATEWAYS_KEPT = 8
# Quantities that a working sensor never reports unchanged for long; counters and states may rest.
VARYING = frozenset({
    "temperature", "temperature-external", "temperature-soil", "temperature-water", "humidity", "humidity-external",
    "co2", "pressure", "tvoc", "pm1", "pm2.5", "pm4", "pm10", "sound-level", "sound-level-peak", "dew-point",
})
_FAST, _SLOW = 0.3, 0.05  # EWMA weights of the radio trend: recent vs long-run


@dataclass(slots=True)
class DeviceHealth:
    """One device's health state (persisted as JSON; every field is plain data)."""

    dev_eui: str
    profile: str = ""
    application: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    state: str = OK
    problems: list[str] = field(default_factory=list)
    changed_at: float = 0.0
    first_seen: float | None = None
    last_seen: float | None = None
    last_fcnt: int | None = None
    uplinks: int = 0
    lost: int = 0
    resets: int = 0
    intervals: list[float] = field(default_factory=list)
    window: list[int] = field(default_factory=list)  # lost frames before each of the last uplinks
    rssi_fast: float | None = None
    rssi_slow: float | None = None
    snr_fast: float | None = None
    snr_slow: float | None = None
    gateways: dict[str, int] = field(default_factory=dict)
    battery: float | None = None
    battery_voltage: float | None = None
    same: dict[str, list[Any]] = field(default_factory=dict)  # reading -> [value, uplinks in a row]
    out_of_range: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Plain data for storage."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DeviceHealth:
        """The inverse of as_dict (unknown keys from other versions are ignored)."""
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True, slots=True)
class Notice:
    """A change of a device's health, as sent upstream and stored until every upstream has it."""

    id: str
    dev_eui: str
    time: float
    state: str
    problems: tuple[str, ...]
    previous: str
    summary: dict[str, Any]


def _ewma(old: float | None, value: float, weight: float) -> float:
    return value if old is None else old + weight * (value - old)


class HealthTracker:
    """Per-device health for the whole gateway; thread-safe (the source observes, a timer checks)."""

    def __init__(self, cfg: HealthConfig, devices: Mapping[str, DeviceHealth] | None = None) -> None:
        self.cfg = cfg
        self.devices: dict[str, DeviceHealth] = dict(devices or {})
        self.dirty: set[str] = set()
        self.pending: list[Notice] = []
        self.lock = threading.Lock()

    # -- per uplink (the source thread) ----------------------------------------------------------

    def observe(self, dev_eui: str, received: float, fcnt: int | None, readings: Sequence[Reading], *,
                rssi: float | None = None, snr: float | None = None, gateway_id: str | None = None,
                profile: str = "", application: str = "", tags: Mapping[str, str] | None = None) -> None:
        """Take one committed uplink into its device's state (O(1); notices when the state changes)."""
        with self.lock:
            dev = self.devices.get(dev_eui)
            if dev is None:
                dev = self.devices[dev_eui] = DeviceHealth(dev_eui, changed_at=received)
            dev.profile, dev.application = profile or dev.profile, application or dev.application
            if tags:
                dev.tags = dict(tags)
            self._frame(dev, received, fcnt)
            self._radio(dev, rssi, snr, gateway_id)
            self._readings(dev, readings)
            dev.uplinks += 1
            dev.first_seen = dev.first_seen if dev.first_seen is not None else received
            dev.last_seen = max(received, dev.last_seen or received)
            self._judge(dev, received, liveness=OK)
            self.dirty.add(dev_eui)

    def _frame(self, dev: DeviceHealth, received: float, fcnt: int | None) -> None:
        if fcnt is None or dev.last_fcnt is None:
            dev.last_fcnt = fcnt if fcnt is not None else dev.last_fcnt
            return
        step = fcnt - dev.last_fcnt
        if step <= 0:
            if step < 0:  # the counter went back: a rejoin or a reset, not lost frames
                dev.resets += 1
                dev.last_fcnt = fcnt
                dev.window.append(0)
            return  # step 0: a retransmission of the same frame
        lost = step - 1
        dev.lost += lost
        dev.window.append(lost)
        del dev.window[:-self.cfg.loss_window]
        if dev.last_seen is not None and received > dev.last_seen:
            dev.intervals.append((received - dev.last_seen) / step)
            del dev.intervals[:-INTERVALS_KEPT]
        dev.last_fcnt = fcnt

    @staticmethod
    def _radio(dev: DeviceHealth, rssi: float | None, snr: float | None, gateway_id: str | None) -> None:
        if rssi is not None and math.isfinite(rssi):
            dev.rssi_fast, dev.rssi_slow = _ewma(dev.rssi_fast, rssi, _FAST), _ewma(dev.rssi_slow, rssi, _SLOW)
        if snr is not None and math.isfinite(snr):
            dev.snr_fast, dev.snr_slow = _ewma(dev.snr_fast, snr, _FAST), _ewma(dev.snr_slow, snr, _SLOW)
        if gateway_id:
            dev.gateways[gateway_id] = dev.gateways.get(gateway_id, 0) + 1
            if len(dev.gateways) > GATEWAYS_KEPT:
                del dev.gateways[min(dev.gateways, key=dev.gateways.__getitem__)]

    def _readings(self, dev: DeviceHealth, readings: Sequence[Reading]) -> None:
        seen: set[str] = set()
        for r in readings:
            value = r.value
            if isinstance(value, bool) or not isinstance(value, int | float) or r.name in seen:
                continue
            seen.add(r.name)  # a history's samples repeat names: the first is the current value
            if r.name == "battery":
                dev.battery = float(value)
            elif r.name == "battery-voltage":
                dev.battery_voltage = float(value)
            quantity = BY_NAME.get(r.name)
            if quantity is not None and quantity.unit == r.unit and not quantity.low <= value <= quantity.high:
                dev.out_of_range[r.name] = float(value)
            else:
                dev.out_of_range.pop(r.name, None)
            if r.name in VARYING:
                last = dev.same.get(r.name)
                dev.same[r.name] = [value, last[1] + 1] if last is not None and last[0] == value else [value, 1]

    # -- judging ------------------------------------------------------------------------------

    def expected_interval(self, dev: DeviceHealth) -> float | None:
        """Seconds between uplinks: configured for the device, else learned, else None (still learning)."""
        for rule in self.cfg.intervals:
            if (dev.dev_eui in rule.dev_eui or dev.profile in rule.device_profile
                    or dev.application in rule.application
                    or any(f"{k}={v}" in rule.tag for k, v in dev.tags.items())):
                return rule.interval_s
        if len(dev.intervals) + 1 < self.cfg.learn_uplinks:
            return None
        return max(self.cfg.min_interval_s, statistics.median(dev.intervals))

    def loss_ratio(self, dev: DeviceHealth) -> float | None:
        """Lost frames over the window of the last uplinks, or None before there is a window."""
        if len(dev.window) < 10:
            return None
        lost = sum(dev.window)
        return lost / (lost + len(dev.window))

    def _battery_thresholds(self, dev: DeviceHealth) -> tuple[float, float]:
        for rule in self.cfg.batteries:
            if dev.profile in rule.device_profile or dev.dev_eui in rule.dev_eui:
                return rule.low_percent, rule.low_voltage
        return self.cfg.battery_low_percent, self.cfg.battery_low_voltage

    def problems(self, dev: DeviceHealth) -> list[str]:
        """The device's current problems, with hysteresis so that a value at a threshold does not flap."""
        had = set(dev.problems)
        out: list[str] = []
        low_percent, low_voltage = self._battery_thresholds(dev)
        margin = 0 if "low-battery" not in had else 1
        if (dev.battery is not None and dev.battery <= low_percent + 5 * margin) or \
                (dev.battery_voltage is not None and dev.battery_voltage <= low_voltage + 0.1 * margin):
            out.append("low-battery")
        ratio = self.loss_ratio(dev)
        if ratio is not None and ratio > self.cfg.lossy_ratio * (0.5 if "lossy" in had else 1):
            out.append("lossy")
        out += [f"stuck:{name}" for name, (_, run) in sorted(dev.same.items()) if run >= self.cfg.stuck_uplinks]
        out += [f"out-of-range:{name}" for name in sorted(dev.out_of_range)]
        return out

    def _judge(self, dev: DeviceHealth, now: float, liveness: str) -> None:
        problems = self.problems(dev)
        if liveness == dev.state and problems == dev.problems:
            return
        previous = dev.state
        dev.state, dev.problems, dev.changed_at = liveness, problems, now
        self.pending.append(Notice(str(uuid.uuid4()), dev.dev_eui, now, liveness, tuple(problems), previous,
                                   self.summary(dev, now)))

    def check(self, now: float, known: Iterable[str] = (), listening_since: float | None = 0.0) -> None:
        """Judge silence (the timer's job): silent past `silent_factor` expected intervals; never-seen devices.

        Args:
            now: the local clock.
            known: every DevEUI of the device registry cache; those without any uplink are never-seen.
            listening_since: since when the gateway has been receiving from ChirpStack without a break,
                or None while it is not: a device is silent only if it missed uplinks while we listened,
                so a gateway that was down (or cut from ChirpStack's broker) blames no sensor for it.
        """
        with self.lock:
            for dev_eui in known:
                if dev_eui not in self.devices:
                    dev = self.devices[dev_eui] = DeviceHealth(dev_eui, state="", changed_at=now)
                    self._judge(dev, now, NEVER_SEEN)
                    self.dirty.add(dev_eui)
            if listening_since is None:
                return
            for dev in self.devices.values():
                if dev.last_seen is None or dev.state == SILENT:
                    continue
                expected = self.expected_interval(dev)
                quiet_since = max(dev.last_seen, listening_since)
                if expected is not None and now - quiet_since > self.cfg.silent_factor * expected:
                    self._judge(dev, now, SILENT)
                    self.dirty.add(dev.dev_eui)

    def take(self) -> tuple[list[DeviceHealth], list[Notice]]:
        """The states changed since the last take and the notices made, to store in one transaction."""
        with self.lock:
            changed = [DeviceHealth.from_dict(self.devices[d].as_dict()) for d in self.dirty]
            notices, self.pending, self.dirty = self.pending, [], set()
        return changed, notices

    def give_back(self, changed: Sequence[DeviceHealth], notices: Sequence[Notice]) -> None:
        """Storing failed: keep them for the next try (newer states of the same devices win)."""
        with self.lock:
            self.dirty.update(d.dev_eui for d in changed)
            self.pending[:0] = notices

    # -- reporting ----------------------------------------------------------------------------

    def summary(self, dev: DeviceHealth, now: float) -> dict[str, Any]:
        """What status, the page and notices show about a device (RSSI in dBm, as ChirpStack reports it)."""
        best = max(dev.gateways, key=dev.gateways.__getitem__) if dev.gateways else None
        trend = None if dev.rssi_fast is None or dev.rssi_slow is None else round(dev.rssi_fast - dev.rssi_slow, 1)
        ratio = self.loss_ratio(dev)
        expected = self.expected_interval(dev)
        return {
            "dev_eui": dev.dev_eui, "state": dev.state, "problems": list(dev.problems), "changed_at": dev.changed_at,
            "last_seen": dev.last_seen, "silent_for_s": None if dev.last_seen is None else round(now - dev.last_seen),
            "expected_interval_s": None if expected is None else round(expected, 1),
            "uplinks": dev.uplinks, "lost": dev.lost, "resets": dev.resets,
            "loss_ratio": None if ratio is None else round(ratio, 4),
            "rssi_dbm": None if dev.rssi_fast is None else round(dev.rssi_fast, 1), "rssi_trend_db": trend,
            "snr_db": None if dev.snr_fast is None else round(dev.snr_fast, 1), "best_gateway": best,
            "battery": dev.battery, "battery_voltage": dev.battery_voltage,
            "profile": dev.profile, "application": dev.application,
        }

    def report(self, now: float) -> list[dict[str, Any]]:
        """Every device's summary, the unwell first (silent, never-seen, with problems), then by DevEUI."""
        with self.lock:
            rows = [self.summary(d, now) for d in self.devices.values()]
        order = {SILENT: 0, NEVER_SEEN: 1, OK: 2}
        return sorted(rows, key=lambda r: (order.get(r["state"], 3), not r["problems"], r["dev_eui"]))

    def counts(self) -> dict[str, int]:
        """Devices per state and per problem kind (bounded metrics labels, whatever the fleet's size)."""
        out = {f"state:{s}": 0 for s in STATES} | {f"problem:{p}": 0 for p in PROBLEMS}
        with self.lock:
            for dev in self.devices.values():
                out[f"state:{dev.state}"] = out.get(f"state:{dev.state}", 0) + 1
                for kind in {p.split(":", 1)[0] for p in dev.problems}:
                    out[f"problem:{kind}"] += 1
        return out
