"""Stored entries → NGSI-LD Smart Data Models entities for a batch upsert; pure functions, no I/O.

What one uplink becomes (docs: shared/reference/records/README.md, "NGSI-LD example notes"):

* One **observed entity** `urn:ngsi-ld:<Type>:<dev_eui>` whose type is chosen per device (see
  `choose_type`): IndoorEnvironmentObserved, WeatherObserved, AirQualityObserved,
  NoiseLevelObserved or WaterConsumptionObserved. Each mapped reading becomes a Property with
  `value`, a UN/CEFACT `unitCode` and `observedAt` (the uplink's ChirpStack receive time, ISO 8601
  UTC with milliseconds and `Z`; a sample with its own time, e.g. a meter's hourly history, gets
  its own occurrence of the entity with that time, see `entities_for`). Values are converted from
  the SenML vocabulary unit to the unit the Smart Data Models schema documents (41 %RH →
  relativeHumidity 0.41 C62, CO2 ratio → ppm, Pa → hPa, m3 → litres). Readings without an
  attribute in the chosen type (motion, battery voltage, radio data, ...) are left out: they stay
  in the SenML upstream.
* One **Device** entity `urn:ngsi-ld:Device:<dev_eui>` with `controlledProperty`, `category`
  ["sensor"] (["meter"] for water meters), `supportedProtocol` ["lora"], `dateLastValueReported`
  and, when the device reports it, `batteryLevel` (0..1). The observed entity points at it with
  `refDevice` (WaterConsumptionObserved, which has no refDevice, with `observedBy` on each
  Property, as its official example does).
* The entity ids contain only the DevEUI, so they are stable across restarts, re-decodes and
  buffer replays: the broker's entity is updated in place (upsert `options=update`), never duplicated.

Deviations from the Smart Data Models schemas, on purpose:

* `location` is required by most SDM schemas, but a gateway does not know where a sensor is.
  It is emitted only when the device reports `latitude`/`longitude` readings or the operator
  configured a position (`NgsiLdOptions.locations`); otherwise it is left out rather than invented.
* IndoorEnvironmentObserved documents co2 "nominally in mg/L"; converting ppm to mg/L needs the
  air's temperature and pressure, so co2 is sent in ppm and says so with unitCode `59`.
* IndoorEnvironmentObserved's schema gives temperature `minimum: 0` (an upstream slip): a sub-zero
  reading in a cold room is still sent as measured.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from edge.model import Entry, Formatter, OutMessage, Reading
from edge.vocabulary import QUANTITIES

CONTENT_TYPE = "application/ld+json"
# Batch upsert (ETSI GS CIM 009 §5.6.8). `update` keeps attributes this gateway does not send;
# the default `replace` would delete whatever other systems added to the entity.
UPSERT_PATH = "/ngsi-ld/v1/entityOperations/upsert?options=update"
CORE_CONTEXT = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context.jsonld"
_SDM = "https://raw.githubusercontent.com/smart-data-models/{}/master/context.jsonld"

INDOOR = "IndoorEnvironmentObserved"
WEATHER = "WeatherObserved"
AIR_QUALITY = "AirQualityObserved"
NOISE = "NoiseLevelObserved"
WATER = "WaterConsumptionObserved"
DEVICE = "Device"
OBSERVED_TYPES = (INDOOR, WEATHER, AIR_QUALITY, NOISE, WATER)

# The Smart Data Models @context of each type, as in the reference upsert and the SDM examples.
# The core context goes last so no model context can redefine core terms.
CONTEXTS: dict[str, str] = {
    INDOOR: _SDM.format("dataModel.Environment"),
    AIR_QUALITY: _SDM.format("dataModel.Environment"),
    NOISE: _SDM.format("dataModel.Environment"),
    WEATHER: _SDM.format("dataModel.Weather"),
    WATER: _SDM.format("dataModel.WaterConsumption"),
    DEVICE: _SDM.format("dataModel.Device"),
}

# Types without a refDevice attribute link each Property to the Device with the `observedBy`
# sub-relationship instead, as WaterConsumptionObserved's official example does.
_OBSERVED_BY = frozenset({WATER})

# Upsert requests stay at or below this many entities: Orion-LD and Scorpio accept larger arrays,
# but one 4xx rejects the whole request, so smaller requests put less into the dead-letter store.
DEFAULT_BATCH_SIZE = 100


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
_INFERENCE: tuple[tuple[str, frozenset[str]], ...] = (
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


@dataclass(frozen=True)
class NgsiLdOptions:
    """How entries become entities; built by the pipeline from one upstream's config.

    Attributes:
        entity_type: the observed type for every device of this upstream, or None to choose per device.
        device_types: DevEUI (lower case) → observed type, e.g. from a ChirpStack device tag `ngsi_type`;
            wins over `entity_type`.
        climate_type: the type for devices with only climate readings (temperature, humidity,
            illuminance, pressure): IndoorEnvironmentObserved or, for outdoor sensors, WeatherObserved.
        locations: DevEUI (lower case) → (latitude, longitude) in WGS84 degrees, from the device registry.
        attributes: the reading → attribute table (see `attribute_table`).
        contexts: entity type → @context URL; replaces the default Smart Data Models context of a type.
        device_entity: also upsert a Device entity per device and link it with refDevice.
        batch_size: the most entities in one upsert request.
        noise_period_s: length of a NoiseLevelObserved measurement period ending at the uplink time.
    """

    entity_type: str | None = None
    device_types: Mapping[str, str] = field(default_factory=dict)
    climate_type: str = INDOOR
    locations: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    attributes: AttributeTable = field(default_factory=AttributeTable)
    contexts: Mapping[str, str] = field(default_factory=dict)
    device_entity: bool = True
    batch_size: int = DEFAULT_BATCH_SIZE
    noise_period_s: float = 0.0


def upsert_url(broker: str) -> str:
    """The batch upsert endpoint of a context broker, e.g. `https://broker:1026` → `…/upsert?options=update`."""
    return broker.rstrip("/") + UPSERT_PATH


def entity_id(entity_type: str, dev_eui: str) -> str:
    """The stable entity id of a device's entity: `urn:ngsi-ld:<Type>:<dev_eui>` (DevEUI in lower case)."""
    return f"urn:ngsi-ld:{entity_type}:{dev_eui.lower()}"


