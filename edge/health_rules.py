"""The judgements of sensor health on one device's state: frame counters, readings, expected interval and problems.

Frame counters give losses and intervals (a counter going back is a reset, not lost frames);
readings give the battery, values stuck unchanged and values out of their quantity's range. Each
judgement has hysteresis, so a value at a threshold does not flap.
"""

from __future__ import annotations

from collections.abc import Sequence

from edge.config import HealthConfig
from edge.health_state import DeviceHealth
from edge.model import Reading
from edge.vocabulary import BY_NAME

INTERVALS_KEPT = 16
# Quantities that a working sensor never reports unchanged for long; counters and states may rest.
VARYING = frozenset({
    "temperature", "temperature-external", "temperature-soil", "temperature-water", "humidity", "humidity-external",
    "co2", "pressure", "tvoc", "pm1", "pm2.5", "pm4", "pm10", "sound-level", "sound-level-peak", "dew-point",
})
_FAST, _SLOW = 0.3, 0.05  # EWMA weights of the radio trend: recent vs long-run


def trend(fast: float | None, slow: float | None, value: float) -> tuple[float, float]:
    """A radio value's short- and long-run averages (EWMA) after one more sample."""
    if fast is None or slow is None:
        return value, value
    return fast + _FAST * (value - fast), slow + _SLOW * (value - slow)


# What the hot path needs of each vocabulary quantity: (unit, low, high, varies in a working sensor).
_NUMBERS = frozenset({int, float})  # bool is an int subclass, but not a number here
_SPECS: dict[str, tuple[str | None, float, float, bool]] = {
    q.name: (q.unit, q.low, q.high, q.name in VARYING) for q in BY_NAME.values() if not q.state}


class HealthRules:
    """The per-device judgements under one HealthConfig; HealthTracker applies them to the whole fleet."""

    def __init__(self, cfg: HealthConfig) -> None:
        self.cfg = cfg

    # -- bookkeeping ----------------------------------------------------------------------------

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
