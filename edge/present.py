"""One presentation of readings, radio values and sizes for every technician view (terminal, page, demo).

Upstream records keep SenML's registered units (RSSI in dBW, CO2 as a ratio, pressure in Pa); a
technician reads the units printed on the sensor's data sheet. Every view goes through here, so one
uplink reads the same in `edge status`, `edge watch`, `edge devices verify`, the page and the demo.
"""

from __future__ import annotations

import math

# Gases sensors report in ppm; the vocabulary sends them as ratios ('/').
_PPM = frozenset({"co2", "o3", "no2", "no", "co", "so2", "h2s", "nh3", "ch4"})
MIB = 1 << 20


def unit_for(name: str, unit: str | None) -> tuple[str, float, float]:
    """(display unit, scale, offset) for a reading: shown = value × scale + offset."""
    if unit == "Cel":
        return "°C", 1.0, 0.0
    if unit == "dBW":
        return "dBm", 1.0, 30.0
    if unit == "/":
        if name in _PPM:
            return "ppm", 1e6, 0.0
        if name == "tvoc":
            return "ppb", 1e9, 0.0
        return "%", 100.0, 0.0
    if unit == "kg/m3":
        return ("mg/L", 1e3, 0.0) if name == "dissolved-oxygen" else ("µg/m³", 1e9, 0.0)
    if unit == "Pa":
        return ("hPa", 0.01, 0.0) if name == "pressure" else ("kPa", 1e-3, 0.0)
    if unit == "%EL":
        return "%", 1.0, 0.0
    if unit == "J":
        return "kWh", 1 / 3.6e6, 0.0
    if unit == "m3/s":
        return "m³/h", 3600.0, 0.0
    if unit == "m3":
        return "m³", 1.0, 0.0
    if unit == "S/m":
        return "µS/cm", 1e4, 0.0
    if unit == "rad":
        return "°", 180 / math.pi, 0.0
    if unit == "m/s" and name.startswith("precipitation"):
        return "mm/h", 3.6e6, 0.0
    return unit or "", 1.0, 0.0


def number(value: float) -> str:
    """A value without binary noise (-127.8, not -127.80000000000001) and without a needless '.0'."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    text = f"{value:.6g}"
    return text if "e" in text or "." not in text else text.rstrip("0").rstrip(".")


def reading(name: str, value: object, unit: str | None) -> str:
    """`22.4 °C`, `776 ppm`, `open`: a reading's value with its unit, as every view prints it."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value).lower() if isinstance(value, bool) else str(value)
    shown, scale, offset = unit_for(name, unit)
    text = number(value * scale + offset if (scale, offset) != (1.0, 0.0) else value)
    return f"{text} {shown}" if shown else text


def rssi(dbm: float | None) -> str:
    """An RSSI held in dBm (as ChirpStack reports it)."""
    return "-" if dbm is None else f"{number(dbm)} dBm"


def snr(db: float | None) -> str:
    """An SNR in dB."""
    return "-" if db is None else f"{number(db)} dB"


def size(n_bytes: float) -> str:
    """A size in MiB, the unit of the `max_size_mb` setting."""
    return f"{n_bytes / MIB:.1f} MiB"