def iso_time(t: float) -> str:
    """POSIX seconds as ISO 8601 UTC with milliseconds and `Z`, e.g. `2026-11-25T10:00:00.000Z`."""
    # Integer milliseconds first, so 0.9995 s rounds into the next second instead of printing ".1000".
    seconds, millis = divmod(round(t * 1000), 1000)
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{millis:03d}Z"


def choose_type(entry: Entry, options: NgsiLdOptions) -> str:
    """The observed entity type of an entry's device.

    Order: the device's own hint (`device_types`), the upstream's `entity_type`, then inference
    from the readings: volume → WaterConsumptionObserved, a sound level → NoiseLevelObserved,
    CO2/VOC/ozone/particulates → AirQualityObserved, anything else → `climate_type`. Inference
    looks at one uplink only, so pin the type of a device whose uplinks carry different readings.

    Args:
        entry: the buffered uplink.
        options: the upstream's options.

    Returns:
        An entity type name.
    """
    hinted = options.device_types.get(entry.dev_eui.lower()) or options.entity_type
    if hinted:
        return hinted
    names = {r.name for r in entry.readings}
    for entity_type, triggers in _INFERENCE:
        if names & triggers:
            return entity_type
    return options.climate_type


def _number(reading: Reading, mapping: AttributeMap) -> float | int | None:
    value = reading.value
    # bool is an int subclass; a true/false state is no quantity to scale.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    if mapping.source_unit is not None and reading.unit != mapping.source_unit:
        return None  # scaled for another unit: leaving it out beats sending it wrong
    if mapping.integer:
        return round(value * mapping.scale)
    if mapping.scale == 1.0:
        return value
    # 12 significant digits drop binary noise (41 * 0.01 = 0.41000000000000003) and keep far more
    # precision than any sensor has.
    return float(f"{value * mapping.scale:.12g}")


def _property(value: Any, unit_code: str | None, observed_at: str) -> dict[str, Any]:
    prop: dict[str, Any] = {"type": "Property", "value": value}
    if unit_code:
        prop["unitCode"] = unit_code
    prop["observedAt"] = observed_at
    return prop


