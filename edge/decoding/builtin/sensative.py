"""Sensative Strips (Comfort, Drip, Guard, Presence, ...): the Strips LoRaWAN report payload.

Written from Sensative's public "Strips LoRa payload" description as published with their MIT
"strips-lora-translator-open-source" reference translator (README and report tables, 2020-2021
revision). Port 1 is a live report: a big-endian uint16 history sequence number, then a run of
frames, each a type byte followed by a fixed-size big-endian value. Bit 7 of the type byte says
the frame was also stored in the device history; the low seven bits say what the value is.
Port 2 is a history replay: a uint16 sequence number of the first record, then records of a
uint32 "seconds ago", a type byte and its value. Values: battery %, temperature int16 /10 °C,
humidity uint8 /2 %RH, lux uint16, door true = open, flood 0-100 % relative wetness, ...

Output keys are the Sensative translator's names, flattened: it wraps each value as
`{"value": x}`, here the value stands on its own (`temperature: 21.5`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from edge.decoding.base import DecodeResult, DeviceContext

Put = Callable[[bytes, dict[str, Any]], None]


def _u(b: bytes) -> int:
    return int.from_bytes(b, "big")


def _s(b: bytes) -> int:
    return int.from_bytes(b, "big", signed=True)


def _store(key: str, size: int, conv: Callable[[bytes], Any]) -> tuple[int, Put]:
    def put(b: bytes, out: dict[str, Any]) -> None:
        out[key] = conv(b)

    return size, put


def _bool(b: bytes) -> bool:
    return b[0] != 0


def _tenth(b: bytes) -> float:
    return _s(b) / 10


def _half(b: bytes) -> float:
    return b[0] / 2


def _temp_alarm(key: str) -> tuple[int, Put]:
    def put(b: bytes, out: dict[str, Any]) -> None:
        out[key] = {"highAlarm": bool(b[0] & 0x01), "lowAlarm": bool(b[0] & 0x02)}

    return 1, put


def _pair(first: tuple[str, Callable[[bytes], Any]], second: str) -> tuple[int, Put]:
    # Combined reports: one byte (humidity or door), then a 0.1 °C temperature.
    def put(b: bytes, out: dict[str, Any]) -> None:
        out[first[0]] = first[1](b[0:1])
        out[second] = _tenth(b[1:3])

    return 3, put


_DISINFECT = {0: "dirty", 1: "occupied", 2: "cleaning", 3: "clean"}


def _disinfect(b: bytes, out: dict[str, Any]) -> None:
    out["disinfectAlarm"] = b[0]
    state = _DISINFECT.get(b[0])
    if state is not None:
        out["disinfectState"] = state


def _debug(b: bytes, out: dict[str, Any]) -> None:
    out["swversion"] = f"{_u(b[0:4]):x}"
    out["startUpCount"] = b[4]
    out["watchdogCount"] = b[5]
    out["stackTxFailRebootCount"] = b[6]
    out["badConditionsCounter"] = b[7]


# type (low seven bits) -> (value size in bytes, how to store it)
_TYPES: dict[int, tuple[int, Put]] = {
    0: (0, lambda b, out: None),  # empty frame
    1: _store("battery", 1, _u),
    2: _store("temperature", 2, _tenth),
    3: _temp_alarm("tempAlarm"),
    4: _store("averageTemperature", 2, _tenth),
    5: _temp_alarm("avgTempAlarm"),
    6: _store("humidity", 1, _half),
    7: _store("lux", 2, _u),
    8: _store("lux2", 2, _u),
    9: _store("door", 1, _bool),
    10: _store("doorAlarm", 1, _bool),
    11: _store("tamperReport", 1, _bool),
    12: _store("tamperAlarm", 1, _bool),
    13: _store("flood", 1, _u),
    14: _store("floodAlarm", 1, _bool),
    15: _store("foilAlarm", 1, _bool),
    16: _store("userSwitch1Alarm", 1, _bool),
    17: _store("doorCount", 2, _u),
    18: _store("presence", 1, _bool),
    19: _store("IRproximity", 2, _u),
    20: _store("IRcloseproximity", 2, _u),
    21: _store("closeProximityAlarm", 1, _bool),
    22: (1, _disinfect),
    80: _pair(("humidity", _half), "temperature"),
    81: _pair(("humidity", _half), "averageTemperature"),
    82: _pair(("door", _bool), "temperature"),
    110: (8, _debug),
    112: _store("capacitanceFlood", 2, _u),
    113: _store("capacitancePad", 2, _u),
    114: _store("capacitanceEnd", 2, _u),
}


def _frame(payload: bytes, i: int, out: dict[str, Any]) -> int | str:
    """Decode the frame at byte i into out; return the next offset or an error message."""
    code = payload[i] & 0x7F
    spec = _TYPES.get(code)
    if spec is None:
        return f"unknown Strips report type {code} at byte {i}"
    size, put = spec
    value = payload[i + 1 : i + 1 + size]
    if len(value) != size:
        return f"Strips report type {code} truncated at byte {i}"
    put(value, out)
    return i + 1 + size


class StripsDecoder:
    """Decoder for every Sensative Strips model (they share one report format)."""

    id = "sensative/strips"
    aliases = ("sensative/strips-comfort", "sensative/strips-drip", "sensative/strips-guard",
               "sensative/strips-presence", "sensative/strips-ms")

    def decode(self, payload: bytes, fport: int, context: DeviceContext) -> DecodeResult:
        """Decode a port 1 report or a port 2 history replay; bad bytes are errors."""
        if fport not in (1, 2):
            return DecodeResult(None, errors=[f"unknown fPort {fport}"])
        if len(payload) < 2:
            return DecodeResult(None, errors=["payload shorter than the 2-byte sequence number"])
        seq = _u(payload[0:2])
        data: dict[str, Any] = {"historySeqNr": seq}
        i = 2
        if fport == 1:
            while i < len(payload):
                step = _frame(payload, i, data)
                if isinstance(step, str):
                    return DecodeResult(None, errors=[step])
                i = step
            return DecodeResult(data)
        history: list[dict[str, Any]] = []
        while i < len(payload):
            if i + 5 > len(payload):
                return DecodeResult(None, errors=[f"history record truncated at byte {i}"])
            record: dict[str, Any] = {"seqNr": (seq + len(history)) & 0xFFFF, "secondsAgo": _u(payload[i : i + 4])}
            step = _frame(payload, i + 4, record)
            if isinstance(step, str):
                return DecodeResult(None, errors=[step])
            history.append(record)
            i = step
        data["history"] = history
        return DecodeResult(data)


DECODERS = (StripsDecoder(),)
