"""Stored entries → SenML packs (RFC 8428) in JSON or CBOR; pure functions, no I/O.

Layout of a pack (docs/records.md): for each uplink, a first record carries the base name
`urn:dev:mac:<dev_eui>_` (RFC 9039; repeated only when it changes), the base time `bt` = the
uplink's ChirpStack receive time, and the uplink's stable id as `{"n": "uplink", "vs":
"urn:uuid:<deduplicationId>"}`. The readings follow with name, unit and value. A reading with its
own time (a meter's history, a sample list) carries `t` relative to `bt` (RFC 8428 §4.5.3: the
stored record holds the absolute time, the pack the difference), so history resolves to its own
time and the current values to `bt`. Several uplinks of one device may share a pack while a
backlog drains; each starts with its own `bt` and id record, so every reading resolves to (name,
time) and carries its uplink id.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cbor2
import orjson

from edge.model import Entry

JSON = "senml+json"
CBOR = "senml+cbor"
CONTENT_TYPES = {JSON: "application/senml+json", CBOR: "application/senml+cbor"}

# RFC 8428 §6 Table 4.
_LABELS = {"bn": -2, "bt": -3, "n": 0, "u": 1, "v": 2, "vs": 3, "vb": 4, "t": 6}


def _id_record(bn: str | None, t: float, uplink_id: str) -> dict[str, Any]:
    rec: dict[str, Any] = {}
    if bn is not None:
        rec["bn"] = bn
    rec["bt"] = t
    rec["n"] = "uplink"
    rec["vs"] = f"urn:uuid:{uplink_id}"
    return rec


def _relative(records: list[dict[str, Any]], bt: float) -> list[dict[str, Any]]:
    """Stored records with absolute `t` made relative to the pack's base time `bt`."""
    for rec in records:
        if "t" in rec:
            rec["t"] = float(f"{rec['t'] - bt:.12g}")
    return records


def _readings_blob(entry: Entry) -> bytes:
    """The stored readings for a pack: spliced as stored unless a record has its own time."""
    blob = entry.readings_json
    if b'"t":' not in blob:
        return blob
    return orjson.dumps(_relative(orjson.loads(blob), entry.time))


def _base_name(entry: Entry, link: bool) -> str:
    return f"urn:dev:mac:{entry.dev_eui}_lorawan_" if link else f"urn:dev:mac:{entry.dev_eui}_"


def _records(entries: Sequence[Entry], link: bool) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    last_bn = None
    for e in entries:
        bn = _base_name(e, link)
        out.append(_id_record(bn if bn != last_bn else None, e.time, e.uplink_id))
        last_bn = bn
        out.extend(orjson.loads(e.radio_json) if link else _relative(orjson.loads(e.readings_json), e.time))
    return out


def measurement_records(entries: Sequence[Entry]) -> list[dict[str, Any]]:
    """SenML records (JSON labels) for the readings of consecutive uplinks of one device."""
    return _records(entries, link=False)


def link_records(entries: Sequence[Entry]) -> list[dict[str, Any]]:
    """SenML records for the radio metadata of the same uplinks (their own pack and topic).

    RSSI is given in dBW (dBm − 30), SNR in dB, frequency in Hz: primary units only (RFC 8798 §3).
    """
    return _records(entries, link=True)


def section_size(entry: Entry, link: bool) -> int:
    """The bytes one uplink adds to a SenML JSON pack (CBOR is smaller), for splitting packs."""
    return len(entry.radio_json if link else entry.readings_json) + 140


def pack(entries: Sequence[Entry], fmt: str, link: bool = False) -> bytes:
    """One SenML pack for consecutive uplinks of one device: measurements, or radio metadata.

    SenML JSON is assembled by splicing the stored record blobs (they are SenML records
    already), with no parsing on this hot path; SenML CBOR re-encodes the parsed records.
    """
    if fmt != JSON:
        return encode(_records(entries, link), fmt)
    parts = [b"["]
    last_bn = None
    for e in entries:
        if len(parts) > 1:
            parts.append(b",")
        bn = _base_name(e, link)
        head = b'{"bn":' + orjson.dumps(bn) + b"," if bn != last_bn else b"{"
        last_bn = bn
        parts.append(head + b'"bt":' + orjson.dumps(e.time) + b',"n":"uplink","vs":"urn:uuid:'
                     + e.uplink_id.encode() + b'"}')
        blob = e.radio_json if link else _readings_blob(e)
        if len(blob) > 2:
            parts.append(b",")
            parts.append(blob[1:-1])
    parts.append(b"]")
    return b"".join(parts)


def encode(records: list[dict[str, Any]], fmt: str) -> bytes:
    """Encode a pack as SenML JSON or SenML CBOR (integer labels)."""
    if fmt == JSON:
        return orjson.dumps(records)
    if fmt == CBOR:
        return bytes(cbor2.dumps([{_LABELS[k]: v for k, v in rec.items()} for rec in records]))
    raise ValueError(f"unknown SenML format {fmt!r}")


def decode(payload: bytes, fmt: str) -> list[dict[str, Any]]:
    """Decode a pack back to JSON-labelled records (tests and tools)."""
    if fmt == JSON:
        records: list[dict[str, Any]] = orjson.loads(payload)
        return records
    names = {v: k for k, v in _LABELS.items()}
    return [{names.get(k, k): v for k, v in rec.items()} for rec in cbor2.loads(payload)]


def resolve(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Resolve a pack (RFC 8428 §4.6): absolute names and times, no base fields."""
    out: list[dict[str, Any]] = []
    bn, bt = "", 0.0
    for rec in records:
        bn = rec.get("bn", bn)
        bt = rec.get("bt", bt)
        item = {"n": bn + rec.get("n", ""), "t": bt + rec.get("t", 0)}
        for key in ("u", "v", "vs", "vb"):
            if key in rec:
                item[key] = rec[key]
        out.append(item)
    return out
