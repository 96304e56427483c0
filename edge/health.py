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

import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from edge.config import HealthConfig
from edge.model import DeviceInfo, RadioInfo, Reading, Uplink
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
def _trend(fast: float | None, slow: float | None, value: float) -> tuple[float, float]:
    """A radio value's short- and long-run averages (EWMA) after one more sample."""
    if fast is None or slow is None:
        return value, value
    return fast + _FAST * (value - fast), slow + _SLOW * (value - slow)


# What the hot path needs of each vocabulary quantity: (unit, low, high, varies in a working sensor).
_NUMBERS = frozenset({int, float})  # bool is an int subclass, but not a number here
_SPECS: dict[str, tuple[str | None, float, float, bool]] = {
    q.name: (q.unit, q.low, q.high, q.name in VARYING) for q in BY_NAME.values() if not q.state}


_TRANSIENT = frozenset({"fresh", "fresh_count", "info"})


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
    window_lost: int = 0  # sum(window), kept as it changes
    rssi_fast: float | None = None
    rssi_slow: float | None = None
    snr_fast: float | None = None
    snr_slow: float | None = None
    gateways: dict[str, int] = field(default_factory=dict)
    battery: float | None = None
    battery_voltage: float | None = None
    same: dict[str, list[Any]] = field(default_factory=dict)  # reading -> [value, uplinks in a row]
    out_of_range: dict[str, float] = field(default_factory=dict)
    # Not stored: the newest uplink's readings and device info, judged by the next health round
    # (not on the hot path), and how many uplinks brought readings since.
    fresh: Sequence[Reading] | None = None
    fresh_count: int = 0
    info: Any = None

    def as_dict(self) -> dict[str, Any]:
        """Plain data for storage."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__ if name not in _TRANSIENT}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DeviceHealth:
        """The inverse of as_dict (unknown keys from other versions are ignored)."""
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in known})


class Committed(Protocol):
    """One committed uplink as the pipeline has it (edge.buffer.store.NewUplink has this shape)."""

    @property
    def uplink(self) -> Uplink: ...
    @property
    def received(self) -> float: ...
    @property
    def readings(self) -> Sequence[Reading]: ...


@dataclass(slots=True)
class _Committed:
    uplink: Uplink
    received: float
    readings: Sequence[Reading]


@dataclass(frozen=True, slots=True)
class Stored:
    """One device's state, ready for the buffer."""

    dev_eui: str
    state: str
    changed_at: float
    data: bytes


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


