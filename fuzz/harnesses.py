"""Coverage-guided fuzz targets (atheris): event parser, native decoders, SenML, config, the MQTT read path.

Run one for a while:   .venv/bin/python fuzz/harnesses.py events -max_total_time=600
The test suite runs each with a small fixed budget (tests/test_fuzz.py). Only the documented
exceptions may escape: none from the parser and the decoders, ConfigError from config loading,
ConnectionError (ProtocolError, ConnectionRefused) from the ChirpStack source's MQTT read path.
"""

from __future__ import annotations

import sys
import tomllib

import atheris

with atheris.instrument_imports():
    import cbor2

    from edge.config import parse_config
    from edge.decoding.base import DecodeResult, DeviceContext
    from edge.decoding.builtin import builtin_decoders
    from edge.decoding.fieldmap import map_for
    from edge.decoding.normalize import normalise
    from edge.errors import ConfigError
    from edge.formats import senml
    from edge.model import Entry, RadioInfo, Reading
    from edge.sources.chirpstack_events import parse
    from edge.sources.mqtt_wire import READ_SIZE, PacketReader, Publish, check_publish

KINDS = ("up", "join", "status", "log", "ack", "txack", "location", "foo")
DECODERS = builtin_decoders()
CONTEXT = DeviceContext("0000000000000000")


def events(data: bytes) -> None:
    """parse() turns any bytes on any event topic into an event, never an exception."""
    fdp = atheris.FuzzedDataProvider(data)
    kind = KINDS[fdp.ConsumeIntInRange(0, len(KINDS) - 1)]
    parse(f"application/a/device/0101010101010101/event/{kind}", fdp.ConsumeBytes(fdp.remaining_bytes()), 0.0)


def decoders(data: bytes) -> None:
    """Every native decoder returns a DecodeResult for any payload and fPort, and its map's normaliser copes."""
    fdp = atheris.FuzzedDataProvider(data)
    decoder = DECODERS[fdp.ConsumeIntInRange(0, len(DECODERS) - 1)]
    fport = fdp.ConsumeIntInRange(0, 255)
    result = decoder.decode(fdp.ConsumeBytes(fdp.remaining_bytes()), fport, CONTEXT)
    assert isinstance(result, DecodeResult)
    normalise(result.data, map_for(decoder)[1], 1.7e9)


def senml_round_trip(data: bytes) -> None:
    """Packs of arbitrary readings decode back to the same records in JSON and CBOR."""
    fdp = atheris.FuzzedDataProvider(data)
    readings = []
    for _ in range(fdp.ConsumeIntInRange(0, 8)):
        choice = fdp.ConsumeIntInRange(0, 2)
        value: float | bool | str = (fdp.ConsumeRegularFloat() if choice == 0 else fdp.ConsumeBool() if choice == 1
                                     else fdp.ConsumeUnicodeNoSurrogates(12))
        readings.append(Reading("q" + str(fdp.ConsumeIntInRange(0, 9)), value, fdp.PickValueInList([None, "Cel", "/"])))
    entry = Entry(1, "00000000-0000-4000-8000-000000000001", "0101010101010101", "app", "gw",
                  fdp.ConsumeFloatInRange(0, 4e9), readings, RadioInfo(fcnt=1, rssi=-80.0, gateways=1))
    records = senml.measurement_records([entry])
    for fmt in (senml.JSON, senml.CBOR):
        assert senml.decode(senml.pack([entry], fmt), fmt) == records
    cbor2.loads(senml.pack([entry], senml.CBOR, link=True))


def config(data: bytes) -> None:
    """Config loading raises ConfigError (or TOML's own error) for bad input, nothing else."""
    try:
        doc = tomllib.loads(data.decode("utf-8", "replace"))
    except tomllib.TOMLDecodeError:
        return
    try:
        parse_config(doc)
    except ConfigError:
        pass


def mqtt_read(data: bytes) -> None:
    """Any byte stream, split anywhere, ends in packets or a ConnectionError; the buffer stays bounded."""
    fdp = atheris.FuzzedDataProvider(data)
    v5 = fdp.ConsumeBool()
    limit = fdp.ConsumeIntInRange(2, 4096)
    reader = PacketReader(v5, limit)
    try:
        while fdp.remaining_bytes():
            chunk = fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, 512))
            reader.feed(chunk)
            while (packet := reader.next()) is not None:
                if isinstance(packet, Publish):
                    check_publish(packet)
                    assert isinstance(packet.payload, bytes) and isinstance(packet.topic, str)
            # What stays buffered is one partial packet within the limit, plus the last read.
            assert len(reader.buf) <= limit + len(chunk) + READ_SIZE
    except ConnectionError:
        pass


TARGETS = {"events": events, "decoders": decoders, "senml": senml_round_trip, "config": config,
           "mqtt_read": mqtt_read}

if __name__ == "__main__":
    target = TARGETS[sys.argv[1]]
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()
