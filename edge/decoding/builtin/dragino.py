"""Dragino LHT65, LDDS75 (two firmware formats) and LDS02: Dragino's fixed-layout uplinks.

Written from the Dragino user manuals (section "Uplink Payload"): each model sends a fixed
big-endian layout on one fPort, with the battery in the low 14 bits of the first word (mV).
Output keys, and the strings some of them carry ("No Sensor", "2799 mm"), are the ones Dragino's
own codecs return, so the TTN Device Repository examples compare one to one.
"""

from __future__ import annotations

from typing import Any

from edge.decoding.base import DecodeResult, DeviceContext


def _unknown_fport() -> DecodeResult:
    # The vendor codecs' wording, so the TTN error examples compare too.
    return DecodeResult(None, errors=["unknown FPort"])


def _u16(b: bytes, i: int) -> int:
    return int.from_bytes(b[i : i + 2], "big")


def _s16(b: bytes, i: int) -> int:
    return int.from_bytes(b[i : i + 2], "big", signed=True)


def _battery_v(b: bytes) -> float:
    # The top two bits of the battery word are flags (status or door/leak state), not voltage.
    return (_u16(b, 0) & 0x3FFF) / 1000


class LHT65Decoder:
    """Dragino LHT65 temperature/humidity sensor with its external-probe modes (fPort 2)."""

    id = "dragino/lht65"
    aliases: tuple[str, ...] = ()
    ttn_codecs = ("dragino/lht65-codec",)

    def decode(self, payload: bytes, fport: int, context: DeviceContext) -> DecodeResult:
        """Decode the 11-byte periodic uplink; datalog poll replies are not decoded."""
        if fport != 2:
            return _unknown_fport()
        if len(payload) != 11:
            return DecodeResult(None, errors=[f"LHT65 uplink must be 11 bytes, got {len(payload)}"])
        b = payload
        ext = b[6] & 0x0F
        if b[6] & 0x40:
            # Bit 6 marks a reply to a datalog poll: a different layout the manual gives separately.
            return DecodeResult(None, errors=["datalog poll reply (byte 6 bit 6) is not decoded"])
        data: dict[str, Any] = {}
        if ext == 0x09:
            # Mode 9 moves the DS18B20 reading into the battery word and the status into byte 4.
            data["TempC_DS"] = _s16(b, 0) / 100
            data["Bat_status"] = b[4] >> 6
        else:
            data["BatV"] = _battery_v(b)
            data["Bat_status"] = b[0] >> 6
        if ext != 0x0F:
            data["TempC_SHT"] = _s16(b, 2) / 100
            data["Hum_SHT"] = (_u16(b, 4) & 0x0FFF) / 10
        if b[6] & 0x80:
            data["No_connect"] = "Sensor no connection"
        if ext == 0:
            data["Ext_sensor"] = "No external sensor"
        elif ext == 1:
            data["Ext_sensor"] = "Temperature Sensor"
            data["TempC_DS"] = _s16(b, 7) / 100
        elif ext == 4:
            data["Work_mode"] = "Interrupt Sensor send"
            data["Exti_pin_level"] = "High" if b[7] else "Low"
            data["Exti_status"] = "True" if b[8] else "False"
        elif ext == 5:
            data["Work_mode"] = "Illumination Sensor"
            data["ILL_lx"] = _u16(b, 7)
        elif ext == 6:
            data["Work_mode"] = "ADC Sensor"
            data["ADC_V"] = _u16(b, 7) / 1000
        elif ext == 7:
            data["Work_mode"] = "Interrupt Sensor count"
            data["Exit_count"] = _u16(b, 7)
        elif ext == 8:
            data["Work_mode"] = "Interrupt Sensor count"
            data["Exit_count"] = int.from_bytes(b[7:11], "big")
        elif ext == 9:
            data["Work_mode"] = "DS18B20 & timestamp"
            data["Systimestamp"] = int.from_bytes(b[7:11], "big")
        elif ext == 0x0F:
            data["Work_mode"] = "DS18B20ID"
            # The probe's 64-bit ROM id, spread over the bytes the SHT values would use.
            data["ID"] = "".join(f"{x:02x} " for x in (*b[2:6], *b[7:11]))
        return DecodeResult(data)


