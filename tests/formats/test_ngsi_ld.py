"""NGSI-LD entities: the reference Elsys upsert, unit conversions, type choice, batching, and SDM schema validity."""

from __future__ import annotations

import json
import math
import re
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from edge.formats import ngsi_ld, ngsi_ld_attributes, ngsi_ld_context
from edge.formats.ngsi_ld import NgsiLdOptions
from edge.model import Entry, RadioInfo, Reading

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ngsi_ld"
SDM = FIXTURES / "smart-data-models"
DEV_EUI = "a81758fffe0346f1"
T0 = 1795600800.0  # 2026-11-25T10:00:00Z
# The illustrative location of the reference file (central Sundsvall), given as (lat, lon).
SUNDSVALL = (62.3908, 17.3069)
ELSYS = [
    Reading("temperature", 22.4, "Cel"),
    Reading("humidity", 41, "%RH"),
    Reading("illuminance", 39, "lx"),
    Reading("motion", 6, "count"),
    Reading("battery-voltage", 3.606, "V"),
]
# UN/CEFACT Common Codes the default table uses (Recommendation 20).
KNOWN_UNIT_CODES = {"CEL", "C62", "LUX", "59", "61", "GQ", "A97", "2N", "LTR", "MTS", "DD", "MMT", "D54"}
RFC3339_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
ATTRIBUTE_MEMBER = {"Property": "value", "GeoProperty": "value", "Relationship": "object"}


def entry(readings: list[Reading], dev_eui: str = DEV_EUI, t: float = T0, id: int = 1) -> Entry:
    return Entry(id=id, uplink_id=f"00000000-0000-4000-8000-{id:012d}", dev_eui=dev_eui, application_id="app",
                 gateway_id="acde48fffe000001", time=t, readings=readings, radio=RadioInfo())


# --- offline Smart Data Models validation (shared/reference/smart-data-models/README.md) ---


def _no_network(uri: str) -> Resource:
    raise LookupError(f"unmapped $ref {uri}")


@cache
def registry() -> Registry:
    refs = json.loads((SDM / "ref-map.json").read_text())
    return Registry(retrieve=_no_network).with_resources(
        (url, Resource.from_contents(json.loads((SDM / path).read_text()), default_specification=DRAFT202012))
        for url, path in refs.items())


@cache
def schema(entity_type: str) -> dict[str, Any]:
    return json.loads((SDM / entity_type / "schema.json").read_text())


def validator(entity_type: str, location_required: bool = True) -> Draft202012Validator:
    doc = schema(entity_type)
    if not location_required:
        # The documented deviation: without a configured position the gateway leaves `location` out.
        doc = {**doc, "required": [r for r in doc["required"] if r != "location"]}
    return Draft202012Validator(doc, registry=registry(), format_checker=Draft202012Validator.FORMAT_CHECKER)


def schema_properties(entity_type: str) -> set[str]:
    """Every property a type's schema names, through its allOf $refs (to catch misspelt attributes)."""
    resolver = registry().resolver()
    names: set[str] = set()

    def walk(node: dict[str, Any]) -> None:
        names.update(node.get("properties", {}))
        for part in node.get("allOf", []):
            walk(resolver.lookup(part["$ref"]).contents if "$ref" in part else part)

    walk(schema(entity_type))
    return names


def key_values(entity: dict[str, Any]) -> dict[str, Any]:
    """Normalized → key-values, checking each attribute's structure on the way (README rules)."""
    out: dict[str, Any] = {}
    for name, attr in entity.items():
        if name in ("id", "type", "@context"):
            out[name] = attr
            continue
        assert isinstance(attr, dict), name
        member = ATTRIBUTE_MEMBER[attr["type"]]
        assert member in attr, name
        value = attr[member]
        if isinstance(value, dict) and value.get("@type") == "DateTime":
            assert RFC3339_MS.match(value["@value"]), value
            value = value["@value"]
        if "observedAt" in attr:
            assert RFC3339_MS.match(attr["observedAt"]), attr
        if "unitCode" in attr:
            assert attr["unitCode"] in KNOWN_UNIT_CODES, attr
        out[name] = value
    return out


