"""Talkpool OY1210 CO2 sensor: Talkpool's packed 5-byte measurement uplink.

Written from Talkpool's OY1210 payload description: on fPort 2, a 12-bit temperature and a
12-bit humidity share the first three bytes (byte 2 holds the low nibble of each), followed by
the CO2 concentration as a big-endian 16-bit ppm value. Temperature is (t / 10) - 80 °C and
humidity (h / 10) - 25 %. Output keys are the ones Talkpool's codec returns.
"""

from __future__ import annotations

from edge.decoding.base import DecodeResult, DeviceContext


def _one_decimal(x: float) -> float:
    # The vendor codec rounds to one decimal through a string; do the same so values compare.
    return float(f"{x:.1f}")


class OY1210Decoder:
    """Talkpool OY1210 temperature, humidity and CO2 sensor (fPort 2)."""

    id = "talkpool/oy1210"
    aliases: tuple[str, ...] = ()
    ttn_codecs = ("talkpool/oy1210-codec",)

    def decode(self, payload: bytes, fport: int, context: DeviceContext) -> DecodeResult:
        """Decode the 5-byte measurement; other ports and lengths are errors."""
        if fport != 2:
            return DecodeResult(None, errors=["unknown FPort"])
        if len(payload) != 5:
            return DecodeResult(None, errors=[f"OY1210 uplink must be 5 bytes, got {len(payload)}"])
        b = payload
        temperature = b[0] << 4 | b[2] >> 4
        humidity = b[1] << 4 | b[2] & 0x0F
        return DecodeResult({
            "Temperature": _one_decimal(temperature / 10 - 80),
            "Humidity": _one_decimal(humidity / 10 - 25),
            "CO2": int.from_bytes(b[3:5], "big"),
        })


DECODERS = (OY1210Decoder(),)