class LDDS75Decoder:
    """Dragino LDDS75 ultrasonic distance sensor, firmware before v1.1.4 (fPort 2).

    The 5-byte frame is battery, distance (mm) and interrupt flag; any other length means the
    probe is missing. The old vendor codec put the battery word under `distance` by mistake;
    this decoder reports the distance there (and, like that codec, also under `value`).
    """

    id = "dragino/ldds75"
    aliases: tuple[str, ...] = ()
    ttn_codecs = ("dragino/ldds75-codec",)

    def decode(self, payload: bytes, fport: int, context: DeviceContext) -> DecodeResult:
        """Decode the distance frame, or report the missing probe as the codec does."""
        if fport != 2:
            return _unknown_fport()
        if not payload:
            return DecodeResult(None, errors=["empty payload"])
        if len(payload) != 5:
            return DecodeResult({"distance": "No Sensor"})
        distance = _u16(payload, 2)
        # Below the 20 mm blind zone the reading is not a distance.
        return DecodeResult({"value": distance, "distance": distance if distance >= 20 else "Invalid Reading"})


class LDDS75v114Decoder:
    """Dragino LDDS75 ultrasonic distance sensor, firmware v1.1.4 and later (fPort 2, 8 bytes)."""

    id = "dragino/ldds75-114"
    aliases: tuple[str, ...] = ()
    ttn_codecs = ("dragino/ldds75-114-codec",)

    def decode(self, payload: bytes, fport: int, context: DeviceContext) -> DecodeResult:
        """Decode battery, distance, interrupt flag, DS18B20 temperature and sensor flag."""
        if fport != 2:
            return _unknown_fport()
        if len(payload) < 8:
            return DecodeResult(None, errors=[f"LDDS75 uplink must be 8 bytes, got {len(payload)}"])
        b = payload
        distance = _u16(b, 2)
        if distance == 0:
            shown = "No Sensor"
        elif distance == 20:
            # 20 mm is what the probe reports inside its blind zone.
            shown = "Invalid Reading"
        else:
            shown = f"{distance} mm"
        return DecodeResult({
            "Bat": _battery_v(b),
            "Distance": shown,
            "Interrupt_flag": b[4],
            "TempC_DS18B20": f"{_s16(b, 5) / 10:.2f}",
            "Sensor_flag": b[7],
        })


class LDS02Decoder:
    """Dragino LDS02 door sensor (fPort 10), in its door, water-leak and combined modes."""

    id = "dragino/lds02"
    aliases: tuple[str, ...] = ()
    ttn_codecs = ("dragino/lds02-codec",)

    def decode(self, payload: bytes, fport: int, context: DeviceContext) -> DecodeResult:
        """Decode the status frame; bytes missing after the mode byte count as zero."""
        if fport != 10:
            return _unknown_fport()
        if len(payload) < 3:
            return DecodeResult(None, errors=[f"LDS02 uplink too short ({len(payload)} bytes)"])
        # The frame is 10 bytes, but the vendor codec reads absent bytes as 0 and the TTN
        # example (7 bytes) depends on that, so pad rather than refuse.
        b = payload.ljust(10, b"\0")
        mod = b[2]
        data: dict[str, Any] = {"BAT_V": _battery_v(b), "MOD": mod}
        door_open = 1 if b[0] & 0x80 else 0
        water_leak = 1 if b[0] & 0x40 else 0
        alarm = b[9] & 0x01
        count = int.from_bytes(b[3:6], "big")
        duration = int.from_bytes(b[6:9], "big")
        if mod == 1:
            data |= {"DOOR_OPEN_STATUS": door_open, "DOOR_OPEN_TIMES": count,
                     "LAST_DOOR_OPEN_DURATION": duration, "ALARM": alarm}
        elif mod == 2:
            data |= {"WATER_LEAK_STATUS": water_leak, "WATER_LEAK_TIMES": count,
                     "LAST_WATER_LEAK_DURATION": duration}
        elif mod == 3:
            data |= {"DOOR_OPEN_STATUS": door_open, "WATER_LEAK_STATUS": water_leak, "ALARM": alarm}
        return DecodeResult(data)


DECODERS = (LHT65Decoder(), LDDS75Decoder(), LDDS75v114Decoder(), LDS02Decoder())
