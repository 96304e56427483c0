"""RSSI from ChirpStack to upstreams: received and shown in dBm, stored and sent in dBW, converted once, exactly."""

from __future__ import annotations

import copy
import json
import sqlite3
import uuid
from decimal import Decimal
from pathlib import Path

import orjson
import pytest

from edge import present
from edge.config import ShareRules
from edge.decoding.builtin import builtin_decoders
from edge.formats import senml
from edge.formats.share import ShareFilter
from edge.model import Entry, RadioInfo, Uplink, radio_from_json, radio_json
from edge.pipeline import Pipeline
from edge.sources.chirpstack_mqtt import Message
from tests.test_pipeline_unit import EVENTS, make_cfg

# Every one-decimal dBm value a gateway may report, -150.0 to 0.0.
DBM = [round(-150 + i / 10, 1) for i in range(1501)]


def exact_dbw(dbm: float) -> str:
    """dBm - 30 worked out in decimal, as text: -127.8 -> '-157.8'."""
    return str(Decimal(repr(dbm)) - 30)


def rssi_record(pack: bytes, fmt: str) -> float:
    (value,) = [r["v"] for r in senml.decode(pack, fmt) if r.get("n") == "rssi"]
    return float(value)


def messages() -> list[Message]:
    base = json.loads((EVENTS / "v4_up_elsys_ers.json").read_text())
    out = []
    for i, dbm in enumerate(DBM):
        doc = copy.deepcopy(base)
        doc["deduplicationId"] = str(uuid.UUID(int=i + 1, version=4))
        doc["deviceInfo"]["devEui"] = f"{i + 1:016x}"
        doc["rxInfo"] = [doc["rxInfo"][0] | {"rssi": dbm}]
        out.append(Message(f"application/app/device/{i + 1:016x}/event/up", json.dumps(doc).encode(), 1.0))
    return out


def test_rssi_of_1501_one_decimal_values_goes_out_as_the_exact_decimal_dbw(tmp_path: Path) -> None:
    msgs = messages()
    # As received, and as `edge watch` shows it: the dBm ChirpStack reported.
    uplinks = [m.event for m in msgs]
    assert all(isinstance(u, Uplink) for u in uplinks)
    assert [u.radio.rssi for u in uplinks if isinstance(u, Uplink)] == DBM
    p = Pipeline(make_cfg(tmp_path), decoders=builtin_decoders())
    try:
        p.handle(msgs)
        entries = p.buffer.read(0, 2000)
    finally:
        p.buffer.close()
    assert len(entries) == len(DBM)
    # The page and `edge status` read the device's last RSSI from the buffer: still the dBm received.
    db = sqlite3.connect(tmp_path / "buffer.sqlite")
    try:
        shown = dict(db.execute("SELECT dev_eui, rssi FROM devices").fetchall())
    finally:
        db.close()
    assert [shown[f"{i + 1:016x}"] for i in range(len(DBM))] == DBM
    assert [present.rssi(shown[f"{i + 1:016x}"]) for i in range(3)] == ["-150 dBm", "-149.9 dBm", "-149.8 dBm"]
    # Upstreams: link packs in both encodings, straight from the buffer and through sharing rules
    # (which rebuild every entry whose readings they change).
    shared = ShareFilter(ShareRules(quantities=("temperature",))).apply(entries)
    assert len(shared) == len(entries) and all(s is not e for s, e in zip(shared, entries, strict=True))
    wrong = []
    for dbm, stored, rebuilt in zip(DBM, entries, shared, strict=True):
        sent = {(fmt, which): rssi_record(senml.pack([entry], fmt, link=True), fmt)
                for fmt in (senml.JSON, senml.CBOR) for which, entry in (("stored", stored), ("shared", rebuilt))}
        if any(repr(v) != exact_dbw(dbm) for v in sent.values()) or stored.radio.rssi != dbm:
            wrong.append((dbm, sent, stored.radio.rssi))
    assert wrong == [], f"{len(wrong)} of {len(DBM)} values changed, e.g. {wrong[:3]}"


@pytest.mark.parametrize("dbm", [-127.8, -127.98, -87.25, -0.1, -33.333, -120.0, -120])
def test_radio_json_converts_rssi_once_and_exactly(dbm: float) -> None:
    blob = radio_json(RadioInfo(fcnt=1, rssi=dbm, snr=9.5, gateways=1))
    (record,) = [r for r in orjson.loads(blob) if r["n"] == "rssi"]
    assert record["u"] == "dBW" and repr(record["v"]) == exact_dbw(dbm)
    read = radio_from_json(blob)
    assert read.rssi == dbm  # back in dBm for anyone who reads it, -127.8 and not -127.80000000000001
    assert radio_json(read) == blob


def test_rssi_of_rows_stored_before_keeps_its_stored_form() -> None:
    # Rows written by earlier versions hold dBm - 30 as binary arithmetic gave it.
    dbm = -127.98
    old = orjson.dumps([{"n": "fcnt", "u": "count", "v": 7}, {"n": "rssi", "u": "dBW", "v": dbm - 30},
                        {"n": "gateways", "u": "count", "v": 1}])
    assert repr(dbm - 30) != exact_dbw(dbm)  # the noise such a row may hold
    entry = Entry(1, "u", "0101010101010101", "app", "", 0.0, [], radio_blob=old)
    assert entry.radio_json == old
    assert rssi_record(senml.pack([entry], senml.JSON, link=True), senml.JSON) == dbm - 30  # sent as stored
    assert entry.radio.fcnt == 7 and entry.radio.rssi == pytest.approx(dbm)
