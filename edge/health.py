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
from dataclasses import dataclass
from typing import Any

import orjson

from edge.config import HealthConfig
from edge.health_rules import HealthRules, trend
from edge.health_state import NEVER_SEEN, OK, PROBLEMS, SILENT, STATES, Committed, DeviceHealth, Notice, Stored
from edge.model import DeviceInfo, RadioInfo, Reading, Uplink

GATEWAYS_KEPT = 8


@dataclass(slots=True)
class _Committed:
    uplink: Uplink
    received: float
    readings: Sequence[Reading]


class HealthTracker(HealthRules):
    """Per-device health for the whole gateway; thread-safe (the source observes, a timer checks)."""

    def __init__(self, cfg: HealthConfig, devices: Mapping[str, DeviceHealth] | None = None) -> None:
        super().__init__(cfg)
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
                    dev.rssi_fast, dev.rssi_slow = trend(dev.rssi_fast, dev.rssi_slow, rssi)
                if snr is not None:
                    dev.snr_fast, dev.snr_slow = trend(dev.snr_fast, dev.snr_slow, snr)
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

    # -- changes of state and their notices (the timer) ---------------------------------------

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
