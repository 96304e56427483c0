"""Elsys ERS / ERS CO2 / ERS Sound / EMS / ELT family: the Elsys generic TLV payload.

Written from Elsys' "Sensor payload" document (v2.x): a sequence of one-byte type codes, each
followed by a fixed-size big-endian value. A type seen twice overwrites the first value, as in
the vendor codec. Output keys are the vendor codec's names so examples compare one to one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from edge.decoding.base import DecodeResult, DeviceContext


def _u(b: bytes) -> int:
    return int.from_bytes(b, "big")


def _s(b: bytes) -> int:
    return int.from_bytes(b, "big", signed=True)


def _store(key: str, size: int, conv: Callable[[bytes], Any]) -> tuple[int, Callable[[bytes, dict[str, Any]], None]]:
    def put(b: bytes, out: dict[str, Any]) -> None:
        out[key] = conv(b)

    return size, put


def _acc(b: bytes, out: dict[str, Any]) -> None:
    out["x"], out["y"], out["z"] = _s(b[0:1]), _s(b[1:2]), _s(b[2:3])


def _gps(b: bytes, out: dict[str, Any]) -> None:
    out["lat"] = _s(b[0:3]) / 10000
    out["long"] = _s(b[3:6]) / 10000


def _ir(b: bytes, out: dict[str, Any]) -> None:
    out["irInternalTemperature"] = _s(b[0:2]) / 10
    out["irExternalTemperature"] = _s(b[2:4]) / 10


def _sound(b: bytes, out: dict[str, Any]) -> None:
    out["soundPeak"] = b[0]
    out["soundAvg"] = b[1]


def _grideye(b: bytes, out: dict[str, Any]) -> None:
    ref = b[0]
    out["grideye"] = [ref + b[1 + i] / 10.0 for i in range(64)]


def _tenth(b: bytes) -> float:
    return _s(b) / 10


# type code -> (value size in bytes, how to store it)
_TYPES: dict[int, tuple[int, Callable[[bytes, dict[str, Any]], None]]] = {
    0x01: _store("temperature", 2, _tenth),
    0x02: _store("humidity", 1, _u),
    0x03: (3, _acc),
    0x04: _store("light", 2, _u),
    0x05: _store("motion", 1, _u),
    0x06: _store("co2", 2, _u),
    0x07: _store("vdd", 2, _u),
    0x08: _store("analog1", 2, _u),
    0x09: (6, _gps),
    0x0A: _store("pulse1", 2, _u),
    0x0B: _store("pulseAbs", 4, _u),
    0x0C: _store("externalTemperature", 2, _tenth),
    0x0D: _store("digital", 1, _u),
    0x0E: _store("distance", 2, _u),
    0x0F: _store("accMotion", 1, _u),
    0x10: (4, _ir),
    0x11: _store("occupancy", 1, _u),
    0x12: _store("waterleak", 1, _u),
    0x13: (65, _grideye),
    0x14: _store("pressure", 4, lambda b: _u(b) / 1000),
    0x15: (2, _sound),
    0x16: _store("pulse2", 2, _u),
    0x17: _store("pulseAbs2", 4, _u),
    0x18: _store("analog2", 2, _u),
    0x19: _store("externalTemperature2", 2, _tenth),
    0x1A: _store("digital2", 1, _u),
    0x1B: _store("analogUv", 4, _s),
    0x1C: _store("tvoc", 2, _u),
}


class ElsysDecoder:
    """Decoder for every Elsys sensor that speaks the generic TLV payload."""

    id = "elsys/ers"
    # Every Elsys model speaks the same TLV payload, so one decoder answers to all their ids.
    # Device ids as the TTN Device Repository names them ("erseye"/"ersdesk" are kept for configs
    # written before).
    aliases = ("elsys/ers-co2", "elsys/ers-co2-lite", "elsys/ers-sound", "elsys/ers-lite", "elsys/ers-voc",
               "elsys/ers-eye", "elsys/ems", "elsys/ems-lite", "elsys/ems-desk", "elsys/ems-door", "elsys/elt-2",
               "elsys/elt2", "elsys/elt-lite", "elsys/elt-ultrasonic", "elsys/erseye", "elsys/ersdesk")
    # The TTN codec ids this decoder reproduces: every Elsys codec YAML there names the one
    # shared codec file (uplinkDecoder.fileName: elsys.js).
    ttn_codecs = ("elsys/ers-codec", "elsys/ers-co2-codec", "elsys/ers-co2-lite-codec", "elsys/ers-lite-codec",
                  "elsys/ers-sound-codec", "elsys/ers-voc-codec", "elsys/ers-eye-codec", "elsys/ems-codec",
                  "elsys/ems-lite-codec", "elsys/ems-desk-codec", "elsys/ems-door-codec", "elsys/elt-2-codec",
                  "elsys/elt-lite-codec", "elsys/elt-ultrasonic-codec")

    def decode(self, payload: bytes, fport: int, context: DeviceContext) -> DecodeResult:
        """Decode an Elsys TLV payload; unknown types or truncated values are errors."""
        data: dict[str, Any] = {}
        i = 0
        while i < len(payload):
            code = payload[i]
            spec = _TYPES.get(code)
            if spec is None:
                return DecodeResult(None, errors=[f"unknown Elsys type 0x{code:02x} at byte {i}"])
            size, put = spec
            value = payload[i + 1 : i + 1 + size]
            if len(value) != size:
                return DecodeResult(None, errors=[f"Elsys type 0x{code:02x} truncated at byte {i}"])
            put(value, data)
            i += 1 + size
        return DecodeResult(data)


DECODERS = (ElsysDecoder(),)
