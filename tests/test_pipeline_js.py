"""JS codecs in the pipeline: `decoding.codec_paths` YAMLs become decoders selected like native ones."""

from __future__ import annotations

from pathlib import Path

import orjson

from edge.config import load_config
from edge.pipeline import Pipeline
from edge.simulate import Simulator
from edge.sources.chirpstack_mqtt import Message

CODECS = Path(__file__).parent / "decoding" / "js" / "codecs"


def test_pipeline_codec_paths_js_codec_decodes_tagged_devices(make_config, tmp_path):
    # The codec's field map (`ttn:<vendor folder>/<stem>`) gives names and units.
    maps = tmp_path / "maps"
    maps.mkdir()
    (maps / "elsys-tlv.yaml").write_text("codecs: [ttn:elsys/elsys-tlv-codec]\nfields:\n"
                                         "  temperature: {n: temperature, u: Cel}\n  humidity: {n: humidity, u: '%'}\n")
    path = make_config("mqtt://127.0.0.1:1", "mqtt://127.0.0.1:2",
                       extra=f'\n[decoding]\ncodec_paths = ["{CODECS / "elsys"}"]\nmap_paths = ["{maps}"]\n')
    pipeline = Pipeline(load_config(path))
    assert pipeline.registry.get("elsys/elsys-tlv-codec") is not None
    msgs = []
    for topic, body, _ in Simulator(2, seed=1).events(4):
        doc = orjson.loads(body)
        doc["deviceInfo"]["tags"]["decoder"] = "elsys/elsys-tlv-codec"
        msgs.append(Message(topic, orjson.dumps(doc), 0.0))
    pipeline.handle(msgs)
    entries = pipeline.buffer.read(0, 10)
    assert len(entries) == 4
    for entry in entries:
        names = {r.name: r.unit for r in entry.readings}
        assert names["temperature"] == "Cel" and names["humidity"] == "%RH"
    assert pipeline.buffer.counters()["decoded"] == 4


def test_registry_profile_from_ttn_repository_gets_the_native_decoder():
    from edge.decoding.builtin import builtin_decoders
    from edge.decoding.registry import DecoderRegistry

    registry = DecoderRegistry(builtin_decoders())
    assert registry.native_for_profile("Elsys ERS CO2") == "elsys/ers-co2"
    assert registry.native_for_profile("Milesight IoT AM307") == "milesight-iot/am307"
    assert registry.native_for_profile("Some Thermometer", ttn_codec="dragino/lht65-codec") == "dragino/lht65"
    assert registry.native_for_profile("Greenhouse sensors") == ""


def test_pipeline_untagged_device_with_ttn_profile_name_is_decoded_natively(make_config):
    pipeline = Pipeline(load_config(make_config("mqtt://127.0.0.1:1", "mqtt://127.0.0.1:2")))
    msgs = []
    for topic, body, _ in Simulator(1, seed=3).events(2):
        doc = orjson.loads(body)
        del doc["deviceInfo"]["tags"]["decoder"]
        doc["deviceInfo"]["deviceProfileName"] = "Elsys ERS"
        msgs.append(Message(topic, orjson.dumps(doc), 0.0))
    pipeline.handle(msgs)
    assert pipeline.buffer.db.execute("SELECT DISTINCT decoder FROM uplinks").fetchall() == [("elsys/ers",)]
