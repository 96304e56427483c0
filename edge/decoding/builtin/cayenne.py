"""Cayenne LPP: the generic channel/type/value payload, with TTN's `<type>_<channel>` keys.

Written from the myDevices Cayenne LPP specification ("Cayenne Low Power Payload"): a payload is
a run of items, each a channel byte, a data type byte (IPSO object id - 3200) and a big-endian
value of the type's fixed size and resolution. Keys follow The Things Stack's CayenneLPP
formatter (`temperature_1`, `accelerometer_2: {x, y, z}`, `gps_3: {latitude, longitude,
altitude}`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edge.decoding.base import DecodeResult, DeviceContext


def _int(b: bytes, signed: bool) -> int:
    return int.from_bytes(b, "big", signed=signed)


@dataclass(frozen=True, slots=True)
class LppType:
    """One LPP data type: key prefix, value size and how the bytes become the value."""

    key: str
    size: int
    read: Callable[[bytes], Any]


def _scalar(divisor: int, signed: bool) -> Callable[[bytes], int | float]:
    # Divide by the resolution's inverse (not multiply by 0.1) so 272 gives exactly 27.2.
    if divisor == 1:
        return lambda b: _int(b, signed)
    return lambda b: _int(b, signed) / divisor


def _xyz(divisor: int) -> Callable[[bytes], dict[str, float]]:
    return lambda b: {axis: _int(b[2 * i : 2 * i + 2], True) / divisor for i, axis in enumerate("xyz")}


def _gps(b: bytes) -> dict[str, float]:
    # Latitude and longitude in 0.0001°, altitude in 0.01 m, each a signed 24-bit integer.
    return {
        "latitude": _int(b[0:3], True) / 10000,
        "longitude": _int(b[3:6], True) / 10000,
        "altitude": _int(b[6:9], True) / 100,
    }


# Data type -> how to read it (the specification's table of IPSO-based types).
_TYPES: dict[int, LppType] = {
    0: LppType("digital_in", 1, _scalar(1, False)),
    1: LppType("digital_out", 1, _scalar(1, False)),
    2: LppType("analog_in", 2, _scalar(100, True)),
    3: LppType("analog_out", 2, _scalar(100, True)),
    101: LppType("luminosity", 2, _scalar(1, False)),
    102: LppType("presence", 1, _scalar(1, False)),
    103: LppType("temperature", 2, _scalar(10, True)),
    104: LppType("relative_humidity", 1, _scalar(2, False)),
    113: LppType("accelerometer", 6, _xyz(1000)),
    115: LppType("barometric_pressure", 2, _scalar(10, False)),
    134: LppType("gyrometer", 6, _xyz(100)),
    136: LppType("gps", 9, _gps),
}




class CayenneLPPDecoder:
    """Decoder for Cayenne LPP payloads on any fPort."""

    id = "cayenne/lpp"
    aliases: tuple[str, ...] = ()
    ttn_codecs: tuple[str, ...] = ()

    def decode(self, payload: bytes, fport: int, context: DeviceContext) -> DecodeResult:
        """Decode every item; an unknown type or a cut-short value is an error."""
        if not payload:
            return DecodeResult(None, errors=["empty payload"])
        data: dict[str, Any] = {}
        i = 0
        while i < len(payload):
            if i + 2 > len(payload):
                return DecodeResult(None, errors=[f"item header truncated at byte {i}"])
            channel, type_id = payload[i], payload[i + 1]
            lpp = _TYPES.get(type_id)
            if lpp is None:
                # Sizes come from the type table, so nothing after an unknown type can be read.
                return DecodeResult(None, errors=[f"unknown LPP data type {type_id} at byte {i + 1}"])
            value = payload[i + 2 : i + 2 + lpp.size]
            if len(value) != lpp.size:
                return DecodeResult(None, errors=[f"LPP {lpp.key} on channel {channel} truncated at byte {i}"])
            data[f"{lpp.key}_{channel}"] = lpp.read(value)
            i += 2 + lpp.size
        return DecodeResult(data)


DECODERS = (CayenneLPPDecoder(),)
