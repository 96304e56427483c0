"""The one vocabulary of reading names and units that every decoder maps its fields to.

Names are SenML name components (RFC 9039 §3.2: letters, digits, '.', '-'), appended to the
base name `urn:dev:mac:<dev_eui>_`. Units are registered SenML primary units (RFC 8428 §12.1), so
packs stay at SenML version 10: percentages other than humidity and battery are ratios ('/'),
ppm becomes '/' times 1e-6, hPa becomes Pa, mm becomes m, mV becomes V.
docs/vocabulary.md is generated from this table and a test keeps the two in step.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Quantity:
    """A named quantity with its fixed unit and a one-line meaning."""

    name: str
    unit: str | None
    description: str


QUANTITIES: tuple[Quantity, ...] = (
    Quantity("temperature", "Cel", "air or device temperature"),
    Quantity("temperature-external", "Cel", "temperature from an external probe"),
    Quantity("temperature-soil", "Cel", "soil temperature"),
    Quantity("temperature-water", "Cel", "water temperature"),
    Quantity("humidity", "%RH", "relative humidity, 0-100"),
    Quantity("illuminance", "lx", "ambient light"),
    Quantity("motion", "count", "motion (PIR) events counted since the last uplink"),
    Quantity("occupancy", None, "presence state: 0 free, 1 pending, 2 occupied (or true/false)"),
    Quantity("co2", "/", "carbon dioxide as a ratio (ppm × 1e-6)"),
    Quantity("tvoc", "/", "total volatile organic compounds as a ratio (ppb × 1e-9)"),
    Quantity("pm2.5", "kg/m3", "particulate matter up to 2.5 µm (µg/m3 × 1e-9)"),
    Quantity("pm10", "kg/m3", "particulate matter up to 10 µm (µg/m3 × 1e-9)"),
    Quantity("pressure", "Pa", "atmospheric or liquid pressure"),
    Quantity("sound-level", "dB", "A-weighted sound pressure level, average"),
    Quantity("sound-level-peak", "dB", "A-weighted sound pressure level, peak"),
    Quantity("distance", "m", "distance measured by a range sensor"),
    Quantity("level", "m", "liquid or fill level"),
    Quantity("acceleration-x", None, "accelerometer X axis, vendor units"),
    Quantity("acceleration-y", None, "accelerometer Y axis, vendor units"),
    Quantity("acceleration-z", None, "accelerometer Z axis, vendor units"),
    Quantity("battery-voltage", "V", "battery or supply voltage"),
    Quantity("battery", "%EL", "remaining battery, 0-100"),
    Quantity("voltage", "V", "measured analog voltage"),
    Quantity("pulse-count", "count", "pulses counted since the last uplink"),
    Quantity("pulse-count-total", "count", "absolute pulse counter"),
    Quantity("water-leak", None, "water leak state or level"),
    Quantity("door-open", None, "door or window open (true/false)"),
    Quantity("open-count", "count", "times opened, absolute counter"),
    Quantity("button", None, "button pressed (true/false) or press type"),
    Quantity("soil-moisture", "/", "volumetric water content as a ratio (0-1)"),
    Quantity("conductivity", "S/m", "electrical conductivity"),
    Quantity("permittivity", None, "dielectric permittivity (relative)"),
    Quantity("energy", "J", "energy meter reading (kWh × 3.6e6)"),
    Quantity("power", "W", "instantaneous power"),
    Quantity("volume", "m3", "volume meter reading"),
    Quantity("flow", "m3/s", "volume flow"),
    Quantity("latitude", "lat", "WGS84 latitude"),
    Quantity("longitude", "lon", "WGS84 longitude"),
    Quantity("altitude", "m", "altitude above sea level"),
    Quantity("motion-state", None, "motion (PIR) state as the vendor reports it, e.g. 'trigger' or 'idle'"),
    Quantity("motion-count-total", "count", "motion events, absolute counter"),
    Quantity("illuminance-level", None, "ambient light as a vendor level (e.g. 0-5), not lux"),
    Quantity("hcho", "kg/m3", "formaldehyde (mg/m3 × 1e-6)"),
    Quantity("o3", "/", "ozone as a ratio (ppm × 1e-6)"),
    Quantity("digital-input", None, "state of a digital (dry contact) input, 0 or 1"),
    Quantity("tilt", None, "tilt or position state as the vendor reports it, e.g. 'normal' or 'tilt'"),
    Quantity("open-duration", "s", "how long the door or window was last open"),
    Quantity("temperature-flow", "Cel", "heating or cooling flow (supply) temperature"),
    Quantity("temperature-return", "Cel", "heating or cooling return temperature"),
    Quantity("temperature-average", "Cel", "temperature averaged by the device over its averaging window"),
    Quantity("wetness", "/", "relative wetness from a capacitive leak sensor as a ratio (0-1)"),
)

BY_NAME: dict[str, Quantity] = {q.name: q for q in QUANTITIES}


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
        "| name | unit | meaning |",
        "|---|---|---|",
    ]
    for q in QUANTITIES:
        lines.append(f"| `{q.name}` | {('`' + q.unit + '`') if q.unit else '—'} | {q.description} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
