"""Netvox R311A (and R718F/R730F) and R718H: the Netvox 11-byte report and command frames.

Written from the Netvox user manuals (sections "Data Report" and "Example of ConfigureCmd"):
fPort 6 carries reports `version, device type, report type, payload`, where report type 0 is the
startup version report and the others are status reports; fPort 7 carries responses to
configuration commands `command id, device type, payload`. Battery bytes are in 0.1 V with bit 7
flagging a low battery. Output keys are the ones Netvox's codecs return, so the TTN Device
Repository examples compare one to one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from edge.decoding.base import DecodeResult, DeviceContext

FRAME_SIZE = 11

# Fills the model-specific part of a status report: (frame, device name, output).
StatusParser = Callable[[bytes, str | None, dict[str, Any]], None]
# Fills a command response's fields: (frame, output).
ResponseParser = Callable[[bytes, dict[str, Any]], None]


def _js_number(x: float) -> str:
    """A number as JavaScript's String() writes it (no trailing `.0`), as the codecs embed it."""
    return str(int(x)) if x == int(x) else repr(x)


def _volt(b: int) -> float | str:
    # Bit 7 flags a low battery; the vendor codec then reports the voltage as a marked string.
    if b & 0x80:
        return f"{_js_number((b & 0x7F) / 10)}(low battery)"
    return b / 10


def _status(frame: bytes, out: dict[str, Any]) -> None:
    out["Status"] = "Success" if frame[2] == 0 else "Failure"


def _report_config(frame: bytes, out: dict[str, Any]) -> None:
    out["MinTime"] = int.from_bytes(frame[2:4], "big")
    out["MaxTime"] = int.from_bytes(frame[4:6], "big")
    out["BatteryChange"] = frame[6] / 10


def _filter_time(frame: bytes, out: dict[str, Any]) -> None:
    # The filter time is sent in steps of 5 (the manual's unit).
    out["FilterTime"] = frame[2] * 5


def _clear_mode(frame: bytes, out: dict[str, Any]) -> None:
    out["PulseCounterClearMode"] = "Clear when send" if frame[2] == 0 else "Clear when Roll-Over"


# Responses every Netvox device sends to the report-configuration commands.
_CONFIG_RESPONSES: dict[int, tuple[str, ResponseParser]] = {
    0x81: ("ConfigReportRsp", _status),
    0x82: ("ReadConfigReportRsp", _report_config),
}


def _contact_status(frame: bytes, device: str | None, out: dict[str, Any]) -> None:
    out["OnOff"] = frame[4]


def _pulse_status(frame: bytes, device: str | None, out: dict[str, Any]) -> None:
    # The R718H2 has two inputs; the R718H one. Which is which only the device type tells.
    if device == "R718H":
        out["PulseCount"] = int.from_bytes(frame[4:6], "big")
    elif device == "R718H2":
        out["PulseCount1"] = int.from_bytes(frame[4:6], "big")
        out["PulseCount2"] = int.from_bytes(frame[6:8], "big")


class NetvoxDecoder:
    """Decoder for one Netvox codec family: its device types, status layout and commands."""

    def __init__(self, model: str, device_types: Mapping[int, str], status: StatusParser,
                 responses: Mapping[int, tuple[str, ResponseParser]],
                 ttn_codecs: tuple[str, ...], aliases: tuple[str, ...] = ()) -> None:
        self.id = f"netvox/{model}"
        self.aliases = aliases
        self.ttn_codecs = ttn_codecs
        self._device_types = device_types
        self._status = status
        self._responses = responses

    def decode(self, payload: bytes, fport: int, context: DeviceContext) -> DecodeResult:
        """Decode a report (fPort 6) or a command response (fPort 7)."""
        if fport not in (6, 7):
            return DecodeResult(None, errors=["unknown FPort"])
        if len(payload) < FRAME_SIZE:
            return DecodeResult(None, errors=[f"Netvox frame must be {FRAME_SIZE} bytes, got {len(payload)}"])
        b = payload
        data: dict[str, Any] = {}
        warnings: list[str] = []
        device = self._device_types.get(b[1])
        if device is None:
            # Another model's frame: its fields may mean something else, so say so.
            warnings.append(f"unknown Netvox device type 0x{b[1]:02x}")
        else:
            data["Device"] = device
        if fport == 6:
            if b[2] == 0x00:
                data["SWver"] = b[3] / 10
                data["HWver"] = b[4]
                data["Datecode"] = b[5:9].hex()
            else:
                data["Volt"] = _volt(b[3])
                self._status(b, device, data)
        else:
            response = self._responses.get(b[0])
            if response is None:
                warnings.append(f"unknown Netvox command 0x{b[0]:02x}")
            else:
                name, parse = response
                data["Cmd"] = name
                parse(b, data)
        return DecodeResult(data, warnings=warnings)


DECODERS = (
    NetvoxDecoder(
        "r311a",
        {0x02: "R311A", 0x1D: "R718F", 0x7D: "R730F"},
        _contact_status,
        _CONFIG_RESPONSES,
        ("netvox/r311a-codec",),
        aliases=("netvox/r718f", "netvox/r730f"),
    ),
    NetvoxDecoder(
        "r718h",
        {0x1F: "R718H", 0x3F: "R718H2"},
        _pulse_status,
        {
            **_CONFIG_RESPONSES,
            0x83: ("SetFiltertimeRsp", _status),
            0x84: ("GetFiltertimeRsp", _filter_time),
            0x85: ("SetPulseCounterClearModeRsp", _status),
            0x86: ("GetPulseCounterClearModeRsp", _clear_mode),
        },
        ("netvox/r718h-codec",),
        aliases=("netvox/r718h2",),
    ),
)
