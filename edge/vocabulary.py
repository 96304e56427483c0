"""The one vocabulary of reading names and units that every decoder maps its fields to.

Names are SenML name components (RFC 9039 §3.2: letters, digits, '.', '-'), appended to the
base name `urn:dev:mac:<dev_eui>_`. Units are registered SenML primary units (RFC 8428 §12.1), so
packs stay at SenML version 10: percentages other than humidity and battery are ratios ('/'),
ppm becomes '/' times 1e-6, hPa becomes Pa, mm becomes m, mV becomes V.
docs/vocabulary.md is generated from this table and a test keeps the two in step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from edge.errors import UnitMismatch


@dataclass(frozen=True, slots=True)
class Quantity:
    """A named quantity with its fixed unit, a one-line meaning and its physical range.

    `unit` is a registered SenML unit, or None for dimensionless values and states. `low`/`high`
    bound what the quantity can physically be (in `unit`): a field map whose conversion puts an
    example outside them has the wrong unit, and health checks flag readings outside them.
    `state` quantities are sent as SenML `vs`/`vb` (strings, booleans, enums).
    """

    name: str
    unit: str | None
    description: str
    low: float = -math.inf
    high: float = math.inf
    state: bool = False


_T = (-90.0, 150.0)  # any temperature a municipal sensor reports, devices' own included
_PM = (0.0, 0.01)  # mass concentration up to 10 g/m3 (sensors saturate near 1 mg/m3)
_GAS = (0.0, 1.0)  # a gas as a ratio of the air
# Angles are sent in radians: SenML registers `deg` (RFC 8798) but marks it not recommended, `rad` preferred.
_TURN = (-6.2832, 6.2832)  # a full turn either way (2π, rounded up: 360° converts to 6.28318530718)

QUANTITIES: tuple[Quantity, ...] = (
    # Climate
    Quantity("temperature", "Cel", "air or device temperature", *_T),
    Quantity("temperature-external", "Cel", "temperature from an external probe", *_T),
    Quantity("temperature-soil", "Cel", "soil temperature", *_T),
    Quantity("temperature-water", "Cel", "water temperature", *_T),
    Quantity("temperature-flow", "Cel", "heating or cooling flow (supply) temperature", *_T),
    Quantity("temperature-return", "Cel", "heating or cooling return temperature", *_T),
    Quantity("temperature-average", "Cel", "temperature averaged by the device over its averaging window", *_T),
    Quantity("temperature-min", "Cel", "lowest temperature over the device's reporting window", *_T),
    Quantity("temperature-max", "Cel", "highest temperature over the device's reporting window", *_T),
    Quantity("temperature-setpoint", "Cel", "target temperature of a thermostat or radiator valve", *_T),
    Quantity("temperature-internal", "Cel", "temperature of the device's own electronics or sensor chip", *_T),
    Quantity("temperature-surface", "Cel", "temperature of a surface (road, leaf, wall), contact or infrared", *_T),
    Quantity("dew-point", "Cel", "dew point temperature", *_T),
    Quantity("humidity", "%RH", "relative humidity, 0-100", 0, 100),
    Quantity("humidity-external", "%RH", "relative humidity from an external probe, 0-100", 0, 100),
    Quantity("illuminance", "lx", "ambient light", 0, 250000),
    Quantity("illuminance-level", None, "ambient light as a vendor level (e.g. 0-5), not lux", 0, 1000),
    Quantity("pressure", "Pa", "atmospheric (barometric) pressure", 30000, 120000),
    Quantity("pressure-differential", "Pa", "differential pressure (across a filter, between rooms)", -1e6, 1e6),
    Quantity("vapour-pressure", "Pa", "partial pressure of water vapour in the air", 0, 20000),
    Quantity("vapour-pressure-deficit", "Pa", "vapour pressure deficit (saturation minus actual)", 0, 20000),
    # Air quality
    Quantity("co2", "/", "carbon dioxide as a ratio (ppm × 1e-6)", *_GAS),
    Quantity("tvoc", "/", "total volatile organic compounds as a ratio (ppb × 1e-9)", *_GAS),
    Quantity("tvoc-mass", "kg/m3", "total volatile organic compounds as a mass concentration (µg/m3 × 1e-9)", *_PM),
    Quantity("voc-index", None, "volatile organic compounds as a vendor index (e.g. Sensirion 1-500)", 0, 1000),
    Quantity("air-quality-index", None, "indoor air quality as a vendor index (e.g. Bosch IAQ 0-500)", 0, 1000),
    Quantity("pm1", "kg/m3", "particulate matter up to 1 µm (µg/m3 × 1e-9)", *_PM),
    Quantity("pm2.5", "kg/m3", "particulate matter up to 2.5 µm (µg/m3 × 1e-9)", *_PM),
    Quantity("pm4", "kg/m3", "particulate matter up to 4 µm (µg/m3 × 1e-9)", *_PM),
    Quantity("pm10", "kg/m3", "particulate matter up to 10 µm (µg/m3 × 1e-9)", *_PM),
    Quantity("hcho", "kg/m3", "formaldehyde (mg/m3 × 1e-6)", *_PM),
    Quantity("o3", "/", "ozone as a ratio (ppm × 1e-6)", *_GAS),
    Quantity("no2", "/", "nitrogen dioxide as a ratio (ppm × 1e-6)", *_GAS),
    Quantity("no", "/", "nitrogen monoxide as a ratio (ppm × 1e-6)", *_GAS),
    Quantity("co", "/", "carbon monoxide as a ratio (ppm × 1e-6)", *_GAS),
    Quantity("so2", "/", "sulphur dioxide as a ratio (ppm × 1e-6)", *_GAS),
    Quantity("h2s", "/", "hydrogen sulphide as a ratio (ppm × 1e-6)", *_GAS),
    Quantity("nh3", "/", "ammonia as a ratio (ppm × 1e-6)", *_GAS),
    Quantity("ch4", "/", "methane as a ratio (ppm × 1e-6)", *_GAS),
    Quantity("o2", "/", "oxygen as a ratio (% × 0.01)", *_GAS),
    # Sound
    Quantity("sound-level", "dB", "A-weighted sound pressure level, average (LAeq)", 0, 200),
    Quantity("sound-level-peak", "dB", "A-weighted sound pressure level, peak (LAmax)", 0, 200),
    Quantity("sound-level-min", "dB", "A-weighted sound pressure level, minimum (LAmin)", 0, 200),
    # Presence, people, parking, doors
    Quantity("motion", "count", "motion (PIR) events counted since the last uplink", 0, 1e9),
    Quantity("motion-count-total", "count", "motion events, absolute counter", 0, 1e15),
    Quantity("motion-state", None, "motion (PIR) state as the vendor reports it, e.g. 'trigger' or 'idle'", state=True),
    Quantity("occupancy", None, "presence of a person, vehicle or object: 0 free, 1 pending, 2 occupied, or"
             " true/false (desks, rooms, parking spaces)", state=True),
    Quantity("people-count", "count", "people present or counted in the device's window", 0, 1e9),
    Quantity("people-in", "count", "people counted entering since the last uplink (or counter)", 0, 1e15),
    Quantity("people-out", "count", "people counted leaving since the last uplink (or counter)", 0, 1e15),
    Quantity("people-in-total", "count", "people counted entering, the device's running total", 0, 1e15),
    Quantity("people-out-total", "count", "people counted leaving, the device's running total", 0, 1e15),
    Quantity("door-open", None, "door or window open (true/false or the vendor's state)", state=True),
    Quantity("open-count", "count", "times opened, absolute counter", 0, 1e15),
    Quantity("open-duration", "s", "how long the door or window was last open", 0, 1e9),
    Quantity("button", None, "button pressed (true/false) or press type", state=True),
    Quantity("digital-input", None, "state of a digital (dry contact) input, 0 or 1", state=True),
    Quantity("digital-output", None, "state of a digital output or relay, 0 or 1", state=True),
    Quantity("tilt", None, "tilt or position state as the vendor reports it, e.g. 'normal' or 'tilt'", state=True),
    Quantity("tilt-angle", "rad", "tilt angle from the vertical or the reference position (degrees × π/180)", *_TURN),
    Quantity("tilt-angle-x", "rad", "tilt of the device's X axis (three-axis tilt sensors)", *_TURN),
    Quantity("tilt-angle-y", "rad", "tilt of the device's Y axis", *_TURN),
    Quantity("tilt-angle-z", "rad", "tilt of the device's Z axis", *_TURN),
    Quantity("tamper", None, "tamper or removal alarm state", state=True),
    Quantity("alarm", None, "a device alarm state (the vendor's name for it in the value)", state=True),
    Quantity("device-status", None, "device status, error or operating mode as the vendor reports it", state=True),
    Quantity("smoke-alarm", None, "smoke detected (true/1) or not, from a smoke alarm", state=True),
    # Water, leak, level, waste
    Quantity("water-leak", None, "water leak state or level", state=True),
    Quantity("wetness", "/", "relative wetness from a capacitive leak sensor as a ratio (0-1)", 0, 1),
    Quantity("leak-count", "count", "water leak events, absolute counter", 0, 1e15),
    Quantity("leak-duration", "s", "how long the last water leak lasted", 0, 1e9),
    Quantity("distance", "m", "distance measured by a range sensor", 0, 1000),
    Quantity("level", "m", "liquid, snow or fill level as a height", -100, 1000),
    Quantity("fill-level", "/", "fill level of a bin or tank as a ratio (0-1)", 0, 1),
    Quantity("level-state", None, "liquid or fill level as the state of a level switch (e.g. 'full')", state=True),
    Quantity("pressure-water", "Pa", "liquid or gauge pressure (pipes, tanks, water level probes)", -1e5, 1e8),
    Quantity("weight", "kg", "weight or load", -1e6, 1e6),
    # Soil and water quality
    # A probe in air reads slightly below 0 with the usual (Topp) calibration: not a wrong unit.
    Quantity("soil-moisture", "/", "volumetric water content as a ratio (0-1)", -0.05, 1),
    Quantity("soil-water-potential", "Pa", "soil water potential or tension (negative: suction)", -1e8, 1e6),
    Quantity("conductivity", "S/m", "electrical conductivity", 0, 1000),
    Quantity("permittivity", None, "dielectric permittivity (relative)", 0, 1000),
    Quantity("ph", "pH", "acidity", 0, 14),
    Quantity("dissolved-oxygen", "kg/m3", "dissolved oxygen (mg/L × 1e-3)", 0, 1),
    Quantity("dissolved-oxygen-saturation", "/", "dissolved oxygen as a ratio of saturation (% × 0.01)", 0, 5),
    Quantity("redox-potential", "V", "oxidation-reduction potential (ORP) of water (mV × 1e-3)", -5, 5),
    Quantity("turbidity", None, "water turbidity in nephelometric turbidity units (NTU; no SenML unit)", 0, 100000),
    # Weather
    Quantity("wind-speed", "m/s", "wind speed, average", 0, 150),
    Quantity("wind-gust", "m/s", "wind speed, gust (maximum)", 0, 150),
    Quantity("wind-direction", "rad", "direction the wind comes from, clockwise from north", 0, _TURN[1]),
    Quantity("precipitation", "m", "rain or snow depth since the last uplink, or a counter", 0, 1e6),
    Quantity("precipitation-rate", "m/s", "rain or snow intensity", 0, 0.01),
    Quantity("precipitation-total", "m", "rain or snow depth, the device's running total (tipping bucket)", 0, 1e6),
    Quantity("solar-radiation", "W/m2", "global solar irradiance", 0, 2000),
    Quantity("solar-radiation-reflected", "W/m2", "solar irradiance reflected by the surface below", 0, 2000),
    Quantity("albedo", "/", "ratio of reflected to incoming solar radiation", 0, 1),
    Quantity("uv-index", None, "UV index", 0, 30),
    Quantity("lightning-count", "count", "lightning strikes detected since the last uplink", 0, 1e9),
    Quantity("lightning-distance", "m", "average distance of the detected lightning strikes", 0, 100000),
    # Meters and energy
    Quantity("pulse-count", "count", "pulses counted since the last uplink", 0, 1e15),
    Quantity("pulse-count-total", "count", "absolute pulse counter", 0, 1e15),
    Quantity("energy", "J", "energy meter reading (kWh × 3.6e6)", -1e18, 1e18),
    Quantity("energy-reactive", "vars", "reactive energy meter reading (kvarh × 3.6e6)", -1e18, 1e18),
    Quantity("energy-export", "J", "active energy exported to the grid, meter reading (kWh × 3.6e6)", -1e18, 1e18),
    Quantity("energy-reactive-export", "vars", "reactive energy exported, meter reading (kvarh × 3.6e6)", -1e18, 1e18),
    Quantity("power", "W", "instantaneous (active) power", -1e10, 1e10),
    Quantity("power-export", "W", "active power exported to the grid", -1e10, 1e10),
    Quantity("power-reactive", "var", "instantaneous reactive power", -1e10, 1e10),
    Quantity("power-apparent", "VA", "instantaneous apparent power", 0, 1e10),
    Quantity("power-factor", "/", "power factor as a ratio (-1 to 1)", -1, 1),
    Quantity("phase-angle", "rad", "phase angle between voltage and current of a mains phase", *_TURN),
    Quantity("voltage", "V", "measured analog or mains voltage", -1e6, 1e6),
    Quantity("current", "A", "electric current", -1e6, 1e6),
    Quantity("current-max", "A", "highest electric current over the device's reporting window", -1e6, 1e6),
    Quantity("current-min", "A", "lowest electric current over the device's reporting window", -1e6, 1e6),
    Quantity("frequency", "Hz", "mains or signal frequency", 0, 1e9),
    Quantity("volume", "m3", "volume meter reading", -1e12, 1e12),
    Quantity("flow", "m3/s", "volume flow", -1e3, 1e3),
    Quantity("valve-position", "/", "valve or actuator opening as a ratio (0-1)", 0, 1),
    # Position
    Quantity("latitude", "lat", "WGS84 latitude", -90, 90),
    Quantity("longitude", "lon", "WGS84 longitude", -180, 180),
    Quantity("altitude", "m", "altitude above sea level", -1000, 20000),
    Quantity("speed", "m/s", "ground speed of a tracked vehicle, bin or asset (GNSS)", 0, 350),
    Quantity("heading", "rad", "direction of travel of a tracked asset, clockwise from north", 0, _TURN[1]),
    Quantity("position-accuracy", "m", "estimated horizontal accuracy of a position fix", 0, 100000),
    Quantity("acceleration-x", None, "accelerometer X axis, vendor units"),
    Quantity("acceleration-y", None, "accelerometer Y axis, vendor units"),
    Quantity("acceleration-z", None, "accelerometer Z axis, vendor units"),
    # The device itself
    Quantity("battery-voltage", "V", "battery or supply voltage", 0, 100),
    Quantity("battery", "%EL", "remaining battery, 0-100", 0, 100),
    Quantity("battery-low", None, "low-battery flag as the device reports it", state=True),
)

BY_NAME: dict[str, Quantity] = {q.name: q for q in QUANTITIES}


# The units codecs emit, as they write them, and how each becomes a SenML primary unit:
# value_in_primary = value × scale + offset (the RFC 8798 §3 rule). Registered primary units map
# to themselves; RFC 8798 secondary units use their registered scale; the rest are spellings and
# units vendors use that SenML lacks (°C, ppb, mg/m3, L, m3/h, bar, µS/cm...). A field map names the
# unit its codec emits, never a conversion factor, so a map cannot get a factor wrong.
EMITTED_UNITS: dict[str, tuple[str, float, float]] = {
    **{u: (u, 1.0, 0.0) for u in (
        "m", "kg", "g", "s", "A", "K", "cd", "mol", "Hz", "rad", "sr", "N", "Pa", "J", "W", "C", "V", "F", "Ohm",
        "S", "Wb", "T", "H", "Cel", "lm", "lx", "Bq", "Gy", "Sv", "kat", "m2", "m3", "l", "m/s", "m/s2", "m3/s",
        "l/s", "W/m2", "cd/m2", "bit", "bit/s", "lat", "lon", "pH", "dB", "dBW", "Bspl", "count", "/", "%RH",
        "%EL", "EL", "1/s", "1/min", "beat/min", "beats", "S/m", "B", "VA", "VAs", "var", "vars", "J/m", "kg/m3",
        "deg")},
    # RFC 8798 §3 secondary units.
    "ms": ("s", 1e-3, 0.0), "min": ("s", 60.0, 0.0), "h": ("s", 3600.0, 0.0), "MHz": ("Hz", 1e6, 0.0),
    "kW": ("W", 1e3, 0.0), "kVA": ("VA", 1e3, 0.0), "kvar": ("var", 1e3, 0.0), "Ah": ("C", 3600.0, 0.0),
    "Wh": ("J", 3600.0, 0.0), "kWh": ("J", 3.6e6, 0.0), "varh": ("vars", 3600.0, 0.0),
    "kvarh": ("vars", 3.6e6, 0.0), "kVAh": ("VAs", 3.6e6, 0.0), "mV": ("V", 1e-3, 0.0), "mA": ("A", 1e-3, 0.0),
    "dBm": ("dBW", 1.0, -30.0), "ug/m3": ("kg/m3", 1e-9, 0.0), "mm/h": ("m/s", 1 / 3.6e6, 0.0),
    "m/h": ("m/s", 1 / 3600, 0.0), "ppm": ("/", 1e-6, 0.0), "/100": ("/", 0.01, 0.0), "/1000": ("/", 1e-3, 0.0),
    "hPa": ("Pa", 100.0, 0.0), "mm": ("m", 1e-3, 0.0), "cm": ("m", 0.01, 0.0), "km": ("m", 1e3, 0.0),
    "km/h": ("m/s", 1 / 3.6, 0.0),
    # Spellings and units vendors use that SenML does not register.
    "%": ("/", 0.01, 0.0),  # a vendor's percent; to %RH and %EL it converts 1:1 (see conversion())
    "°C": ("Cel", 1.0, 0.0), "degC": ("Cel", 1.0, 0.0), "°F": ("Cel", 5 / 9, -160 / 9),
    "degF": ("Cel", 5 / 9, -160 / 9), "ppb": ("/", 1e-9, 0.0), "µg/m3": ("kg/m3", 1e-9, 0.0),
    "µg/m³": ("kg/m3", 1e-9, 0.0), "ug/m³": ("kg/m3", 1e-9, 0.0), "mg/m3": ("kg/m3", 1e-6, 0.0),
    "mg/m³": ("kg/m3", 1e-6, 0.0), "mg/L": ("kg/m3", 1e-3, 0.0), "mg/l": ("kg/m3", 1e-3, 0.0),
    "kPa": ("Pa", 1e3, 0.0), "MPa": ("Pa", 1e6, 0.0), "mbar": ("Pa", 100.0, 0.0), "bar": ("Pa", 1e5, 0.0),
    "cbar": ("Pa", 1e3, 0.0), "psi": ("Pa", 6894.757293168361, 0.0), "mmHg": ("Pa", 133.322387415, 0.0),
    "mmH2O": ("Pa", 9.80665, 0.0), "L": ("m3", 1e-3, 0.0), "mL": ("m3", 1e-6, 0.0),
    "dL": ("m3", 1e-4, 0.0), "m³": ("m3", 1.0, 0.0), "m3/h": ("m3/s", 1 / 3600, 0.0),
    "m³/h": ("m3/s", 1 / 3600, 0.0), "L/h": ("m3/s", 1 / 3.6e6, 0.0), "l/h": ("m3/s", 1 / 3.6e6, 0.0),
    "L/min": ("m3/s", 1 / 6e4, 0.0), "l/min": ("m3/s", 1 / 6e4, 0.0), "L/s": ("m3/s", 1e-3, 0.0),
    "MWh": ("J", 3.6e9, 0.0), "GJ": ("J", 1e9, 0.0), "MJ": ("J", 1e6, 0.0), "kJ": ("J", 1e3, 0.0),
    "MW": ("W", 1e6, 0.0), "µA": ("A", 1e-6, 0.0), "uA": ("A", 1e-6, 0.0), "kV": ("V", 1e3, 0.0),
    "dBA": ("dB", 1.0, 0.0), "dB(A)": ("dB", 1.0, 0.0), "in": ("m", 0.0254, 0.0), "ft": ("m", 0.3048, 0.0),
    "inch": ("m", 0.0254, 0.0), "mph": ("m/s", 0.44704, 0.0), "kn": ("m/s", 1852 / 3600, 0.0),
    "d": ("s", 86400.0, 0.0), "µs": ("s", 1e-6, 0.0), "us": ("s", 1e-6, 0.0), "sec": ("s", 1.0, 0.0),
    "µS/cm": ("S/m", 1e-4, 0.0), "uS/cm": ("S/m", 1e-4, 0.0), "mS/cm": ("S/m", 0.1, 0.0),
    "dS/m": ("S/m", 0.1, 0.0), "mS/m": ("S/m", 1e-3, 0.0), "klx": ("lx", 1e3, 0.0), "lux": ("lx", 1.0, 0.0),
    "°": ("deg", 1.0, 0.0), "degree": ("deg", 1.0, 0.0),
    "t": ("kg", 1e3, 0.0), "mg": ("kg", 1e-6, 0.0), "gram": ("kg", 1e-3, 0.0),
}
# Vendors' percentages of humidity and battery are already SenML's %RH and %EL.
_PERCENT_UNITS = frozenset({"%RH", "%EL"})


def conversion(emitted: str, quantity: Quantity) -> tuple[float, float]:
    """How a value in the codec's unit becomes a value in the quantity's unit: (scale, offset).

    Raises:
        UnitMismatch: the unit is unknown, or measures something other than the quantity.
    """
    if emitted not in EMITTED_UNITS:
        raise UnitMismatch(f"unknown unit {emitted!r} (see EMITTED_UNITS in edge/vocabulary.py)")
    primary, scale, offset = EMITTED_UNITS[emitted]
    target = quantity.unit
    if target is None:
        raise UnitMismatch(f"{quantity.name} has no unit, the codec's {emitted!r} cannot apply")
    if primary == target:
        return scale, offset
    if target in _PERCENT_UNITS and emitted in ("%", target):
        return 1.0, 0.0
    if primary == "g" and target == "kg":
        return scale * 1e-3, offset * 1e-3
    if primary == "l" and target == "m3":
        return scale * 1e-3, 0.0
    if primary == "l/s" and target == "m3/s":
        return scale * 1e-3, 0.0
    if primary == "K" and target == "Cel":
        return scale, offset - 273.15
    if primary == "deg" and target == "rad":
        return scale * math.pi / 180, 0.0
    raise UnitMismatch(f"{emitted!r} measures {primary!r}, but {quantity.name} is in {target!r}")


def markdown() -> str:
    """docs/vocabulary.md, generated from QUANTITIES (`python -m edge.vocabulary > docs/vocabulary.md`)."""
    lines = [
        "# Reading vocabulary",
        "",
        "Every decoder maps its fields to these names and units (generated from `edge/vocabulary.py`;",
        "a test keeps this file in step). A reading's SenML name is `urn:dev:mac:<dev_eui>_<name>`",
        "(RFC 9039). Units are registered SenML primary units (RFC 8428 §12.1, RFC 8798), so packs stay",
        "at SenML version 10 and receivers need no secondary-unit support: ppm is sent as a ratio `/`,",
        "hPa as Pa, mm as m, mV as V, kWh as J.",
        "",
        "Fields a decoder returns that have no entry here are still forwarded, without a unit, under",
        "their own key made SenML-safe (`batteryVoltage` → `battery-voltage`), so nothing decoded is lost.",
        "",
        "`state` quantities are sent as SenML `vs`/`vb` (or `v` for a numeric enum), without a unit. The",
        "range is what the quantity can physically be, in its unit: a field map whose conversion puts a",
        "codec example outside it has the wrong unit, and sensor health flags readings outside it.",
        "",
        "| name | unit | range | meaning |",
        "|---|---|---|---|",
    ]
    for q in QUANTITIES:
        unit = f"`{q.unit}`" if q.unit else ("state" if q.state else "—")
        span = f"{q.low:g} … {q.high:g}" if math.isfinite(q.low) or math.isfinite(q.high) else ""
        lines.append(f"| `{q.name}` | {unit} | {span} | {q.description} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
