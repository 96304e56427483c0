"""The Smart Data Models entity types the NGSI-LD format sends, and the JSON-LD @context each entity carries."""

from __future__ import annotations

from collections.abc import Mapping

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


def context(entity_type: str, overrides: Mapping[str, str]) -> list[str]:
    """The @context of an entity of `entity_type`: its model's context (`overrides` first), then the core context."""
    model = overrides.get(entity_type) or CONTEXTS.get(entity_type)
    return [model, CORE_CONTEXT] if model else [CORE_CONTEXT]