def assert_valid(entity: dict[str, Any], location_required: bool | None = None) -> None:
    required = "location" in entity if location_required is None else location_required
    kv = key_values(entity)
    errors = sorted(validator(entity["type"], required).iter_errors(kv), key=str)
    assert not errors, [e.message for e in errors]
    unknown = set(kv) - schema_properties(entity["type"]) - {"@context"}
    assert not unknown, f"{entity['type']} has attributes its schema does not name: {unknown}"


def by_type(entities: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e["type"]: e for e in entities}


# --- the reference upsert ---


def _normal_times(node: Any) -> Any:
    """Parse every timestamp, so 10:00:00Z (reference) and 10:00:00.000Z (ours) compare equal."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k in ("observedAt", "@value"):
                out[k] = datetime.fromisoformat(v)
            else:
                out[k] = _normal_times(v)
        return out
    if isinstance(node, list):
        return [_normal_times(v) for v in node]
    return node


def test_ngsi_ld_reference_elsys_uplink_matches_reference_upsert():
    reference = json.loads((FIXTURES / "elsys-ers_a81758fffe0346f1.ngsi-ld-upsert.jsonld").read_text())
    ours = ngsi_ld.entities([entry(ELSYS)], NgsiLdOptions(locations={DEV_EUI: SUNDSVALL}))
    assert _normal_times(ours) == _normal_times(reference)
    # Same member order too, so a diff against the reference reads cleanly.
    assert [list(e) for e in ours] == [list(e) for e in reference]


def test_ngsi_ld_reference_elsys_entities_are_schema_valid():
    with_location = ngsi_ld.entities([entry(ELSYS)], NgsiLdOptions(locations={DEV_EUI: SUNDSVALL}))
    for entity in with_location:
        assert_valid(entity, location_required=entity["type"] != "Device")
    without = by_type(ngsi_ld.entities([entry(ELSYS)], NgsiLdOptions()))
    assert "location" not in without["IndoorEnvironmentObserved"]
    with pytest.raises(AssertionError, match="location"):
        assert_valid(without["IndoorEnvironmentObserved"], location_required=True)
    assert_valid(without["IndoorEnvironmentObserved"], location_required=False)


def test_ngsi_ld_observed_at_is_utc_with_milliseconds():
    observed = ngsi_ld.entities([entry(ELSYS, t=T0 + 0.25)], NgsiLdOptions())[0]
    assert observed["temperature"]["observedAt"] == "2026-11-25T10:00:00.250Z"
    assert observed["dateObserved"]["value"] == {"@type": "DateTime", "@value": "2026-11-25T10:00:00.250Z"}


@pytest.mark.parametrize(("t", "text"), [
    (T0, "2026-11-25T10:00:00.000Z"),
    (T0 + 0.0004, "2026-11-25T10:00:00.000Z"),
    (T0 + 0.9996, "2026-11-25T10:00:01.000Z"),  # rounds into the next second, never ".1000"
    (0.0, "1970-01-01T00:00:00.000Z"),
])
def test_iso_time_formats(t, text):
    assert ngsi_ld.iso_time(t) == text


def test_entity_ids_are_stable_and_lower_case():
    upper = ngsi_ld.entities([entry(ELSYS, dev_eui=DEV_EUI.upper())], NgsiLdOptions())
    assert [e["id"] for e in upper] == [f"urn:ngsi-ld:IndoorEnvironmentObserved:{DEV_EUI}",
                                        f"urn:ngsi-ld:Device:{DEV_EUI}"]
    assert upper[0]["refDevice"] == {"type": "Relationship", "object": f"urn:ngsi-ld:Device:{DEV_EUI}"}


# --- every observed type against its schema ---


AIR = [Reading("co2", 4.2e-4, "/"), Reading("tvoc", 1.5e-7, "/"), Reading("pm2.5", 1.2e-8, "kg/m3"),
       Reading("pm10", 2.05e-8, "kg/m3"), Reading("o3", 3.1e-8, "/"), Reading("temperature", 21.5, "Cel"),
       Reading("humidity", 38.5, "%RH"), Reading("pressure", 101325, "Pa"), Reading("battery", 87, "%EL")]
NOISE = [Reading("sound-level", 54.5, "dB"), Reading("sound-level-peak", 71, "dB"), Reading("temperature", 8, "Cel")]
WATER = [Reading("volume", 123.4567, "m3"), Reading("battery-voltage", 3.6, "V")]
WEATHER = [Reading("temperature", -7.5, "Cel"), Reading("humidity", 93, "%RH"), Reading("pressure", 99870, "Pa"),
           Reading("illuminance", 12000, "lx")]
# Quantities the field maps brought (issue #13).
STATION = [Reading("wind-speed", 4.2, "m/s"), Reading("wind-direction", 3.9269908169872414, "rad"),
           Reading("precipitation", 0.0012, "m"), Reading("solar-radiation", 410, "W/m2"),
           Reading("dew-point", 3.5, "Cel"), Reading("temperature", 9.5, "Cel")]
GASES = [Reading("pm1", 4e-9, "kg/m3"), Reading("pm4", 1.5e-8, "kg/m3"), Reading("no2", 2.1e-8, "/"),
         Reading("so2", 3e-9, "/"), Reading("co", 4e-7, "/"), Reading("h2s", 1e-9, "/"), Reading("no", 5e-9, "/"),
         Reading("air-quality-index", 42, None)]
PEOPLE = [Reading("people-count", 12, "count"), Reading("temperature", 21.0, "Cel")]


@pytest.mark.parametrize(("readings", "options", "expected"), [
    (AIR, NgsiLdOptions(), "AirQualityObserved"),
    (NOISE, NgsiLdOptions(noise_period_s=60), "NoiseLevelObserved"),
    (WATER, NgsiLdOptions(), "WaterConsumptionObserved"),
    (WEATHER, NgsiLdOptions(climate_type="WeatherObserved"), "WeatherObserved"),
    (ELSYS, NgsiLdOptions(), "IndoorEnvironmentObserved"),
    (STATION, NgsiLdOptions(), "WeatherObserved"),
    (GASES, NgsiLdOptions(), "AirQualityObserved"),
    (PEOPLE, NgsiLdOptions(), "IndoorEnvironmentObserved"),
])
@pytest.mark.parametrize("located", [True, False])
def test_ngsi_ld_entities_validate_against_smart_data_models(readings, options, expected, located):
    if located:
        options = NgsiLdOptions(**{**options.__dict__, "locations": {DEV_EUI: SUNDSVALL}})
    produced = by_type(ngsi_ld.entities([entry(readings)], options))
    assert set(produced) == {expected, "Device"}
    for entity in produced.values():
        # Device does not require a location; the observed types do, except where we deviate.
        assert_valid(entity, location_required=located and entity["type"] != "Device")
        if located:
            assert entity["type"] == "Device" or entity["location"]["value"]["coordinates"] == [17.3069, 62.3908]


def test_ngsi_ld_wind_direction_leaves_in_degrees_and_a_foreign_unit_is_left_out():
    # The vocabulary's angles are radians; the schemas' windDirection is 0-360 degrees (DD).
    weather = by_type(ngsi_ld.entities([entry(STATION)], NgsiLdOptions()))["WeatherObserved"]
    assert (weather["windDirection"]["value"], weather["windDirection"]["unitCode"]) == (225.0, "DD")
    # A reading whose unit is not the one the table's scale is written for is not sent scaled wrong.
    odd = [Reading("wind-direction", 225, "deg"), Reading("temperature", 9.5, "Cel")]
    weather = by_type(ngsi_ld.entities([entry(odd)], NgsiLdOptions(climate_type="WeatherObserved")))
    assert "windDirection" not in weather["WeatherObserved"]
    assert weather["WeatherObserved"]["temperature"]["value"] == 9.5


def test_ngsi_ld_air_quality_units_are_converted_back_from_ratios():
    aq = by_type(ngsi_ld.entities([entry(AIR)], NgsiLdOptions()))["AirQualityObserved"]
    assert {k: (v["value"], v.get("unitCode")) for k, v in aq.items() if isinstance(v, dict) and "unitCode" in v} == {
        "co2": (420.0, "59"),  # ratio × 1e6 = ppm
        "volatileOrganicCompoundsTotal": (150.0, "61"),  # ratio × 1e9 = ppb
        "pm25": (12.0, "GQ"),  # kg/m3 × 1e9 = µg/m3
        "pm10": (20.5, "GQ"),
        "o3": (31.0, "61"),
        "temperature": (21.5, "CEL"),
        "relativeHumidity": (0.385, "C62"),  # %RH / 100, schema maximum 1
        "pressure": (1013.25, "A97"),  # Pa / 100 = hPa, as the schema documents
    }
    device = by_type(ngsi_ld.entities([entry(AIR)], NgsiLdOptions()))["Device"]
    assert device["batteryLevel"]["value"] == 0.87
    assert device["controlledProperty"]["value"] == ["airPollution", "temperature", "humidity",
                                                     "atmosphericPressure"]


def test_ngsi_ld_noise_period_and_levels():
    noise = by_type(ngsi_ld.entities([entry(NOISE)], NgsiLdOptions(noise_period_s=300)))["NoiseLevelObserved"]
    assert noise["dateObservedFrom"]["value"]["@value"] == "2026-11-25T09:55:00.000Z"
    assert noise["dateObservedTo"]["value"]["@value"] == "2026-11-25T10:00:00.000Z"
    assert (noise["LAeq"]["value"], noise["LAeq"]["unitCode"]) == (54.5, "2N")
    assert (noise["LAmax"]["value"], noise["LAmax"]["unitCode"]) == (71, "2N")
    assert "dateObserved" not in noise and "temperature" not in noise  # not NoiseLevelObserved attributes


def test_ngsi_ld_water_volume_is_integer_litres_linked_by_observed_by():
    water = by_type(ngsi_ld.entities([entry(WATER)], NgsiLdOptions()))["WaterConsumptionObserved"]
    consumption = water["waterConsumption"]
    assert (consumption["value"], consumption["unitCode"]) == (123457, "LTR")
    assert isinstance(consumption["value"], int)  # the schema says integer
    assert consumption["observedBy"] == {"type": "Relationship", "object": f"urn:ngsi-ld:Device:{DEV_EUI}"}
    assert "refDevice" not in water and "dateObserved" not in water
    device = by_type(ngsi_ld.entities([entry(WATER)], NgsiLdOptions()))["Device"]
    assert device["category"]["value"] == ["meter"]


def test_ngsi_ld_weather_keeps_sub_zero_temperature():
    weather = by_type(ngsi_ld.entities([entry(WEATHER)], NgsiLdOptions(climate_type="WeatherObserved")))
    assert weather["WeatherObserved"]["temperature"]["value"] == -7.5
    assert weather["WeatherObserved"]["atmosphericPressure"]["value"] == 998.7


def test_ngsi_ld_device_schema_rejects_an_unknown_controlled_property():
    # The schema check is not vacuous: a value outside the Device enum fails.
    device = by_type(ngsi_ld.entities([entry(ELSYS)], NgsiLdOptions()))["Device"]
    device["controlledProperty"]["value"] = ["lux"]
    with pytest.raises(AssertionError):
        assert_valid(device, location_required=False)


def test_ngsi_ld_battery_voltage_and_motion_stay_out_of_entities():
    produced = ngsi_ld.entities([entry(ELSYS)], NgsiLdOptions())
    names = {name for e in produced for name in e}
    assert not names & {"motion", "battery-voltage", "batteryLevel", "voltage"}


# --- type choice ---


@pytest.mark.parametrize(("readings", "expected"), [
    ([Reading("volume", 1.0, "m3"), Reading("temperature", 5, "Cel")], "WaterConsumptionObserved"),
    ([Reading("sound-level", 40, "dB"), Reading("co2", 4e-4, "/")], "NoiseLevelObserved"),
    ([Reading("co2", 4e-4, "/"), Reading("illuminance", 30, "lx")], "AirQualityObserved"),
    ([Reading("pm10", 1e-8, "kg/m3")], "AirQualityObserved"),
    ([Reading("temperature", 20, "Cel")], "IndoorEnvironmentObserved"),
    ([Reading("door-open", True, None)], "IndoorEnvironmentObserved"),
])
def test_choose_type_infers_from_readings(readings, expected):
    assert ngsi_ld.choose_type(entry(readings), NgsiLdOptions()) == expected


def test_choose_type_hints_win_device_over_upstream_over_inference():
    co2 = entry([Reading("co2", 4e-4, "/"), Reading("illuminance", 30, "lx")])
    assert ngsi_ld.choose_type(co2, NgsiLdOptions(entity_type="IndoorEnvironmentObserved")) == \
        "IndoorEnvironmentObserved"
    options = NgsiLdOptions(entity_type="IndoorEnvironmentObserved", device_types={DEV_EUI: "WeatherObserved"})
    assert ngsi_ld.choose_type(co2, options) == "WeatherObserved"
    # A pinned IndoorEnvironmentObserved keeps both co2 and illuminance.
    indoor = ngsi_ld.entities([co2], NgsiLdOptions(device_types={DEV_EUI: "IndoorEnvironmentObserved"}))[0]
    assert (indoor["co2"]["value"], indoor["co2"]["unitCode"], indoor["illuminance"]["value"]) == (400.0, "59", 30)
    assert_valid(indoor, location_required=False)


# --- values that cannot be sent, locations, empty uplinks ---


def test_ngsi_ld_skips_non_numeric_and_non_finite_values():
    readings = [Reading("temperature", math.nan, "Cel"), Reading("humidity", True, "%RH"),
                Reading("illuminance", "bright", "lx"), Reading("pressure", 100000, "Pa")]
    observed = ngsi_ld.entities([entry(readings)], NgsiLdOptions())[0]
    assert [k for k in observed if k not in ("id", "type", "dateObserved", "refDevice", "@context")] == \
        ["atmosphericPressure"]
    json.dumps(observed, allow_nan=False)


def test_ngsi_ld_device_position_comes_from_its_own_gps_first():
    readings = [*ELSYS, Reading("latitude", 59.3293, "lat"), Reading("longitude", 18.0686, "lon")]
    produced = by_type(ngsi_ld.entities([entry(readings)], NgsiLdOptions(locations={DEV_EUI: SUNDSVALL})))
    assert produced["IndoorEnvironmentObserved"]["location"]["value"]["coordinates"] == [18.0686, 59.3293]
    assert "location" in produced["Device"]["controlledProperty"]["value"]


def test_ngsi_ld_uplink_without_mapped_readings():
    assert ngsi_ld.entities([entry([])], NgsiLdOptions()) == []
    # Only a battery voltage: nothing to observe, no controlledProperty, so no Device either.
    assert ngsi_ld.entities([entry([Reading("battery-voltage", 3.6, "V")])], NgsiLdOptions()) == []
    # Motion only: a Device (it senses motion) but no observed entity, and no dangling refDevice.
    only_motion = ngsi_ld.entities([entry([Reading("motion", 2, "count")])], NgsiLdOptions())
    assert [e["type"] for e in only_motion] == ["Device"]


def test_ngsi_ld_without_device_entity():
    produced = ngsi_ld.entities([entry(ELSYS)], NgsiLdOptions(device_entity=False))
    assert [e["type"] for e in produced] == ["IndoorEnvironmentObserved"]
    assert "refDevice" not in produced[0]


def test_ngsi_ld_context_override():
    options = NgsiLdOptions(contexts={"IndoorEnvironmentObserved": "https://ctx.example/city.jsonld"})
    observed, device = ngsi_ld.entities([entry(ELSYS)], options)
    assert observed["@context"] == ["https://ctx.example/city.jsonld", ngsi_ld_context.CORE_CONTEXT]
    assert device["@context"] == [ngsi_ld_context.CONTEXTS["Device"], ngsi_ld_context.CORE_CONTEXT]


# --- the operator-extendable table ---


def test_attribute_table_extends_and_removes_defaults():
    table = ngsi_ld_attributes.attribute_table([
        {"entity_type": "WeatherObserved", "reading": "temperature-external", "attribute": "temperature",
         "unit_code": "CEL"},
        {"entity_type": "WeatherObserved", "reading": "illuminance", "attribute": ""},
        {"entity_type": "GreenspaceRecord", "reading": "soil-moisture", "attribute": "soilMoisturePressure",
         "unit_code": "C62"},
    ])
    weather = table.for_type("WeatherObserved")
    assert weather["temperature-external"].attribute == "temperature"
    assert "illuminance" not in weather
    assert "GreenspaceRecord" in table.types()
    options = NgsiLdOptions(attributes=table, climate_type="WeatherObserved")
    observed = ngsi_ld.entities([entry([Reading("temperature-external", 3.5, "Cel"),
                                        Reading("illuminance", 100, "lx")])], options)[0]
    assert observed["temperature"]["value"] == 3.5 and "illuminance" not in observed
    green = ngsi_ld.entities([entry([Reading("soil-moisture", 0.31, "/")])],
                             NgsiLdOptions(attributes=table, entity_type="GreenspaceRecord"))[0]
    assert green["id"] == f"urn:ngsi-ld:GreenspaceRecord:{DEV_EUI}"
    assert green["@context"] == [ngsi_ld_context.CORE_CONTEXT]  # no known model context for an operator's type


@pytest.mark.parametrize("bad", [
    {"reading": "x", "attribute": "y"},
    {"entity_type": "T", "reading": "x", "attribute": 3},
    {"entity_type": "T", "reading": "x", "attribute": "y", "scale": "lots"},
])
def test_attribute_table_rejects_bad_entries(bad):
    with pytest.raises(ValueError, match="NGSI-LD attribute entry 0"):
        ngsi_ld_attributes.attribute_table([bad])


# --- batching and the formatter ---


def test_upsert_batches_split_repeated_ids_and_keep_their_order():
    items = [{"id": f"urn:x:{n}", "seq": i} for i, n in enumerate("aabacab")]
    batches = ngsi_ld.upsert_batches(items, 3)
    for batch in batches:
        assert len(batch) <= 3
        assert len({e["id"] for e in batch}) == len(batch)
    flat = [(e["id"], e["seq"]) for batch in batches for e in batch]
    for key in ("urn:x:a", "urn:x:b"):
        seqs = [s for k, s in flat if k == key]
        assert seqs == sorted(seqs)
    assert sorted(flat, key=lambda p: p[1]) == [(e["id"], e["seq"]) for e in items]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from("abcdef"), max_size=60), st.integers(min_value=1, max_value=7))
def test_upsert_batches_property(ids, size):
    items = [{"id": k, "seq": i} for i, k in enumerate(ids)]
    batches = ngsi_ld.upsert_batches(items, size)
    assert sum(len(b) for b in batches) == len(items)
    position = {}
    for n, batch in enumerate(batches):
        assert 0 < len(batch) <= size
        assert len({e["id"] for e in batch}) == len(batch)
        for e in batch:
            position[e["seq"]] = n
    for k in set(ids):
        request_order = [position[e["seq"]] for e in items if e["id"] == k]
        assert request_order == sorted(request_order) and len(set(request_order)) == len(request_order)
    # No more requests than needed: the longest run of one id, or the size limit.
    longest = max((ids.count(k) for k in set(ids)), default=0)
    assert len(batches) <= max(longest, math.ceil(len(items) / size)) + longest


def test_formatter_produces_upsert_bodies():
    backlog = [entry(ELSYS, id=i, t=T0 + i) for i in range(1, 4)]
    backlog.append(entry(AIR, dev_eui="0004a30b001c0ffe", id=4))
    messages = ngsi_ld.make_ngsi_ld_formatter(NgsiLdOptions(batch_size=100))(backlog)
    assert {m.topic for m in messages} == {""}
    assert {m.content_type for m in messages} == {"application/ld+json"}
    bodies = [json.loads(m.payload) for m in messages]
    # Three uplinks of one device: three requests, each id once per request, oldest first.
    assert len(bodies) == 3
    times = [e["temperature"]["observedAt"] for body in bodies for e in body if e["id"].endswith(DEV_EUI)
             and "temperature" in e]
    assert times == sorted(times) and len(times) == 3
    assert all(isinstance(body, list) and all("@context" in e for e in body) for body in bodies)


def test_formatter_respects_batch_size():
    backlog = [entry(ELSYS, dev_eui=f"{i:016x}", id=i) for i in range(1, 8)]
    messages = ngsi_ld.make_ngsi_ld_formatter(NgsiLdOptions(batch_size=5))(backlog)
    assert [len(json.loads(m.payload)) for m in messages] == [5, 5, 4]


def test_upsert_url():
    assert ngsi_ld.upsert_url("https://broker.example:1026/") == \
        "https://broker.example:1026/ngsi-ld/v1/entityOperations/upsert?options=update"


def _mutated(readings, options, entity_type, mutate):
    entity = by_type(ngsi_ld.entities([entry(readings)], options))[entity_type]
    mutate(entity)
    return entity


@pytest.mark.parametrize(("readings", "options", "entity_type", "mutate"), [
    # Each case breaks one thing the checks must catch; the unmutated entity is valid (tests above).
    (WEATHER, NgsiLdOptions(climate_type="WeatherObserved"), "WeatherObserved",
     lambda e: e["relativeHumidity"].update(value=93)),  # %RH not converted to 0..1
    (AIR, NgsiLdOptions(), "AirQualityObserved",
     lambda e: e["dateObserved"]["value"].update({"@value": "2026-11-25T10:00:00"})),  # no UTC offset
    (WATER, NgsiLdOptions(), "WaterConsumptionObserved",
     lambda e: e["waterConsumption"].update(value=123.4567)),  # not integer litres
    (ELSYS, NgsiLdOptions(), "IndoorEnvironmentObserved",
     lambda e: e.update(temprature=e.pop("temperature"))),  # misspelt attribute
    (ELSYS, NgsiLdOptions(), "IndoorEnvironmentObserved",
     lambda e: e["temperature"].pop("value")),  # a Property without value
    (ELSYS, NgsiLdOptions(), "IndoorEnvironmentObserved",
     lambda e: e["temperature"].update(unitCode="Cel")),  # a SenML unit, not UN/CEFACT
    (ELSYS, NgsiLdOptions(), "IndoorEnvironmentObserved",
     lambda e: e["temperature"].update(observedAt="2026-11-25 10:00")),  # not RFC 3339
    (ELSYS, NgsiLdOptions(), "Device", lambda e: e.pop("controlledProperty")),  # required by Device
    (ELSYS, NgsiLdOptions(), "IndoorEnvironmentObserved", lambda e: e.pop("dateObserved")),  # required
], ids=["humidity-percent", "date-without-offset", "water-not-integer", "misspelt", "no-value", "unit-code",
        "observed-at", "device-no-controlled-property", "no-date-observed"])
def test_ngsi_ld_validation_catches_invalid_entities(readings, options, entity_type, mutate):
    with pytest.raises(AssertionError):
        assert_valid(_mutated(readings, options, entity_type, mutate), location_required=False)


def test_ngsi_ld_new_quantities_convert_to_schema_units():
    weather = by_type(ngsi_ld.entities([entry(STATION)], NgsiLdOptions()))["WeatherObserved"]
    assert weather["windSpeed"]["value"] == 4.2 and weather["windSpeed"]["unitCode"] == "MTS"
    assert weather["precipitation"]["value"] == 1.2 and weather["precipitation"]["unitCode"] == "MMT"
    air = by_type(ngsi_ld.entities([entry(GASES)], NgsiLdOptions()))["AirQualityObserved"]
    assert air["no2"]["value"] == 21 and air["co"]["value"] == 0.4 and air["sh2"]["value"] == 1
    assert air["pm1"]["value"] == 4 and air["airQualityIndex"]["value"] == 42
    indoor = by_type(ngsi_ld.entities([entry(PEOPLE)], NgsiLdOptions()))["IndoorEnvironmentObserved"]
    assert indoor["peopleCount"]["value"] == 12


def test_ngsi_ld_history_samples_get_their_own_observed_at():
    # A water meter's hourly history (issue #13): one occurrence per sample time, oldest first, the
    # uplink's own readings last, so the broker's current value is the newest.
    readings = [Reading("volume", 123.4, "m3", "history[0].volume", T0 - 7200),
                Reading("volume", 123.42, "m3", "history[1].volume", T0 - 3600),
                Reading("volume", 123.456, "m3", "volume"), Reading("battery", 80, "%EL")]
    produced = ngsi_ld.entities([entry(readings)], NgsiLdOptions())
    water = [e for e in produced if e["type"] == "WaterConsumptionObserved"]
    assert [(e["waterConsumption"]["value"], e["waterConsumption"]["observedAt"]) for e in water] == [
        (123400, "2026-11-25T08:00:00.000Z"), (123420, "2026-11-25T09:00:00.000Z"),
        (123456, "2026-11-25T10:00:00.000Z")]
    for entity in produced:
        assert_valid(entity, location_required=False)
    batches = ngsi_ld.upsert_batches(produced, 100)
    # Each occurrence of the entity id goes in its own request, in time order.
    assert [[e["waterConsumption"]["observedAt"] for e in b if "waterConsumption" in e] for b in batches] == [
        ["2026-11-25T08:00:00.000Z"], ["2026-11-25T09:00:00.000Z"], ["2026-11-25T10:00:00.000Z"]]
