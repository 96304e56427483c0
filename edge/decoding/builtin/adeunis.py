"""Adeunis COMFORT CO2: Adeunis' frame-code uplinks (data, alarms, daily summary, configuration).

Written from Adeunis' "COMFORT CO2 technical reference manual" (section "Uplink frames"): byte 0
is the frame code, byte 1 the status byte (frame counter in bits 5-7, then configuration
inconsistency, timestamp present, low battery and configuration done), then the frame's
big-endian fields. Frames flagged with a timestamp carry it in their last four bytes (the daily
frame at byte 19), as seconds since 2013-01-01 UTC. Output is shaped as Adeunis' codec shapes it:
everything under `bytes`, with `{unit, value}` or `{unit, values}` objects, so the TTN Device
Repository example compares one to one.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from edge.decoding.base import DecodeResult, DeviceContext

# Adeunis timestamps count from 2013-01-01T00:00:00Z.
_EPOCH_2013 = 1356998400
_CELSIUS = "°C"
# The codec's marker for frames whose length says the network-specific part is missing.
_MISSING_NETWORK = 1


class _Truncated(Exception):
    """A field lies past the end of the frame; never leaves this module (decode turns it into an error)."""


class _Frame:
    """Bounds-checked big-endian reads from one frame."""

    def __init__(self, payload: bytes) -> None:
        self.b = payload

    def _take(self, offset: int, size: int) -> bytes:
        if offset + size > len(self.b):
            raise _Truncated(offset)
        return self.b[offset : offset + size]

    def u8(self, offset: int) -> int:
        return self._take(offset, 1)[0]

    def u16(self, offset: int) -> int:
        return int.from_bytes(self._take(offset, 2), "big")

    def s16(self, offset: int) -> int:
        return int.from_bytes(self._take(offset, 2), "big", signed=True)

    def u32(self, offset: int) -> int:
        return int.from_bytes(self._take(offset, 4), "big")

    @property
    def has_timestamp(self) -> bool:
        return bool(self.b[1] & 0x04)

    def timestamp(self, offset: int) -> str:
        moment = datetime.fromtimestamp(self.u32(offset) + _EPOCH_2013, UTC)
        # JavaScript's Date.toJSON() without its trailing Z, as the codec writes it.
        return moment.strftime("%Y-%m-%dT%H:%M:%S.000")


def _status(f: _Frame) -> dict[str, Any]:
    s = f.b[1]
    return {
        "frameCounter": (s & 0xE0) >> 5,
        # The COMFORT CO2 has no hardware-error bit; the codec reports it as always false.
        "hardwareError": False,
        "lowBattery": bool(s & 0x02),
        "configurationDone": bool(s & 0x01),
        "configurationInconsistency": bool(s & 0x08),
        "timestamp": bool(s & 0x04),
    }


def _measure(unit: str, value: Any) -> dict[str, Any]:
    return {"unit": unit, "value": value}


def _config(f: _Frame, out: dict[str, Any]) -> None:
    samples, periods, period = f.u16(6), f.u16(4), f.u16(8)
    out["dailyFrameActivated"] = f.u16(2) != 0
    out["numberOfHistorizationBeforeSending"] = periods
    out["numberOfSamplingBeforeHistorization"] = samples
    # The sampling period is sent in units of 2 s.
    out["samplingPeriod"] = _measure("s", period * 2)
    out["redundantSamples"] = f.u8(10)
    out["calculatedPeriodRecording"] = _measure("s", period * samples * 2)
    out["calculatedSendingPeriod"] = _measure("s", period * samples * periods * 2)
    if len(f.b) >= 12:
        out["blackOutDuration"] = _measure("h", f.u8(11))
    if len(f.b) >= 13:
        out["blackOutStartTime"] = _measure("h", f.u8(12))


def _daily(f: _Frame, out: dict[str, Any]) -> None:
    if f.has_timestamp:
        out["timestamp"] = f.timestamp(19)
    out["icone"] = f.u8(2)
    # Minutes of "red" air quality, sent in units of 10 min.
    out["qaiRedDuration"] = _measure("min", f.u8(3) * 10)
    out["temperatureMax"] = _measure(_CELSIUS, f.s16(4) / 10)
    out["co2Max"] = _measure("ppm", f.u16(6))
    out["humidityMax"] = _measure("%", f.u8(8))
    out["temperatureMin"] = _measure(_CELSIUS, f.s16(9) / 10)
    if len(f.b) in (19, 23):
        out["co2Min"] = _measure("ppm", f.u16(11))
        out["humidityMin"] = _measure("%", f.u8(13))
        out["temperatureAverage"] = _measure(_CELSIUS, f.s16(14) / 10)
        out["co2Average"] = _measure("ppm", f.u16(16))
        out["humidityAverage"] = _measure("%", f.u8(18))
    elif len(f.b) != 11:
        out["partialDecoding"] = _MISSING_NETWORK


def _data(f: _Frame, out: dict[str, Any]) -> None:
    end = len(f.b) - 4 if f.has_timestamp else len(f.b)
    if end < 2 or (end - 2) % 5:
        raise _Truncated(end)
    if f.has_timestamp:
        out["timestamp"] = f.timestamp(end)
    # Samples of 5 bytes each, newest first: temperature, humidity, CO2.
    offsets = range(2, end, 5)
    out["decodingInfo"] = "values: [t=0, t-1, t-2, ...]"
    out["temperature"] = {"unit": _CELSIUS, "values": [f.s16(o) / 10 for o in offsets]}
    out["humidity"] = {"unit": "%", "values": [f.u8(o + 2) for o in offsets]}
    out["co2"] = {"unit": "ppm", "values": [f.u16(o + 3) for o in offsets]}


def _active(flag: int) -> str:
    return "active" if flag else "inactive"


def _alarm(f: _Frame, out: dict[str, Any]) -> None:
    if f.has_timestamp:
        out["timestamp"] = f.timestamp(len(f.b) - 4)
    flags = f.u8(2)
    out["alarmTemperature"] = {
        "alarmStatus": _active(flags & 0x10), "temperature": _measure(_CELSIUS, f.s16(3) / 10)}
    out["alarmHumidity"] = {"alarmStatus": _active(flags & 0x01), "humidity": _measure("%", f.u8(5))}
    out["alarmCo2"] = {"alarmStatus": _active(flags & 0x20), "co2": _measure("ppm", f.s16(6))}


# Debounce codes of the digital inputs, in ms (technical reference, "digital input" register).
_DEBOUNCE_MS = (0, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 40000, 60000, 300000, 600000)
_EDGE = {0: "deactivated", 1: "highEdge", 2: "lowEdge", 3: "bothEdges"}


def _input_config(f: _Frame, offset: int) -> dict[str, Any]:
    mode = f.u8(offset)
    return {
        "type": _EDGE.get(mode & 0x0F, ""),
        "debouncingPeriod": _measure("ms", _DEBOUNCE_MS[mode >> 4]),
        "threshold": f.u16(offset + 1),
    }


def _inputs_config(f: _Frame, out: dict[str, Any]) -> None:
    out["digitalInput1"] = _input_config(f, 2)
    out["digitalInput2"] = _input_config(f, 5)


def _network_config(f: _Frame, out: dict[str, Any]) -> None:
    # The frame's length says which network sent it: 4 bytes LoRaWAN, 3 or 5 Sigfox.
    n = len(f.b)
    if n == 4:
        flags = f.u8(2)
        out["loraAdr"] = bool(flags & 0x01)
        out["loraProvisioningMode"] = "ABP" if f.u8(3) == 0 else "OTAA"
        out["loraDutycyle"] = "activated" if flags & 0x04 else "deactivated"  # sic, the codec's key
        out["loraClassMode"] = "CLASS C" if flags & 0x20 else "CLASS A"
    elif n in (3, 5):
        out["sigfoxRetry"] = f.u8(2) & 0x03
        if n == 5:
            out["sigfoxDownlinkPeriod"] = _measure("m", f.s16(3))
    else:
        out["partialDecoding"] = _MISSING_NETWORK


_REQUEST_STATUS = {1: "success", 2: "successNoUpdate", 3: "errorCoherency", 4: "errorInvalidRegister",
                   5: "errorInvalidValue", 6: "errorTruncatedValue", 7: "errorAccesNotAllowed"}


def _register_status(f: _Frame, out: dict[str, Any]) -> None:
    out["requestStatus"] = _REQUEST_STATUS.get(f.u8(2), "errorOtherReason")
    out["registerId"] = f.u16(3)


def _versions(f: _Frame, out: dict[str, Any]) -> None:
    out["appVersion"] = ".".join(str(f.u8(i)) for i in (2, 3, 4))
    out["rtuVersion"] = ".".join(str(f.u8(i)) for i in (5, 6, 7))


def _input_alarm(f: _Frame, out: dict[str, Any]) -> None:
    if f.has_timestamp:
        out["timestamp"] = f.timestamp(9)
    state = f.u8(2)
    out["state"] = {"previousFrame": bool(state >> 1 & 1), "current": bool(state & 1)}
    out["counter"] = {"global": f.u32(3), "instantaneous": f.u16(7)}


# Frame code -> (the codec's `type` text, parser).
_FRAMES: dict[int, tuple[str, Callable[[_Frame, dict[str, Any]], None]]] = {
    0x10: ("0x10 Comfort CO2 configuration", _config),
    0x1F: ("0x1f digital input configuration", _inputs_config),
    0x20: ("0x20 Configuration", _network_config),
    0x30: ("0x30 Comfort CO2 Daily frame", _daily),
    0x33: ("0x33 Set register status", _register_status),
    0x37: ("0x37 Software version", _versions),
    0x51: ("0x51 digital input 1 alarm", _input_alarm),
    0x52: ("0x52 digital input 2 alarm", _input_alarm),
    0x6A: ("0x6a Comfort CO2 data", _data),
    0x6B: ("0x6b Comfort CO2 alarm", _alarm),
}


class ComfortCO2Decoder:
    """Adeunis COMFORT CO2 temperature, humidity and CO2 sensor (any fPort)."""

    id = "adeunis/comfort-co2"
    aliases: tuple[str, ...] = ()
    ttn_codecs = ("adeunis/comfort-co2-codec",)

    def decode(self, payload: bytes, fport: int, context: DeviceContext) -> DecodeResult:
        """Decode one frame by its code; unknown codes and short frames are errors."""
        if len(payload) < 2:
            return DecodeResult(None, errors=["frame shorter than its code and status bytes"])
        frame = _FRAMES.get(payload[0])
        if frame is None:
            return DecodeResult(None, errors=[f"unsupported Adeunis frame code 0x{payload[0]:02x}"])
        kind, parse = frame
        f = _Frame(payload)
        content: dict[str, Any] = {"type": kind, "status": _status(f)}
        try:
            parse(f, content)
        except _Truncated:
            return DecodeResult(None, errors=[f"Adeunis frame 0x{payload[0]:02x} truncated ({len(payload)} bytes)"])
        return DecodeResult({"bytes": content})


DECODERS = (ComfortCO2Decoder(),)
