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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from edge.formats.ngsi_ld_attributes import CONTROLLED_PROPERTIES, TYPE_INFERENCE, AttributeMap, AttributeTable
from edge.formats.ngsi_ld_context import DEVICE, INDOOR, NOISE, WATER, context
from edge.model import Entry, Formatter, OutMessage, Reading

CONTENT_TYPE = "application/ld+json"
# Batch upsert (ETSI GS CIM 009 §5.6.8). `update` keeps attributes this gateway does not send;
# the default `replace` would delete whatever other systems added to the entity.
UPSERT_PATH = "/ngsi-ld/v1/entityOperations/upsert?options=update"

# Types without a refDevice attribute link each Property to the Device with the `observedBy`
# sub-relationship instead, as WaterConsumptionObserved's official example does.
_OBSERVED_BY = frozenset({WATER})

# Upsert requests stay at or below this many entities: Orion-LD and Scorpio accept larger arrays,
# but one 4xx rejects the whole request, so smaller requests put less into the dead-letter store.
DEFAULT_BATCH_SIZE = 100


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
    for entity_type, triggers in TYPE_INFERENCE:
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
    entity["@context"] = context(entity_type, options.contexts)
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
        device["@context"] = context(DEVICE, options.contexts)
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