def _datetime(value: str) -> dict[str, Any]:
    # The JSON-LD typed form, as in the reference upsert and the SDM normalized examples: a broker
    # then stores a DateTime it can query with temporal filters, not a plain string.
    return {"type": "Property", "value": {"@type": "DateTime", "@value": value}}


def _location(entry: Entry, options: NgsiLdOptions) -> dict[str, Any] | None:
    found = {r.name: r.value for r in entry.readings if r.name in ("latitude", "longitude")}
    lat, lon = found.get("latitude"), found.get("longitude")
    if isinstance(lat, int | float) and isinstance(lon, int | float) and not isinstance(lat, bool) \
            and not isinstance(lon, bool) and math.isfinite(lat) and math.isfinite(lon):
        # A position the device measured itself is newer than anything configured.
        position: tuple[float, float] | None = (lat, lon)
    else:
        position = options.locations.get(entry.dev_eui.lower())
    if position is None:
        return None
    # GeoJSON order is longitude, latitude (RFC 7946 §3.1.1); the config gives (lat, lon).
    return {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [position[1], position[0]]}}


def _context(entity_type: str, options: NgsiLdOptions) -> list[str]:
    model = options.contexts.get(entity_type) or CONTEXTS.get(entity_type)
    return [model, CORE_CONTEXT] if model else [CORE_CONTEXT]


def _controlled_properties(entry: Entry) -> list[str]:
    out: list[str] = []
    for r in entry.readings:
        prop = CONTROLLED_PROPERTIES.get(r.name)
        if prop and prop not in out:
            out.append(prop)
    return out


def _samples(entry: Entry) -> list[tuple[float, list[Reading]]]:
    """The entry's readings by sample time: samples with their own time (histories) oldest first,
    then the uplink's own readings, so after an upsert the broker's current value is the newest."""
    timed: dict[float, list[Reading]] = {}
    current: list[Reading] = []
    for r in entry.readings:
        if r.time is None or r.time == entry.time:
            current.append(r)
        else:
            timed.setdefault(r.time, []).append(r)
    return [*sorted(timed.items()), (entry.time, current)]


def _observed(entry: Entry, readings: Sequence[Reading], sample_time: float, entity_type: str,
              mappings: Mapping[str, AttributeMap], device_id: str, with_device: bool,
              location: dict[str, Any] | None, options: NgsiLdOptions) -> dict[str, Any] | None:
    """The observed entity of one sample time, or None when none of its readings maps to the type."""
    observed_at = iso_time(sample_time)
    attributes: dict[str, Any] = {}
    for reading in readings:
        mapping = mappings.get(reading.name)
        if mapping is None or mapping.attribute in attributes:
            continue
        value = _number(reading, mapping)
        if value is not None:
            prop = _property(value, mapping.unit_code, observed_at)
            if with_device and entity_type in _OBSERVED_BY:
                prop["observedBy"] = {"type": "Relationship", "object": device_id}
            attributes[mapping.attribute] = prop
    if not attributes:
        return None
    entity: dict[str, Any] = {"id": entity_id(entity_type, entry.dev_eui), "type": entity_type}
    if entity_type == NOISE:
        # NoiseLevelObserved dates a measurement period, not an instant.
        entity["dateObservedFrom"] = _datetime(iso_time(sample_time - options.noise_period_s))
        entity["dateObservedTo"] = _datetime(observed_at)
    elif entity_type != WATER:
        # WaterConsumptionObserved has no observation date attribute: observedAt carries the time.
        entity["dateObserved"] = _datetime(observed_at)
    if location is not None:
        entity["location"] = location
    entity.update(attributes)
    if with_device and entity_type not in _OBSERVED_BY:
        entity["refDevice"] = {"type": "Relationship", "object": device_id}
    entity["@context"] = _context(entity_type, options)
    return entity


