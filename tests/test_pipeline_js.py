"""JS codecs in the pipeline: `decoding.codec_paths` YAMLs become decoders selected like native ones."""

from __future__ import annotations

from pathlib import Path

import orjson

from edge.config import load_config
from edge.pipeline import Pipeline
from edge.simulate import Simulator
from edge.sources.chirpstack_mqtt import Message

CODECS = Path(__file__).parent / "decoding" / "js" / "codecs"


def test_pipeline_codec_paths_js_codec_decodes_tagged_devices(make_config):
    path = make_config("mqtt://127.0.0.1:1", "mqtt://127.0.0.1:2",
                       extra=f'\n[decoding]\ncodec_paths = ["{CODECS / "elsys"}"]\n')
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
