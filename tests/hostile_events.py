"""Hostile ChirpStack events of every kind issue #11 lists, built next to a good uplink of the simulator.

Shared by the unit, property and end-to-end tests of intake. Deep documents are spliced as bytes:
orjson refuses to serialise more than 255 levels, and the point is 1,000.
"""

from __future__ import annotations

import base64
import random
from collections.abc import Callable, Iterator

import orjson
from chirpstack_api import integration

from edge.simulate import APPLICATION_ID, Simulator, dev_eui_of

DEEP = 1000
GOOD_UUID = "6f1c2b7d-9e01-4f4e-9c55-3f1c2b7d9e01"


def deep_json(levels: int, kind: str = "object") -> bytes:
    """A JSON value nested `levels` deep: {"a":{"a":...1...}} or [[[...1...]]]."""
    if kind == "object":
        return b'{"a":' * levels + b"1" + b"}" * levels
    return b"[" * levels + b"1" + b"]" * levels


def _splice(doc: dict[str, object], path: tuple[str, ...], raw: bytes) -> bytes:
    """`doc` as JSON with the value at `path` replaced by the raw JSON `raw` (a marker string is swapped)."""
    marker = "@@HOSTILE@@"
    target = doc
    for key in path[:-1]:
        target = target[key]  # type: ignore[assignment]
    target[path[-1]] = marker
    return orjson.dumps(doc).replace(b'"' + marker.encode() + b'"', raw)


def _base(n: int, kind: str = "up") -> tuple[str, dict[str, object]]:
    """A good v4 event of device `n` (a fresh uplink id) and its topic, to be spoiled."""
    topic, body, _ = next(Simulator(1, seed=1000 + n).events(1))
    doc = orjson.loads(body)
    doc["deduplicationId"] = str(__import__("uuid").UUID(int=random.Random(n).getrandbits(128), version=4))
    dev = dev_eui_of(0)
    if kind != "up":
        doc = {"deviceInfo": doc["deviceInfo"], "time": doc["time"]}
        topic = f"application/{APPLICATION_ID}/device/{dev}/event/{kind}"
    return topic, doc


def _pb_up() -> bytes:
    _topic, body, _ = next(Simulator(1, protobuf=True, seed=77).events(1))
    return body


def _pb_deep_object(levels: int) -> bytes:
    event = integration.UplinkEvent.FromString(_pb_up())
    current = event.object
    for _ in range(levels):
        current = current.fields["a"].struct_value
    current.fields["v"].number_value = 1
    return event.SerializeToString()