def entities_for(entry: Entry, options: NgsiLdOptions) -> list[dict[str, Any]]:
    """The entities of one uplink: the observed entity and the Device entity, each only if non-empty.

    Readings with their own time (a meter's history, a sample list) give one more occurrence of the
    observed entity per sample time, each attribute with that `observedAt`, oldest first and before
    the uplink's own readings (`upsert_batches` keeps one id's occurrences in order), so a broker
    keeping temporal history gets every sample and its current value is the newest.

    Args:
        entry: the buffered uplink.
        options: the upstream's options.

    Returns:
        Normalized NGSI-LD entities, each with its own @context: the observed entity (once per
        sample time) and the Device entity, each only when it has something to say.
    """
    if not entry.readings:
        return []
    observed_at = iso_time(entry.time)
    entity_type = choose_type(entry, options)
    device_id = entity_id(DEVICE, entry.dev_eui)
    controlled = _controlled_properties(entry)
    # A Device entity needs controlledProperty (required by its schema); without one, no Device and
    # no refDevice pointing at nothing.
    with_device = options.device_entity and bool(controlled)
    out: list[dict[str, Any]] = []

    mappings = options.attributes.for_type(entity_type)
    location = _location(entry, options)
    for sample_time, readings in _samples(entry):
        entity = _observed(entry, readings, sample_time, entity_type, mappings, device_id, with_device, location,
                           options)
        if entity is not None:
            out.append(entity)

    if with_device:
        device: dict[str, Any] = {
            "id": device_id,
            "type": DEVICE,
            # A water meter is a SAREF Meter; everything else this gateway hears is a Sensor.
            "category": {"type": "Property", "value": ["meter" if entity_type == WATER else "sensor"]},
            "controlledProperty": {"type": "Property", "value": controlled},
            "supportedProtocol": {"type": "Property", "value": ["lora"]},
            "dateLastValueReported": _datetime(observed_at),
        }
        device_maps = options.attributes.for_type(DEVICE)
        for reading in entry.readings:
            mapping = device_maps.get(reading.name)
            value = None if mapping is None else _number(reading, mapping)
            if mapping is not None and value is not None and mapping.attribute not in device:
                device[mapping.attribute] = _property(value, mapping.unit_code, observed_at)
        device["@context"] = _context(DEVICE, options)
        out.append(device)
    return out


def entities(entries: Sequence[Entry], options: NgsiLdOptions) -> list[dict[str, Any]]:
    """The entities of consecutive uplinks, in uplink order.

    Args:
        entries: buffered uplinks in id order.
        options: the upstream's options.

    Returns:
        Normalized NGSI-LD entities; one id may occur several times (one per uplink).
    """
    out: list[dict[str, Any]] = []
    for entry in entries:
        out.extend(entities_for(entry, options))
    return out


def upsert_batches(items: Sequence[dict[str, Any]], batch_size: int) -> list[list[dict[str, Any]]]:
    """Split entities into upsert requests of at most `batch_size`, each id at most once per request.

    When a backlog drains, one device has several uplinks in a batch. NGSI-LD does not define the
    order in which one request's entities are applied, and merging them into the newest would drop
    the older observations from the broker's temporal history. So the k-th occurrence of an id goes
    into a later request than its (k-1)-th: requests are sent in order, and every observation
    reaches the broker, oldest first.

    Args:
        items: entities in uplink order.
        batch_size: the most entities per request (at least 1).

    Returns:
        The request bodies, in sending order.
    """
    size = max(1, batch_size)
    requests: list[list[dict[str, Any]]] = []
    ids: list[set[str]] = []
    last: dict[str, int] = {}
    start = 0  # requests before this one are full
    for item in items:
        key = str(item["id"])
        i = max(start, last.get(key, -1) + 1)
        while i < len(requests) and (len(requests[i]) >= size or key in ids[i]):
            i += 1
        if i == len(requests):
            requests.append([])
            ids.append(set())
        requests[i].append(item)
        ids[i].add(key)
        last[key] = i
        while start < len(requests) and len(requests[start]) >= size:
            start += 1
    return requests


def make_ngsi_ld_formatter(options: NgsiLdOptions | None = None) -> Formatter:
    """A sink Formatter producing NGSI-LD batch upsert bodies.

    Each message is a JSON array for `POST /ngsi-ld/v1/entityOperations/upsert?options=update`
    with Content-Type application/ld+json (so every entity carries its @context); the topic is
    empty because the HTTP sink posts everything to its one endpoint.

    Args:
        options: how entries become entities; the defaults when None.

    Returns:
        A function from entries to messages, in the order they must be sent.
    """
    opts = options or NgsiLdOptions()

    def format_entries(entries: Sequence[Entry]) -> list[OutMessage]:
        return [OutMessage("", orjson.dumps(body), CONTENT_TYPE)
                for body in upsert_batches(entities(entries, opts), opts.batch_size)]

    return format_entries
