"""The data every component shares: uplinks, device events, readings and stored entries."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import orjson

# The per-uplink types below are plain slotted dataclasses, not frozen ones: a frozen dataclass
# sets each field through object.__setattr__, about five times slower to construct, and a dozen
# of them are built for every uplink. They are treated as immutable all the same.

# A reading's value: SenML's v (number), vb (boolean) or vs (string).
Value = float | int | bool | str


@dataclass(slots=True)
class Reading:
    """One measured quantity, named from the shared vocabulary (docs/vocabulary.md).

    The unit is a registered SenML primary unit (RFC 8428 §12.1) or None for dimensionless
    counts and states. Values are already scaled to that unit. `field` is the path in the codec's
    `data` the reading came from (`a.b[2].c`, for tools; not stored). `time` is the sample's own
    time in POSIX seconds when the data carries one (histories, sample lists), else None: the
    uplink's receive time applies.
    """

    name: str
    value: Value
    unit: str | None = None
    field: str = dataclasses.field(default="", compare=False)  # provenance, not part of the value
    time: float | None = None


@dataclass(slots=True)
class RadioInfo:
    """Link metadata of one uplink, reported for the gateway with the best RSSI (in dBm, as ChirpStack reports it)."""

    fcnt: int | None = None
    fport: int | None = None
    frequency: int | None = None
    spreading_factor: int | None = None
    dr: int | None = None
    rssi: float | None = None
    snr: float | None = None
    gateway_id: str | None = None
    gateways: int = 0


@dataclass(slots=True)
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


@dataclass(slots=True)
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


@dataclass(slots=True)
class DeviceEvent:
    """A non-uplink event (join, status, log, ack, txack, location) kept for the operator."""

    kind: str
    dev_eui: str
    application_id: str
    time: float
    summary: str
    event_id: str = ""


@dataclass(slots=True)
class Malformed:
    """A message that could not be parsed; stored raw so nothing is lost."""

    topic: str
    payload: bytes
    error: str


# What a parsed MQTT message turned into.
Event = Uplink | DeviceEvent | Malformed

# How far an event's own time may lie ahead of the local receive time before decisions stop
# trusting it (clock skew). Older is plausible and harmless: ChirpStack's persistent session may
# hold events for weeks while the edge is down (30 days by default), and an event dated in the
# past only ever holds back itself in thinning and raises, never hides, the backlog age.
TRUSTED_FUTURE_S = 300


def control_time(event_time: float, received: float | None) -> float:
    """The time decisions use (thinning, backlog age, a device's last uplink): the event's own
    time, but never later than 5 minutes after its local receive time. SenML `t` still carries
    the event time; without a receive time the event time is taken as it is.
    """
    if received is None:
        return event_time
    return min(event_time, received + TRUSTED_FUTURE_S)


class DecodeStatus:
    """How the readings of a stored uplink were obtained (stored as small integers)."""

    DECODED = 0  # a decoder on the gateway produced the readings
    CHIRPSTACK = 1  # ChirpStack's `object` was used
    UNDECODED = 2  # no decoder and no object: raw only
    FAILED = 3  # a decoder was chosen and failed; raw kept for `edge redecode`
    SUPERSEDED = 4  # `edge redecode` stored a newer decode of this uplink under a new row

    NAMES = ("decoded", "chirpstack", "undecoded", "failed", "superseded")


def reading_record(r: Reading) -> dict[str, Any]:
    """A reading as its stored SenML record: n, u (when it has one), v|vs|vb, t (when its own)."""
    rec: dict[str, Any] = {"n": r.name}
    if r.unit:
        rec["u"] = r.unit
    value = r.value
    rec["vb" if isinstance(value, bool) else "vs" if isinstance(value, str) else "v"] = value
    if r.time is not None:
        rec["t"] = r.time
    return rec


def readings_json(readings: Sequence[Reading]) -> bytes:
    """Readings in their canonical stored form: a JSON array of SenML records (n, u, v|vs|vb, t).

    The buffer stores records in this form, so a SenML JSON pack is assembled by splicing bytes
    and other formats parse it back; it is records, not a formatted payload. `t` is present only
    for a reading with its own time, as an absolute SenML time (POSIX seconds); the SenML
    formatter makes it relative to the uplink's base time. The source field path is not stored:
    it would ride along in every spliced SenML pack (a non-standard field upstream), it costs
    bytes on every record of a bounded buffer, and it is reproducible from the raw payload that
    is stored (`edge decoders readings`, `edge redecode`).
    """
    return orjson.dumps([reading_record(r) for r in readings])


def readings_from_json(blob: bytes) -> list[Reading]:
    """The inverse of readings_json (without the field paths, which are not stored)."""
    out = []
    for rec in orjson.loads(blob):
        value = rec["v"] if "v" in rec else rec["vs"] if "vs" in rec else rec["vb"]
        out.append(Reading(rec["n"], value, rec.get("u"), "", rec.get("t")))
    return out


# SenML's primary unit for RSSI is dBW; ChirpStack reports dBm (a secondary unit, RFC 8798).
_DBM_TO_DBW = -30


def _shifted(value: float, offset: int) -> float:
    """`value + offset` exact in decimal: -127.8 dBm is -157.8 dBW (binary arithmetic may add noise)."""
    if isinstance(value, int) or not math.isfinite(value) or value.is_integer():
        return value + offset  # whole numbers, as ChirpStack reports RSSI, are exact in binary
    return float(Decimal(repr(value)) + offset)


def radio_json(r: RadioInfo) -> bytes:
    """Radio metadata in canonical stored form: SenML records in primary units (RSSI in dBW).

    The stored form is what upstreams are sent (link packs splice it, entries rebuilt by sharing
    rules or split packs keep it) and what `edge buffer list` shows, so the RSSI is converted to
    dBW here, once and exactly, when the records are built.
    """
    recs: list[dict[str, Any]] = []
    if r.fcnt is not None:
        recs.append({"n": "fcnt", "u": "count", "v": r.fcnt})
    if r.fport is not None:
        recs.append({"n": "fport", "v": r.fport})
    if r.frequency is not None:
        recs.append({"n": "frequency", "u": "Hz", "v": r.frequency})
    if r.spreading_factor is not None:
        recs.append({"n": "sf", "v": r.spreading_factor})
    if r.dr is not None:
        recs.append({"n": "dr", "v": r.dr})
    if r.rssi is not None:
        recs.append({"n": "rssi", "u": "dBW", "v": _shifted(r.rssi, _DBM_TO_DBW)})
    if r.snr is not None:
        recs.append({"n": "snr", "u": "dB", "v": r.snr})
    recs.append({"n": "gateways", "u": "count", "v": r.gateways})
    if r.gateway_id:
        recs.append({"n": "gateway", "vs": f"urn:dev:mac:{r.gateway_id}"})
    return orjson.dumps(recs)


def radio_from_json(blob: bytes) -> RadioInfo:
    """The inverse of radio_json: RSSI back in dBm, converted exactly, for readers that want it."""
    values = {rec["n"]: rec.get("v", rec.get("vs")) for rec in orjson.loads(blob)}
    rssi = values.get("rssi")
    gateway = values.get("gateway")
    return RadioInfo(fcnt=values.get("fcnt"), fport=values.get("fport"), frequency=values.get("frequency"),
                     spreading_factor=values.get("sf"), dr=values.get("dr"),
                     rssi=None if rssi is None else _shifted(rssi, -_DBM_TO_DBW), snr=values.get("snr"),
                     gateway_id=gateway.removeprefix("urn:dev:mac:") if gateway else None,
                     gateways=values.get("gateways", 0))


class Entry:
    """A buffered uplink as a sink reads it: everything needed to format it, nothing more.

    Built from the buffer with the stored record blobs, which are parsed only if a formatter asks
    for `readings` or `radio` (the SenML JSON path splices the blobs and never parses them);
    built in code from readings and radio objects.
    """

    __slots__ = ("_radio", "_radio_json", "_readings", "_readings_json", "application_id", "dev_eui",
                 "gateway_id", "id", "time", "uplink_id")

    def __init__(self, id: int, uplink_id: str, dev_eui: str, application_id: str, gateway_id: str,
                 time: float, readings: Sequence[Reading] | None = None, radio: RadioInfo | None = None, *,
                 readings_blob: bytes | None = None, radio_blob: bytes | None = None) -> None:
        self.id = id
        self.uplink_id = uplink_id
        self.dev_eui = dev_eui
        self.application_id = application_id
        self.gateway_id = gateway_id
        self.time = time
        self._readings = None if readings is None else list(readings)
        self._radio = radio
        self._readings_json = readings_blob
        self._radio_json = radio_blob

    @property
    def readings(self) -> list[Reading]:
        """The uplink's readings."""
        if self._readings is None:
            self._readings = readings_from_json(self._readings_json or b"[]")
        return self._readings

    @property
    def radio(self) -> RadioInfo:
        """The uplink's radio metadata."""
        if self._radio is None:
            self._radio = radio_from_json(self._radio_json) if self._radio_json else RadioInfo()
        return self._radio

    @property
    def readings_json(self) -> bytes:
        """The readings as a JSON array of SenML records."""
        if self._readings_json is None:
            self._readings_json = readings_json(self._readings or [])
        return self._readings_json

    @property
    def radio_json(self) -> bytes:
        """The radio metadata as a JSON array of SenML records."""
        if self._radio_json is None:
            self._radio_json = radio_json(self.radio)
        return self._radio_json

    @property
    def has_readings(self) -> bool:
        """True when the uplink has readings (checked without parsing them)."""
        if self._readings is not None:
            return bool(self._readings)
        return bool(self._readings_json) and self._readings_json != b"[]"

    def __repr__(self) -> str:
        return f"Entry(id={self.id}, uplink_id={self.uplink_id!r}, dev_eui={self.dev_eui!r}, time={self.time})"


@dataclass(frozen=True, slots=True)
class OutMessage:
    """One upstream message: where it goes (topic or ''), its bytes, and its media type.

    For HTTP upstreams the topic is '' (the upstream's endpoint) or, for a notice that goes to the
    endpoint rather than to `notice_endpoint` (an NGSI-LD Device update), ENDPOINT.
    """

    topic: str
    payload: bytes
    content_type: str


# The "topic" of an HTTP notice that goes to the upstream's own endpoint (see OutMessage).
ENDPOINT = "@endpoint"

# Turns consecutive stored entries into the messages that carry them upstream (edge.formats).
Formatter = Callable[[Sequence[Entry]], list[OutMessage]]


@dataclass(frozen=True, slots=True)
class Check:
    """The outcome of one health check (`edge doctor`), as every component's own check reports it.

    `status` is OK, WARN or FAIL; `fix` says in one line what to do, for WARN and FAIL only.
    `edge doctor --json` prints these fields as they are named here.
    """

    check: str
    status: str
    detail: str
    fix: str = ""

    def line(self) -> str:
        """The human form: `STATUS  check: detail — fix: ...`."""
        text = f"{self.status:<4}  {self.check}: {self.detail}"
        return f"{text} — fix: {self.fix}" if self.fix else text
