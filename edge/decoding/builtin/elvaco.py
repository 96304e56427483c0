"""Elvaco CMi4110 (and CMi4111) M-Bus module for Landis+Gyr UH50/T550 heat meters: M-Bus records.

Written from Elvaco's CMi4110 user manual (section "Message formats") and EN 13757-3, which it
follows: byte 0 names the message format, then come M-Bus data records, each a DIF (data field:
integer or BCD, and its size), optional DIFEs, a VIF (quantity and decimal exponent), optional
VIFEs, and the value, least significant byte first. Output keys are the ones Elvaco's codec
returns (`energy`, `volume`, `power`, `flow`, `flow_temperature`, `return_temperature`, `serial`,
`error_flag`), in kWh, m3, kW, m3/h and °C, so the TTN Device Repository example compares.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from edge.decoding.base import DecodeResult, DeviceContext

# DIF data field (low nibble) -> (value length in bytes, encoding).
_DATA_FIELDS: dict[int, tuple[int, str]] = {
    0x1: (1, "int"), 0x2: (2, "int"), 0x3: (3, "int"), 0x4: (4, "int"), 0x5: (4, "real"),
    0x6: (6, "int"), 0x7: (8, "int"),
    0x9: (1, "bcd"), 0xA: (2, "bcd"), 0xB: (3, "bcd"), 0xC: (4, "bcd"), 0xE: (6, "bcd"),
}

# Energy registers beyond the first are tariff registers, named as Elvaco's codec names them.
_MAX_ENERGY_REGISTERS = 4


@dataclass(frozen=True, slots=True)
class _Quantity:
    """What a VIF means: output key and the power of ten that brings the value to the key's unit."""

    key: str
    exponent: int


def _vif(vif: int) -> _Quantity | None:
    """Map a primary VIF to the codec's key; the low bits are the decimal exponent (EN 13757-3)."""
    n3, n2 = vif & 0x07, vif & 0x03
    if vif <= 0x07:
        return _Quantity("energy", n3 - 6)  # 10^(n-3) Wh, in kWh
    if 0x10 <= vif <= 0x17:
        return _Quantity("volume", n3 - 6)  # 10^(n-6) m3
    if 0x28 <= vif <= 0x2F:
        return _Quantity("power", n3 - 6)  # 10^(n-3) W, in kW
    if 0x38 <= vif <= 0x3F:
        return _Quantity("flow", n3 - 6)  # 10^(n-6) m3/h
    if 0x58 <= vif <= 0x5B:
        return _Quantity("flow_temperature", n2 - 3)  # 10^(n-3) °C
    if 0x5C <= vif <= 0x5F:
        return _Quantity("return_temperature", n2 - 3)
    if vif == 0x78:
        return _Quantity("serial", 0)  # fabrication number
    return None


# VIFs from the 0xFD extension table that the module sends.
_FD_VIFS = {0x17: _Quantity("error_flag", 0)}


class _Malformed(Exception):
    """The frame cannot be read further; never leaves this module (decode returns an error)."""


def _bcd(raw: bytes) -> int:
    digits = raw[::-1].hex()
    sign = 1
    # EN 13757-3: an F in the most significant nibble marks a negative BCD value.
    if digits[0] == "f":
        sign, digits = -1, digits[1:]
    if not digits.isdigit():
        raise _Malformed(f"invalid BCD value {raw.hex()}")
    return sign * int(digits)


def _scale(value: int | float, exponent: int) -> int | float:
    # Divide rather than multiply by 10^-n so 998997 / 100 is exactly the double 9989.97.
    factor: int = 10 ** abs(exponent)
    return value * factor if exponent >= 0 else value / factor


class CMi4110Decoder:
    """Elvaco CMi4110 standard and scheduled messages (fPort 2)."""

    id = "elvaco/cmi4110"
    aliases = ("elvaco/cmi4111",)
    ttn_codecs = ("elvaco/cmi4110-codec",)

    def decode(self, payload: bytes, fport: int, context: DeviceContext) -> DecodeResult:
        """Decode every M-Bus record after the message-format byte."""
        if fport != 2:
            return DecodeResult(None, errors=["unknown FPort"])
        if len(payload) < 2:
            return DecodeResult(None, errors=["no M-Bus records in the payload"])
        data: dict[str, Any] = {}
        warnings: list[str] = []
        try:
            self._records(payload, data, warnings)
        except _Malformed as exc:
            return DecodeResult(None, errors=[str(exc)])
        return DecodeResult(data, warnings=warnings)

    def _records(self, payload: bytes, data: dict[str, Any], warnings: list[str]) -> None:
        i = 1  # byte 0 is the message format
        energy_registers = 0
        while i < len(payload):
            start = i
            dif = payload[i]
            i += 1
            plain = True  # instantaneous value, storage 0, tariff 0: the only kind the codec reads
            if dif & 0x70:
                plain = False
            ext = dif & 0x80
            while ext:
                if i >= len(payload):
                    raise _Malformed(f"DIFE missing at byte {i}")
                plain = False
                ext = payload[i] & 0x80
                i += 1
            if i >= len(payload):
                raise _Malformed(f"VIF missing at byte {i}")
            vif = payload[i]
            i += 1
            vifes: list[int] = []
            ext = vif & 0x80
            while ext:
                if i >= len(payload):
                    raise _Malformed(f"VIFE missing at byte {i}")
                vifes.append(payload[i])
                ext = payload[i] & 0x80
                i += 1
            field = _DATA_FIELDS.get(dif & 0x0F)
            if field is None:
                raise _Malformed(f"unsupported DIF 0x{dif:02x} at byte {start}")
            size, encoding = field
            raw = payload[i : i + size]
            if len(raw) != size:
                raise _Malformed(f"record at byte {start} truncated")
            i += size
            if vif == 0xFD:
                quantity = _FD_VIFS.get(vifes[0] & 0x7F) if vifes else None
            else:
                quantity = None if vifes else _vif(vif & 0x7F)
            if quantity is None or not plain:
                # The length is known, so one unrecognised record need not cost the others.
                warnings.append(f"skipped M-Bus record DIF 0x{dif:02x} VIF 0x{vif:02x} at byte {start}")
                continue
            value: int | float
            if encoding == "bcd":
                value = _bcd(raw)
            elif encoding == "real":
                value = struct.unpack("<f", raw)[0]
            else:
                # Error flags are a bit field, so they are read as the unsigned integer they are.
                value = int.from_bytes(raw, "little", signed=quantity.key != "error_flag")
            key = quantity.key
            if key == "energy":
                if energy_registers >= _MAX_ENERGY_REGISTERS:
                    raise _Malformed("more than 4 energy registers")
                if energy_registers:
                    key = f"energy_tariff_{energy_registers}"
                energy_registers += 1
            data[key] = _scale(value, quantity.exponent)


DECODERS = (CMi4110Decoder(),)
