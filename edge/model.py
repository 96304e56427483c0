"""The data every component shares: uplinks, device events, readings and stored entries."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# A reading's value: SenML's v (number), vb (boolean) or vs (string).
Value = float | int | bool | str


@dataclass(frozen=True, slots=True)
class Reading:
    """One measured quantity, named from the shared vocabulary (docs/vocabulary.md).

    The unit is a registered SenML primary unit (RFC 8428 §12.1) or None for dimensionless
    counts and states. Values are already scaled to that unit.
    """

    name: str
    value: Value
    unit: str | None = None


@dataclass(frozen=True, slots=True)
class RadioInfo:
    """Link metadata of one uplink, reported for the gateway with the best RSSI."""

    fcnt: int | None = None
    fport: int | None = None
    frequency: int | None = None
    spreading_factor: int | None = None
    dr: int | None = None
    rssi: float | None = None
    snr: float | None = None
    gateway_id: str | None = None
    gateways: int = 0


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """What ChirpStack's event says about the device (MQTT events carry no variables)."""

    dev_eui: str
    application_id: str = ""
    application_name: str = ""
    device_name: str = ""
    device_profile_id: str = ""
    device_profile_name: str = ""
    tenant_id: str = ""
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Uplink:
    """One deduplicated LoRaWAN uplink as ChirpStack published it.

    `uplink_id` is ChirpStack's deduplicationId (v4) or a UUIDv5 derived from dev_eui, fCnt and
    time (v3); every reading derived from this uplink carries it, so receivers can drop duplicates.
    `time` is ChirpStack's receive time in POSIX seconds. `object` is ChirpStack's own codec output
    when its device profile has a codec, else None.
    """

    uplink_id: str
    device: DeviceInfo
    time: float
    fport: int
    payload: bytes
    radio: RadioInfo
    object: dict[str, Any] | None = None
    confirmed: bool = False


@dataclass(frozen=True, slots=True)
class DeviceEvent:
    """A non-uplink event (join, status, log, ack, txack, location) kept for the operator."""

    kind: str
    dev_eui: str
    application_id: str
    time: float
    summary: str
    event_id: str = ""


@dataclass(frozen=True, slots=True)
class Malformed:
    """A message that could not be parsed; stored raw so nothing is lost."""

    topic: str
    payload: bytes
    error: str


# What a parsed MQTT message turned into.
Event = Uplink | DeviceEvent | Malformed


class DecodeStatus:
    """How the readings of a stored uplink were obtained (stored as small integers)."""

    DECODED = 0  # a decoder on the gateway produced the readings
    CHIRPSTACK = 1  # ChirpStack's `object` was used
    UNDECODED = 2  # no decoder and no object: raw only
    FAILED = 3  # a decoder was chosen and failed; raw kept for `edge redecode`
    SUPERSEDED = 4  # `edge redecode` stored a newer decode of this uplink under a new row

    NAMES = ("decoded", "chirpstack", "undecoded", "failed", "superseded")


@dataclass(frozen=True, slots=True)
class Entry:
    """A buffered uplink as a sink reads it: everything needed to format it, nothing more."""

    id: int
    uplink_id: str
    dev_eui: str
    application_id: str
    gateway_id: str
    time: float
    readings: list[Reading]
    radio: RadioInfo
