"""Browan TBHH100 and TBMS100 (Tabs sensors): Browan's bit-packed status uplinks.

Written from Browan's Tabs payload documents ("Healthy Home Sensor" and "Motion Sensor"): byte 0
is a status byte, byte 1's low nibble the battery as (25 + n) / 10 V, byte 2's low seven bits the
board temperature plus 32 °C; the rest is model-specific, little-endian. Each model reports on
its own fPort. Output keys are the ones Browan's codecs return, so the TTN Device Repository
examples compare one to one.
"""

from __future__ import annotations

from typing import Any

from edge.decoding.base import DecodeResult, DeviceContext


def _battery(b: int) -> float:
    return (25 + (b & 0x0F)) / 10


def _temperature(b: int) -> int:
    return (b & 0x7F) - 32


class TBHH100Decoder:
    """Browan TBHH100 temperature and humidity sensor (fPort 103)."""

    id = "browan/tbhh100"
    aliases: tuple[str, ...] = ()
    ttn_codecs = ("browan/tbhh100-codec",)

    def decode(self, payload: bytes, fport: int, context: DeviceContext) -> DecodeResult:
        """Decode status, battery, temperature and humidity; bytes 4-7 are unused on this model."""
        if fport != 103:
            return DecodeResult(None, errors=["unknown FPort"])
        if len(payload) < 4:
            return DecodeResult(None, errors=[f"TBHH100 uplink too short ({len(payload)} bytes)"])
        data: dict[str, Any] = {
            # Browan's codec reports the status byte's upper five bits, so the same is kept here.
            "status": payload[0] >> 3,
            "battery": _battery(payload[1]),
            "temperature": _temperature(payload[2]),
            "humidity": payload[3] & 0x7F,
        }
        return DecodeResult(data)


class TBMS100Decoder:
    """Browan TBMS100 PIR motion sensor (fPort 102)."""

    id = "browan/tbms100"
    aliases: tuple[str, ...] = ()
    ttn_codecs = ("browan/tbms100-codec",)

    def decode(self, payload: bytes, fport: int, context: DeviceContext) -> DecodeResult:
        """Decode occupancy, battery, board temperature, time since the last event and the count."""
        if fport != 102:
            return DecodeResult(None, errors=["unknown FPort"])
        if len(payload) < 8:
            return DecodeResult(None, errors=[f"TBMS100 uplink too short ({len(payload)} bytes)"])
        data: dict[str, Any] = {
            "status": payload[0] & 0x01,
            "battery": _battery(payload[1]),
            "temperatureBoard": _temperature(payload[2]),
            "time": int.from_bytes(payload[3:5], "little"),
            "count": int.from_bytes(payload[5:8], "little"),
        }
        return DecodeResult(data)


DECODERS = (TBHH100Decoder(), TBMS100Decoder())
