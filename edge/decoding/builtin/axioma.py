"""Axioma Metering Qalcosonic W1 ultrasonic water meter: the W1 LoRa "short" and "extended" frames.

Layout after Axioma's "W1 LoRa Payload" documents ("Lora Payload (Long) Extended", V01.8,
2020-04-06; "W1 USA LoRa Payload", V01.1, 2019-11-14). Only their public excerpts could be read
here; the field order below is the one independent public decoders of those documents agree on,
and should be checked against the full document. All integers are little-endian:

  short frame (9 bytes):      time uint32 (UNIX s) | status uint8 | current volume uint32 (L)
  extended frame (17+ bytes): the short frame | log time uint32 (UNIX s) | volume at log time
                              uint32 (L) | delta volumes uint16 (L) per log interval, oldest
                              first; an odd trailing byte is padding.

The extended frame's log is hourly: besides the documented fields, `history` lists the volume at
the log time and after each hour's delta, each with its time, so the hourly history reaches the
records (SenML `t`, NGSI-LD `observedAt`) as meter readings.

The status byte: 0x04 low battery, 0x08 permanent error, 0x10 temporary error; with 0x10 set,
bits 5-7 name the alarm: none = dry (empty pipe), 0x20 leakage, 0x60 backflow, 0xA0 burst,
0x80 low temperature, 0xC0 manipulation. Volumes are reported in litres and mapped to m3.
The meter sends data on fPort 100; other ports are refused.
"""

from __future__ import annotations

from typing import Any

from edge.decoding.base import DecodeResult, DeviceContext

DATA_PORT = 100
_SHORT = 9
_EXTENDED = 17

_ALARMS = {0x00: "dry", 0x20: "leakage", 0x60: "backflow", 0xA0: "burst", 0x80: "low_temperature",
           0xC0: "manipulation"}


def _u(b: bytes) -> int:
    return int.from_bytes(b, "little")


def _status(status: int, out: dict[str, Any]) -> None:
    out["status"] = status
    out["low_battery"] = bool(status & 0x04)
    out["permanent_error"] = bool(status & 0x08)
    out["temporary_error"] = bool(status & 0x10)
    if status & 0x10:
        out["alarm"] = _ALARMS.get(status & 0xE0, "unknown")


# The extended frame logs one delta volume per hour after the log time.
LOG_INTERVAL_S = 3600


def _history(log_time: int, log_volume: int, deltas: list[int], now: int) -> list[dict[str, int]]:
    """The hourly log as meter readings: the volume at the log time, then after each hour's delta.

    Kept as readings with their own time (diwise keeps this history too); the deltas alone would
    make every receiver redo the sum. Points at or after the frame's own time are left out: the
    frame's `volume` is the meter reading then.
    """
    points = [{"time": log_time, "volume": log_volume}]
    for delta in deltas:
        last = points[-1]
        points.append({"time": last["time"] + LOG_INTERVAL_S, "volume": last["volume"] + delta})
    return [point for point in points if point["time"] < now]


class QalcosonicW1Decoder:
    """Decoder for the Qalcosonic W1 short and extended data frames."""

    id = "axioma/qalcosonic-w1"

    def decode(self, payload: bytes, fport: int, context: DeviceContext) -> DecodeResult:
        """Decode a short (9-byte) or extended (17+ byte) frame; other lengths are errors."""
        if fport != DATA_PORT:
            return DecodeResult(None, errors=[f"unknown fPort {fport}"])
        if len(payload) != _SHORT and len(payload) < _EXTENDED:
            return DecodeResult(None, errors=[f"unexpected payload length {len(payload)}"])
        data: dict[str, Any] = {"time": _u(payload[0:4])}
        _status(payload[4], data)
        data["volume"] = _u(payload[5:9])
        warnings: list[str] = []
        if len(payload) >= _EXTENDED:
            data["log_time"] = _u(payload[9:13])
            data["log_volume"] = _u(payload[13:17])
            rest = payload[_EXTENDED:]
            data["deltas"] = [_u(rest[j : j + 2]) for j in range(0, len(rest) - 1, 2)]
            data["history"] = _history(data["log_time"], data["log_volume"], data["deltas"], data["time"])
        if data["permanent_error"] or data["temporary_error"]:
            warnings.append(f"meter status 0x{payload[4]:02x}: {data.get('alarm', 'permanent error')}")
        return DecodeResult(data, warnings=warnings)


DECODERS = (QalcosonicW1Decoder(),)