class HealthTracker:
    """Per-device health for the whole gateway; thread-safe (the source observes, a timer checks)."""

    def __init__(self, cfg: HealthConfig, devices: Mapping[str, DeviceHealth] | None = None) -> None:
        self.cfg = cfg
        self.devices: dict[str, DeviceHealth] = dict(devices or {})
        self.dirty: set[str] = set()  # updated since their state was last stored
        self.unsettled: set[str] = set()  # with readings or device info not judged yet
        self.pending: list[Notice] = []
        self.lock = threading.Lock()

    # -- per uplink (the source thread) ----------------------------------------------------------

    def observe(self, dev_eui: str, received: float, fcnt: int | None, readings: Sequence[Reading], *,
                rssi: float | None = None, snr: float | None = None, gateway_id: str | None = None,
                profile: str = "", application: str = "", tags: Mapping[str, str] | None = None) -> None:
        """Take one uplink into its device's state (tests and tools; the pipeline uses observe_all)."""
        device = DeviceInfo(dev_eui, application_name=application, device_profile_name=profile,
                            tags=dict(tags or {}))
        radio = RadioInfo(fcnt=fcnt, rssi=rssi, snr=snr, gateway_id=gateway_id)
        self.observe_all([_Committed(Uplink("", device, received, 0, b"", radio), received, readings)])

    def observe_all(self, uplinks: Iterable[Committed]) -> None:
        """Take committed uplinks into their devices' state: the hot path, so O(1) and lean per uplink.

        Only what needs every uplink is done here: last seen, frame counter (losses, intervals),
        radio averages, best gateway. The readings (battery, stuck, range) and the device's profile
        and tags are kept by reference and judged by the next health round (`settle`). Times are
        the local receive times, never the device's or ChirpStack's clock.
        """
        devices, dirty, unsettled = self.devices, self.dirty, self.unsettled
        with self.lock:
            for item in uplinks:
                uplink, received = item.uplink, item.received
                info, radio = uplink.device, uplink.radio
                dev_eui = info.dev_eui
                dev = devices.get(dev_eui)
                if dev is None:
                    dev = devices[dev_eui] = DeviceHealth(dev_eui, changed_at=received)
                rejudge = self._frame(dev, received, radio.fcnt)
                rssi, snr, gateway_id = radio.rssi, radio.snr, radio.gateway_id
                if rssi is not None:
                    dev.rssi_fast, dev.rssi_slow = _trend(dev.rssi_fast, dev.rssi_slow, rssi)
                if snr is not None:
                    dev.snr_fast, dev.snr_slow = _trend(dev.snr_fast, dev.snr_slow, snr)
                if gateway_id:
                    gateways = dev.gateways
                    gateways[gateway_id] = gateways.get(gateway_id, 0) + 1
                    if len(gateways) > GATEWAYS_KEPT:
                        del gateways[min(gateways, key=gateways.__getitem__)]
                readings = item.readings
                if readings:
                    dev.fresh = readings
                    dev.fresh_count += 1
                dev.info = info
                dev.uplinks += 1
                if dev.first_seen is None:
                    dev.first_seen = received
                if dev.last_seen is None or received > dev.last_seen:
                    dev.last_seen = received
                if rejudge or dev.state != OK:
                    self._settle(dev)
                    self._judge(dev, received, liveness=OK)
                dirty.add(dev_eui)
                unsettled.add(dev_eui)

    def settle(self, now: float) -> None:
        """Judge the readings that arrived since the last round (battery, stuck, range): the timer's job."""
        with self.lock:
            for dev_eui in self.unsettled:
                dev = self.devices[dev_eui]
                if self._settle(dev):
                    self._judge(dev, now, liveness=dev.state)
            self.unsettled.clear()

    def _settle(self, dev: DeviceHealth) -> bool:
        """Take a device's fresh readings and info; True when a problem may have started or ended."""
        info = dev.info
        if info is not None:  # an edge.model.DeviceInfo: the uplink's own, kept by reference
            dev.profile = info.device_profile_name or dev.profile
            dev.application = info.application_name or info.application_id or dev.application
            if info.tags:
                dev.tags = info.tags
            dev.info = None
        fresh = dev.fresh
        if not fresh:
            return False
        count, dev.fresh, dev.fresh_count = dev.fresh_count, None, 0
        return self._readings(dev, fresh, count)

    def _frame(self, dev: DeviceHealth, received: float, fcnt: int | None) -> bool:
        """Frame counter bookkeeping; True when the device's lossy judgement may have changed."""
        last = dev.last_fcnt
        if fcnt is None or last is None:
            if fcnt is not None:
                dev.last_fcnt = fcnt
            return False
        step = fcnt - last
        if step <= 0:
            if step < 0:  # the counter went back: a rejoin or a reset, not lost frames
                dev.resets += 1
                dev.last_fcnt = fcnt
                self._window(dev, 0)
            return False  # step 0: a retransmission of the same frame
        lost = step - 1
        window = dev.window
        window.append(lost)
        if lost:
            dev.lost += lost
            dev.window_lost += lost
        if len(window) > self.cfg.loss_window:
            dev.window_lost -= window.pop(0)
        last_seen = dev.last_seen
        if last_seen is not None and received > last_seen:
            intervals = dev.intervals
            intervals.append((received - last_seen) / step)
            if len(intervals) > INTERVALS_KEPT:
                del intervals[0]
        dev.last_fcnt = fcnt
        if not dev.window_lost and not dev.problems:
            return False  # the common case: nothing lost lately, nothing to take back
        ratio = self.loss_ratio(dev)
        if ratio is None:
            return False
        if "lossy" in dev.problems:
            return ratio <= self.cfg.lossy_ratio * 0.5
        return ratio > self.cfg.lossy_ratio

    def _window(self, dev: DeviceHealth, lost: int) -> None:
        window = dev.window
        window.append(lost)
        dev.window_lost += lost
        if len(window) > self.cfg.loss_window:
            dev.window_lost -= window.pop(0)

    def _readings(self, dev: DeviceHealth, readings: Sequence[Reading], uplinks: int = 1) -> bool:
        """Battery, stuck and range bookkeeping; True when a problem may have started or ended.

        `uplinks` is how many uplinks brought readings since the last round; only the newest is
        looked at, so an unchanged value counts them all as unchanged (rounds are much shorter than
        any sensor's interval, so in practice every uplink is looked at).
        """
        changed = False
        seen: set[str] = set()
        out_of_range, same, stuck_after = dev.out_of_range, dev.same, self.cfg.stuck_uplinks
        for r in readings:
            name, value = r.name, r.value
            spec = _SPECS.get(name)
            if spec is None or value.__class__ not in _NUMBERS or name in seen:
                continue  # vendor names, states, and a history's older samples (the first is current)
            seen.add(name)
            unit, low, high, varying = spec
            if low <= value <= high or unit != r.unit:  # type: ignore[operator]  # a number, checked above
                if name in out_of_range:
                    del out_of_range[name]
                    changed = True
            else:
                if name not in out_of_range:
                    changed = True
                out_of_range[name] = value  # type: ignore[assignment]
            if varying:
                last = same.get(name)
                if last is None or last[0] != value:
                    changed = changed or (last is not None and last[1] >= stuck_after)
                    same[name] = [value, 1]
                else:
                    before = last[1]
                    last[1] += uplinks
                    changed = changed or before < stuck_after <= last[1]
            elif name == "battery" or name == "battery-voltage":
                if name == "battery":
                    dev.battery = value  # type: ignore[assignment]
                else:
                    dev.battery_voltage = value  # type: ignore[assignment]
                changed = changed or (self._battery_low(dev) != ("low-battery" in dev.problems))
        return changed

    # -- judging ------------------------------------------------------------------------------

    def expected_interval(self, dev: DeviceHealth) -> float | None:
        """Seconds between uplinks: configured for the device, else learned, else None (still learning)."""
        for rule in self.cfg.intervals:
            if (dev.dev_eui in rule.dev_eui or dev.profile in rule.device_profile
                    or dev.application in rule.application
                    or any(f"{k}={v}" in rule.tag for k, v in dev.tags.items())):
                return rule.interval_s
        intervals = dev.intervals
        if len(intervals) + 1 < self.cfg.learn_uplinks:
            return None
        ordered = sorted(intervals)  # at most INTERVALS_KEPT: the median by hand, without statistics' overhead
        mid = len(ordered) // 2
        median = ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
        return max(self.cfg.min_interval_s, median)

    def loss_ratio(self, dev: DeviceHealth) -> float | None:
        """Lost frames over the window of the last uplinks, or None before there is a window."""
        if len(dev.window) < 10:
            return None
        return dev.window_lost / (dev.window_lost + len(dev.window))

    def _battery_thresholds(self, dev: DeviceHealth) -> tuple[float, float]:
        for rule in self.cfg.batteries:
            if dev.profile in rule.device_profile or dev.dev_eui in rule.dev_eui:
                return rule.low_percent, rule.low_voltage
        return self.cfg.battery_low_percent, self.cfg.battery_low_voltage

    def _battery_low(self, dev: DeviceHealth) -> bool:
        """Low on battery, with a margin to get out of it (5 % or 0.1 V) so a value at the threshold does not flap."""
        low_percent, low_voltage = self._battery_thresholds(dev)
        margin = 1 if "low-battery" in dev.problems else 0
        return (dev.battery is not None and dev.battery <= low_percent + 5 * margin) or \
            (dev.battery_voltage is not None and dev.battery_voltage <= low_voltage + 0.1 * margin)

    def problems(self, dev: DeviceHealth) -> list[str]:
        """The device's current problems, with hysteresis so that a value at a threshold does not flap."""
        had = set(dev.problems)
        out: list[str] = []
        if self._battery_low(dev):
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
        self.settle(now)
        with self.lock:
            for dev_eui in known:
                if dev_eui not in self.devices:
                    dev = self.devices[dev_eui] = DeviceHealth(dev_eui, state="", changed_at=now)
                    self._judge(dev, now, NEVER_SEEN)
                    self.dirty.add(dev_eui)
            if listening_since is None:
                return
            factor, shortest = self.cfg.silent_factor, self.cfg.min_interval_s
            for dev in self.devices.values():
                if dev.last_seen is None or dev.state == SILENT:
                    continue
                quiet = now - max(dev.last_seen, listening_since)
                if quiet <= factor * shortest and not self.cfg.intervals:
                    continue  # heard from too recently to be silent under any interval: skip the median
                expected = self.expected_interval(dev)
                if expected is not None and quiet > factor * expected:
                    self._judge(dev, now, SILENT)
                    self.dirty.add(dev.dev_eui)

    def take(self, now: float | None = None, everything: bool = True) -> tuple[list[Stored], list[Notice]]:
        """States to store and the notices made since the last take, for one transaction.

        Args:
            everything: every device updated since the last full take; else only those whose state
                or problems changed (their notices must be stored with them). The service stores
                everything only every few minutes: interval and radio statistics lost in a crash
                are relearned, a state change never is.

        Returns:
            (DevEUI, state, changed_at, JSON) per device, serialised under the lock; the notices.
        """
        self.settle(time.time() if now is None else now)
        with self.lock:
            notices, self.pending = self.pending, []
            wanted = set(self.dirty) if everything else {n.dev_eui for n in notices}
            self.dirty -= wanted
            states = [Stored(d, self.devices[d].state, self.devices[d].changed_at,
                             orjson.dumps(self.devices[d].as_dict())) for d in sorted(wanted)]
        return states, notices

    def give_back(self, states: Sequence[Stored], notices: Sequence[Notice]) -> None:
        """Storing failed: keep them for the next try (newer states of the same devices win)."""
        with self.lock:
            self.dirty.update(s.dev_eui for s in states)
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
        self.settle(now)
        with self.lock:
            rows = [self.summary(d, now) for d in self.devices.values()]
        order = {SILENT: 0, NEVER_SEEN: 1, OK: 2}
        return sorted(rows, key=lambda r: (order.get(r["state"], 3), not r["problems"], r["dev_eui"]))

    def counts(self) -> dict[str, int]:
        """Devices per state and per problem kind (bounded metrics labels, whatever the fleet's size)."""
        self.settle(time.time())
        out = {f"state:{s}": 0 for s in STATES} | {f"problem:{p}": 0 for p in PROBLEMS}
        with self.lock:
            for dev in self.devices.values():
                out[f"state:{dev.state}"] = out.get(f"state:{dev.state}", 0) + 1
                for kind in {p.split(":", 1)[0] for p in dev.problems}:
                    out[f"problem:{kind}"] += 1
        return out
