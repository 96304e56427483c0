"""What sensor health keeps and hands out: each device's state (plain data), rows to store, notices of changes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from edge.model import Reading, Uplink

OK, SILENT, NEVER_SEEN = "ok", "silent", "never-seen"
STATES = (OK, SILENT, NEVER_SEEN)
PROBLEMS = ("low-battery", "lossy", "stuck", "out-of-range")  # a problem is "<kind>" or "<kind>:<reading>"

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
