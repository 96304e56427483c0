"""Decentlab DL-MBX, DL-PR26, DL-SHT35, DL-LP8P and DL-TRS11: the Decentlab v2 uplink.

Written from Decentlab's "Payload format" description in each product's data sheet: byte 0 is
the protocol version (2), bytes 1-2 the device id, bytes 3-4 a flags word, then for every sensor
group whose flag bit is set (bit 0 first) a fixed number of big-endian 16-bit words. Each group
turns its words into named values with the conversion the data sheet gives. Output is shaped as
Decentlab's codecs shape it: `{name: {displayName, value, unit?}}` plus `protocol_version` and
`device_id`, so the TTN Device Repository examples compare one to one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edge.decoding.base import DecodeResult, DeviceContext

PROTOCOL_VERSION = 2


@dataclass(frozen=True, slots=True)
class Value:
    """One named value computed from a sensor group's words (and the device parameters)."""

    name: str
    display_name: str
    convert: Callable[[Sequence[int], Mapping[str, float]], float]
    unit: str | None = None


@dataclass(frozen=True, slots=True)
class Sensor:
    """A sensor group: how many 16-bit words it sends when its flag bit is set."""

    words: int
    values: tuple[Value, ...]


def _battery() -> Sensor:
    # Every Decentlab device ends with the battery group: one word in mV.
    return Sensor(1, (Value("battery_voltage", "Battery voltage", lambda x, p: x[0] / 1000, "V"),))


def _pr26_pressure(x: Sequence[int], p: Mapping[str, float]) -> float:
    # The transducer's span is a device parameter (Pmin..Pmax in bar); 16384..49152 covers it.
    return (x[0] - 16384) / 32768 * (p["Pmax"] - p["Pmin"]) + p["Pmin"]


def _trs11_permittivity(x: Sequence[int], p: Mapping[str, float]) -> float:
    # The data sheet's polynomial on the raw reading in tenths, squared. Powers are written as
    # products: that rounds like Go's math.Pow, which produced the TTN example's value.
    r = x[0] / 10
    root = 0.000000002887 * (r * r * r) - 0.0000208 * (r * r) + 0.05276 * r - 43.39
    return root * root


_MBX = (
    Sensor(2, (
        Value("distance", "Distance", lambda x, p: x[0], "mm"),
        Value("number_of_valid_samples", "Number of valid samples", lambda x, p: x[1]),
    )),
    _battery(),
)

_PR26 = (
    Sensor(2, (
        Value("pressure", "Pressure", _pr26_pressure, "bar"),
        Value("temperature", "Temperature", lambda x, p: (x[1] - 384) * 0.003125 - 50, "°C"),
    )),
    _battery(),
)

_SHT35 = (
    Sensor(2, (
        Value("air_temperature", "Air temperature", lambda x, p: 175 * x[0] / 65535 - 45, "°C"),
        Value("air_humidity", "Air humidity", lambda x, p: 100 * x[1] / 65535, "%"),
    )),
    _battery(),
)

_LP8P = (
    Sensor(2, (
        Value("air_temperature", "Air temperature", lambda x, p: 175.72 * x[0] / 65536 - 46.85, "°C"),
        Value("air_humidity", "Air humidity", lambda x, p: 125 * x[1] / 65536 - 6, "%"),
    )),
    Sensor(2, (
        Value("barometer_temperature", "Barometer temperature", lambda x, p: (x[0] - 5000) / 100, "°C"),
        Value("barometric_pressure", "Barometric pressure", lambda x, p: x[1] * 2, "Pa"),
    )),
    Sensor(8, (
        Value("co2_concentration", "CO2 concentration", lambda x, p: x[0] - 32768, "ppm"),
        Value("co2_concentration_lpf", "CO2 concentration LPF", lambda x, p: x[1] - 32768, "ppm"),
        Value("co2_sensor_temperature", "CO2 sensor temperature", lambda x, p: (x[2] - 32768) / 100, "°C"),
        Value("capacitor_voltage_1", "Capacitor voltage 1", lambda x, p: x[3] / 1000, "V"),
        Value("capacitor_voltage_2", "Capacitor voltage 2", lambda x, p: x[4] / 1000, "V"),
        Value("co2_sensor_status", "CO2 sensor status", lambda x, p: x[5]),
        Value("raw_ir_reading", "Raw IR reading", lambda x, p: x[6]),
        Value("raw_ir_reading_lpf", "Raw IR reading LPF", lambda x, p: x[7]),
    )),
    _battery(),
)

