"""The reading → NGSI-LD attribute table: which vocabulary reading becomes which attribute of which type, in which unit.

Also which Device.controlledProperty a reading stands for, and which readings make a device's
observed type when nothing pins it (edge.formats.ngsi_ld.choose_type).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from edge.formats.ngsi_ld_context import AIR_QUALITY, DEVICE, INDOOR, NOISE, WATER, WEATHER
from edge.vocabulary import QUANTITIES


@dataclass(frozen=True, slots=True)
class AttributeMap:
    """How one vocabulary reading becomes one attribute of one entity type.

    The attribute's value is `reading.value * scale`; `integer` rounds it for schemas that demand
    an integer (waterConsumption). `unit_code` is the UN/CEFACT Common Code of the converted value.
    `source_unit` is the SenML unit `scale` is written for (the vocabulary's unit of `reading`): a
    reading that comes in another unit is left out of the entity, since a wrong unit is worse than
    none (it still goes out in SenML with its own unit). None accepts any unit.
    """

    entity_type: str
    reading: str
    attribute: str
    unit_code: str | None
    scale: float = 1.0
    integer: bool = False
    source_unit: str | None = None


def _m(entity_type: str, reading: str, attribute: str, unit_code: str | None, scale: float = 1.0,
       integer: bool = False) -> AttributeMap:
    return AttributeMap(entity_type, reading, attribute, unit_code, scale, integer, _VOCABULARY_UNITS.get(reading))


# The unit every vocabulary reading carries; each scale below is written for it.
_VOCABULARY_UNITS: dict[str, str | None] = {q.name: q.unit for q in QUANTITIES}


# Angles are radians in the vocabulary; the schemas' windDirection is 0-360 degrees.
_DEGREES_PER_RAD = 180 / math.pi

# The default table. Units follow the schemas' descriptions (weather-schema: atmosphericPressure in
# hPa, relativeHumidity 0..1; WaterConsumptionObserved: waterConsumption an integer, litres in the
# official example) and the reference upsert (CEL, LUX, C62). UN/CEFACT codes: CEL degree Celsius,
# C62 one, LUX lux, 59 ppm, 61 ppb, GQ µg/m3, A97 hPa, 2N decibel, LTR litre.
DEFAULT_ATTRIBUTES: tuple[AttributeMap, ...] = (
    _m(INDOOR, "temperature", "temperature", "CEL"),
    _m(INDOOR, "humidity", "relativeHumidity", "C62", 0.01),
    _m(INDOOR, "illuminance", "illuminance", "LUX"),
    _m(INDOOR, "pressure", "atmosphericPressure", "A97", 0.01),
    _m(INDOOR, "co2", "co2", "59", 1e6),
    _m(WEATHER, "temperature", "temperature", "CEL"),
    _m(WEATHER, "humidity", "relativeHumidity", "C62", 0.01),
    _m(WEATHER, "illuminance", "illuminance", "LUX"),
    _m(WEATHER, "pressure", "atmosphericPressure", "A97", 0.01),
    _m(AIR_QUALITY, "co2", "co2", "59", 1e6),
    _m(AIR_QUALITY, "tvoc", "volatileOrganicCompoundsTotal", "61", 1e9),
    _m(AIR_QUALITY, "o3", "o3", "61", 1e9),
    _m(AIR_QUALITY, "pm2.5", "pm25", "GQ", 1e9),
    _m(AIR_QUALITY, "pm10", "pm10", "GQ", 1e9),
    _m(AIR_QUALITY, "temperature", "temperature", "CEL"),
    _m(AIR_QUALITY, "humidity", "relativeHumidity", "C62", 0.01),
    _m(AIR_QUALITY, "pressure", "pressure", "A97", 0.01),
    _m(NOISE, "sound-level", "LAeq", "2N"),
    _m(NOISE, "sound-level-peak", "LAmax", "2N"),
    _m(WATER, "volume", "waterConsumption", "LTR", 1000, integer=True),
    # Quantities the field maps brought (issue #13), where a model has the attribute. Gases the
    # schemas leave unitless go out in ppb (61) like o3, carbon monoxide in ppm (59); MTS m/s,
    # DD degree, MMT millimetre (precipitation's "litres per square metre"), D54 W/m2.
    _m(INDOOR, "people-count", "peopleCount", None, integer=True),
    _m(AIR_QUALITY, "pm1", "pm1", "GQ", 1e9),
    _m(AIR_QUALITY, "pm4", "pm4", "GQ", 1e9),
    _m(AIR_QUALITY, "no2", "no2", "61", 1e9),
    _m(AIR_QUALITY, "no", "no", "61", 1e9),
    _m(AIR_QUALITY, "so2", "so2", "61", 1e9),
    _m(AIR_QUALITY, "h2s", "sh2", "61", 1e9),
    _m(AIR_QUALITY, "co", "co", "59", 1e6),
    _m(AIR_QUALITY, "air-quality-index", "airQualityIndex", None),
    _m(AIR_QUALITY, "wind-speed", "windSpeed", "MTS"),
    _m(AIR_QUALITY, "wind-direction", "windDirection", "DD", _DEGREES_PER_RAD),
    _m(WEATHER, "wind-speed", "windSpeed", "MTS"),
    _m(WEATHER, "wind-direction", "windDirection", "DD", _DEGREES_PER_RAD),
    _m(WEATHER, "precipitation", "precipitation", "MMT", 1000),
    _m(WEATHER, "solar-radiation", "solarRadiation", "D54"),
    _m(WEATHER, "dew-point", "dewPoint", "CEL"),
    # %EL is 0..100 of remaining capacity; Device.batteryLevel is 0..1. A voltage has no Device
    # attribute (mapping volts to a level is vendor-specific), so battery-voltage stays in SenML.
    _m(DEVICE, "battery", "batteryLevel", "C62", 0.01),
)

# Vocabulary name → Device.controlledProperty (an enum in device-schema.json). Battery readings
# describe the device, not what it senses, and are left out, as in the reference upsert.
CONTROLLED_PROPERTIES: dict[str, str] = {
    "temperature": "temperature",
    "temperature-external": "temperature",
    "temperature-soil": "temperature",
    "temperature-water": "temperature",
    "temperature-flow": "temperature",
    "temperature-return": "temperature",
    "humidity": "humidity",
    "illuminance": "light",
    "illuminance-level": "light",
    "motion": "motion",
    "motion-state": "motion",
    "motion-count-total": "motion",
    "occupancy": "occupancy",
    "co2": "airPollution",
    "tvoc": "airPollution",
    "pm2.5": "airPollution",
    "pm10": "airPollution",
    "hcho": "airPollution",
    "o3": "airPollution",
    "pressure": "atmosphericPressure",
    "sound-level": "noiseLevel",
    "sound-level-peak": "noiseLevel",
    "level": "fillingLevel",
    "soil-moisture": "soilMoisture",
    "conductivity": "conductivity",
    "energy": "energy",
    "power": "power",
    "volume": "waterConsumption",
    "flow": "waterFlow",
    "latitude": "location",
    "longitude": "location",
    "people-count": "occupancy",
    "people-in": "occupancy",
    "people-out": "occupancy",
    "pm1": "airPollution",
    "pm4": "airPollution",
    "no2": "airPollution",
    "no": "airPollution",
    "so2": "airPollution",
    "co": "airPollution",
    "h2s": "airPollution",
    "nh3": "airPollution",
    "air-quality-index": "airPollution",
    "wind-speed": "windSpeed",
    "wind-gust": "windSpeed",
    "wind-direction": "windDirection",
    "precipitation": "precipitation",
    "solar-radiation": "solarRadiation",
    "fill-level": "fillingLevel",
    "distance": "distance",
    "pressure-water": "pressure",
}

# Type inference, first match wins: the specific models before the general climate one.
TYPE_INFERENCE: tuple[tuple[str, frozenset[str]], ...] = (
    (WATER, frozenset({"volume"})),
    (NOISE, frozenset({"sound-level", "sound-level-peak"})),
    (AIR_QUALITY, frozenset({"co2", "tvoc", "o3", "pm1", "pm2.5", "pm4", "pm10", "hcho", "no2", "no", "so2", "co",
                             "h2s", "air-quality-index"})),
    (WEATHER, frozenset({"wind-speed", "wind-gust", "wind-direction", "precipitation", "precipitation-rate",
                         "solar-radiation"})),
)


class AttributeTable:
    """The reading → attribute mapping per entity type, defaults plus operator entries."""

    def __init__(self, entries: Iterable[AttributeMap] = DEFAULT_ATTRIBUTES) -> None:
        """Build the table; a later entry for the same (entity type, reading) replaces an earlier one.

        Args:
            entries: the mappings, in order of precedence (last wins).
        """
        self._by_type: dict[str, dict[str, AttributeMap]] = {}
        for entry in entries:
            self._by_type.setdefault(entry.entity_type, {})[entry.reading] = entry

    def for_type(self, entity_type: str) -> Mapping[str, AttributeMap]:
        """The mappings of one entity type, keyed by vocabulary reading name."""
        return self._by_type.get(entity_type, {})

    def types(self) -> frozenset[str]:
        """Every entity type with at least one mapping."""
        return frozenset(self._by_type)


def attribute_table(extra: Iterable[Mapping[str, Any]] = ()) -> AttributeTable:
    """The default table extended or overridden by operator entries from the config.

    Each entry is a table such as ``{"entity_type": "WeatherObserved", "reading":
    "temperature-external", "attribute": "temperature", "unit_code": "CEL", "scale": 1.0,
    "integer": false}``; `unit_code`, `scale` and `integer` are optional. An entry with
    ``"attribute": ""`` removes the default mapping of that reading for that type.

    Args:
        extra: operator entries, applied after the defaults in the order given.

    Returns:
        The table to put in `NgsiLdOptions.attributes`.

    Raises:
        ValueError: an entry lacks `entity_type`, `reading` or `attribute`, or has a wrong type.
    """
    entries = list(DEFAULT_ATTRIBUTES)
    for i, item in enumerate(extra):
        try:
            entity_type, reading, attribute = item["entity_type"], item["reading"], item["attribute"]
            unit_code = item.get("unit_code")
            scale = float(item.get("scale", 1.0))
            integer = bool(item.get("integer", False))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"NGSI-LD attribute entry {i}: {exc!r}") from exc
        if not (isinstance(entity_type, str) and entity_type and isinstance(reading, str) and reading
                and isinstance(attribute, str) and (unit_code is None or isinstance(unit_code, str))):
            raise ValueError(f"NGSI-LD attribute entry {i}: entity_type, reading and attribute must be text")
        if not attribute:
            entries = [e for e in entries if (e.entity_type, e.reading) != (entity_type, reading)]
            continue
        entries.append(AttributeMap(entity_type, reading, attribute, unit_code or None, scale, integer,
                                    _VOCABULARY_UNITS.get(reading)))
    return AttributeTable(entries)