# name -> builder(n) -> (topic, payload). Every one of them must be kept as malformed (or as a
# raw uplink that failed to decode), and cost nothing but itself.
def hostile_catalogue(huge_data_bytes: int = 10 * 1024 * 1024) -> dict[str, Callable[[int], tuple[str, bytes]]]:
    def deep_object(n: int) -> tuple[str, bytes]:
        topic, doc = _base(n)
        return topic, _splice(doc, ("object",), deep_json(DEEP))

    def keys_50k(n: int) -> tuple[str, bytes]:
        topic, doc = _base(n)
        doc["object"] = {f"k{i}": i for i in range(50_000)}
        return topic, orjson.dumps(doc)

    def random_bytes(n: int) -> tuple[str, bytes]:
        topic, _ = _base(n)
        return topic, random.Random(n).randbytes(512)

    def invalid_utf8(n: int) -> tuple[str, bytes]:
        topic, doc = _base(n)
        doc["deviceInfo"]["deviceName"] = "@@NAME@@"  # type: ignore[index]
        return topic, orjson.dumps(doc).replace(b"@@NAME@@", b"\xff\xfe\xc3(")

    def non_hex_dev_eui(n: int) -> tuple[str, bytes]:
        topic, doc = _base(n)
        doc["deviceInfo"]["devEui"] = "zz00000000000000"  # type: ignore[index]
        return topic, orjson.dumps(doc)

    def bad_base64(n: int) -> tuple[str, bytes]:
        topic, doc = _base(n)
        doc["data"] = "!!not*base64=="
        return topic, orjson.dumps(doc)

    def fport_70000(n: int) -> tuple[str, bytes]:
        topic, doc = _base(n)
        doc["fPort"] = 70000
        return topic, orjson.dumps(doc)

    def wrong_types(n: int) -> tuple[str, bytes]:
        topic, doc = _base(n)
        doc["fCnt"] = "seven"
        doc["rxInfo"] = {"rssi": "loud"}
        doc["txInfo"] = [1, 2]
        return topic, orjson.dumps(doc)

    def deep_log(n: int) -> tuple[str, bytes]:
        topic, doc = _base(n, "log")
        doc.update(level="ERROR", code="UPLINK_CODEC")
        return topic, _splice(doc, ("description",), deep_json(DEEP, "list"))

    def deep_status_margin(n: int) -> tuple[str, bytes]:
        topic, doc = _base(n, "status")
        return topic, _splice(doc, ("margin",), deep_json(DEEP, "list"))

    def deep_device_name(n: int) -> tuple[str, bytes]:
        topic, doc = _base(n)
        return topic, _splice(doc, ("deviceInfo", "deviceName"), deep_json(DEEP, "list"))

    def deep_tag(n: int) -> tuple[str, bytes]:
        topic, doc = _base(n)
        return topic, _splice(doc, ("deviceInfo", "tags", "site"), deep_json(DEEP))

    def huge_data(n: int) -> tuple[str, bytes]:
        topic, doc = _base(n)
        doc["data"] = base64.b64encode(random.Random(n).randbytes(huge_data_bytes)).decode()
        return topic, orjson.dumps(doc)

    def nan(n: int) -> tuple[str, bytes]:
        topic, doc = _base(n)
        return topic, _splice(doc, ("rxInfo",), b'[{"rssi": NaN, "snr": Infinity}]')

    def array_root(n: int) -> tuple[str, bytes]:
        topic, _ = _base(n)
        return topic, b'[{"deviceInfo": {"devEui": "0101010101010101"}}]'

    def uplink_id_injection(n: int) -> tuple[str, bytes]:
        topic, doc = _base(n)
        doc["deduplicationId"] = 'x"},{"n":"forged","v":1}'
        return topic, orjson.dumps(doc)

    def beyond_orjson_depth(n: int) -> tuple[str, bytes]:
        topic, doc = _base(n)
        return topic, _splice(doc, ("object",), deep_json(5000, "list"))

    def protobuf_garbage(n: int) -> tuple[str, bytes]:
        topic, _ = _base(n)
        pb = bytearray(_pb_up())
        rng = random.Random(n)
        for _ in range(8):
            pb[rng.randrange(len(pb))] = rng.randrange(256)
        return topic, bytes(pb[: len(pb) * 2 // 3]) + b"\x0a\xff\xff\xff\xff\x0f"

    def protobuf_deep_object(n: int) -> tuple[str, bytes]:
        topic, _ = _base(n)
        return topic, _pb_deep_object(60)

    return {name: fn for name, fn in locals().items() if callable(fn) and not name.startswith("_")}


def dated(n: int, year: int = 2099) -> tuple[str, bytes, str]:
    """A valid uplink whose event time is in `year` (it is delivered; decisions must not trust it)."""
    topic, doc = _base(n)
    doc["time"] = f"{year}-01-01T00:00:00+00:00"
    return topic, orjson.dumps(doc), str(doc["deduplicationId"])


def interleaved(good: Iterator[tuple[str, bytes, object]], every: int,
                catalogue: dict[str, Callable[[int], tuple[str, bytes]]]) -> Iterator[tuple[str, str, bytes, object]]:
    """Good events with one hostile message after every `every`-th: (kind, topic, payload, sent or name)."""
    hostile = list(catalogue.items())
    for i, (topic, body, sent) in enumerate(good, 1):
        yield "good", topic, body, sent
        if i % every == 0:
            name, build = hostile[(i // every - 1) % len(hostile)]
            h_topic, h_body = build(i)
            yield "hostile", h_topic, h_body, name