_TRS11 = (
    Sensor(2, (
        Value("dielectric_permittivity", "Dielectric permittivity", _trs11_permittivity),
        Value("volumetric_water_content", "Volumetric water content",
              lambda x, p: x[0] / 10 * 0.0003879 - 0.6956, "m³⋅m⁻³"),
        Value("soil_temperature", "Soil temperature", lambda x, p: (x[1] - 32768) / 10, "°C"),
    )),
    _battery(),
)

class DecentlabDecoder:
    """Decoder for one Decentlab model, driven by its sensor-group table.

    `parameters` are the data sheet's device parameters with their defaults; a device's
    ChirpStack variables or tags of the same name (e.g. `Pmax=10` for a 0-10 bar DL-PR26)
    override them.
    """

    def __init__(self, model: str, sensors: tuple[Sensor, ...],
                 ttn_codecs: tuple[str, ...], aliases: tuple[str, ...] = (),
                 parameters: Mapping[str, float] | None = None) -> None:
        self.id = f"decentlab/{model}"
        self.aliases = aliases
        self.ttn_codecs = ttn_codecs
        self._sensors = sensors
        self._parameters = dict(parameters or {})

    def _resolve_parameters(self, context: DeviceContext) -> dict[str, float] | str:
        params = dict(self._parameters)
        for name in params:
            raw = context.variables.get(name, context.tags.get(name))
            if raw is None:
                continue
            try:
                params[name] = float(raw)
            except ValueError:
                return f"device parameter {name}={raw!r} is not a number"
        return params

    def decode(self, payload: bytes, fport: int, context: DeviceContext) -> DecodeResult:
        """Decode a v2 payload; a wrong version or a short payload is an error."""
        if not payload:
            return DecodeResult(None, errors=["empty payload"])
        if payload[0] != PROTOCOL_VERSION:
            # The vendor codec's own wording, so error examples compare too.
            return DecodeResult(None, errors=[f"protocol version {payload[0]} doesn't match v2"])
        if len(payload) < 5:
            return DecodeResult(None, errors=["payload truncated in the header"])
        params = self._resolve_parameters(context)
        if isinstance(params, str):
            return DecodeResult(None, errors=[params])
        device_id = int.from_bytes(payload[1:3], "big")
        flags = int.from_bytes(payload[3:5], "big")
        data: dict[str, Any] = {"protocol_version": PROTOCOL_VERSION, "device_id": device_id}
        pos = 5
        for bit, sensor in enumerate(self._sensors):
            if not flags >> bit & 1:
                continue
            end = pos + 2 * sensor.words
            if end > len(payload):
                return DecodeResult(None, errors=[f"sensor group {bit} truncated at byte {pos}"])
            words = [int.from_bytes(payload[j : j + 2], "big") for j in range(pos, end, 2)]
            pos = end
            for value in sensor.values:
                entry: dict[str, Any] = {"displayName": value.display_name, "value": value.convert(words, params)}
                if value.unit is not None:
                    entry["unit"] = value.unit
                data[value.name] = entry
        return DecodeResult(data)


DECODERS = (
    DecentlabDecoder(
        "dl-mbx", _MBX,
        ("decentlab/dl-mbx-codec",),
    ),
    DecentlabDecoder(
        "dl-pr26", _PR26,
        ("decentlab/dl-pr26-0-1-codec",),
        # The TTN codec is the 0-1 bar variant; other spans are set per device (see class doc).
        parameters={"Pmin": 0.0, "Pmax": 1.0},
    ),
    DecentlabDecoder(
        "dl-sht35", _SHT35,
        ("decentlab/dl-sht35-codec",),
        aliases=("decentlab/dl-sht35-001",),
    ),
    DecentlabDecoder(
        "dl-lp8p", _LP8P,
        ("decentlab/dl-lp8p-codec",),
    ),
    DecentlabDecoder(
        "dl-trs11", _TRS11,
        ("decentlab/dl-trs11-codec",),
    ),
)
