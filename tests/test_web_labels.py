"""Prometheus label values come only from known sets: a decoder tag from outside never becomes a series."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import orjson

from edge.config import parse_config
from edge.decoding.builtin import builtin_decoders
from edge.pipeline import Pipeline
from edge.simulate import Simulator
from edge.sources.chirpstack_mqtt import Message
from edge.web import WebServer
from edge.web.metrics import decoder_label
from tests.test_web import config, metrics


def test_web_decoder_label_is_bounded_whatever_the_tags(tmp_path: Path) -> None:
    """300 uplinks with 300 different unknown decoder tags (one with a newline, one with quotes): 2 series."""
    p = Pipeline(parse_config(config(tmp_path)), decoders=builtin_decoders())
    try:
        messages = []
        for i, (topic, body, _) in enumerate(Simulator(3, seed=4).events(302)):
            doc = orjson.loads(body)
            if i < 300:
                doc["deviceInfo"]["tags"]["decoder"] = f'made-up-{i}' + ('\n# forged 1' if i == 7 else '"}' * (i == 8))
            else:  # a known decoder failing: keeps its own label
                doc["data"] = base64.b64encode(b"\xff\x00").decode()
            messages.append(Message(topic, orjson.dumps(doc), time.time()))
        p.handle(messages)
        with WebServer(p, port=0) as web:
            m = metrics(web)
        series = {labels: v for (name, labels), v in m.items() if name == "edge_buffer_decode_errors"}
        assert series == {(("decoder", "unknown"),): 300, (("decoder", "elsys/ers"),): 2}, series
    finally:
        p.buffer.close()


def test_web_decoder_label_values() -> None:
    known = frozenset({"elsys/ers"})
    assert decoder_label("elsys/ers", known) == "elsys/ers"
    assert decoder_label("chirpstack", known) == "chirpstack"
    assert decoder_label("", known) == "none"
    assert decoder_label("profile-js/5e0c2a4e-9d1b-4f7a-8c3e-2b6f1d0a9c11", known) == "profile-js"
    assert decoder_label("profile-js/x\ny", known) == "unknown"
    assert decoder_label("evil/#", known) == "unknown"
