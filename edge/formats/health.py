"""Health notices as SenML packs (pure functions): a device's new state, why, and its link quality."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from edge.formats import ngsi_ld, ngsi_ld_context, senml

NGSI_LD = "ngsi-ld"


def records(notice: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One notice as SenML records (docs/health.md): base name the device, base time the change.

    `health` carries the state (ok, silent, never-seen), `health-problems` the problems joined by ','
    (empty when none), `health-notice` the notice's stable id (receivers drop repeats by it).
    """
    s = notice["summary"]
    out: list[dict[str, Any]] = [
        {"bn": f"urn:dev:mac:{notice['dev_eui']}_", "bt": notice["time"], "n": "health", "vs": notice["state"]},
        {"n": "health-problems", "vs": ",".join(notice["problems"])},
        {"n": "health-notice", "vs": f"urn:uuid:{notice['id']}"},
    ]
    optional = (("silent-for", "s", s.get("silent_for_s")), ("expected-interval", "s", s.get("expected_interval_s")),
                ("loss-ratio", "/", s.get("loss_ratio")),
                # SenML's primary unit for RSSI is dBW (RFC 8798: dBm is secondary), as in link packs.
                ("rssi", "dBW", None if s.get("rssi_dbm") is None else round(s["rssi_dbm"] - 30, 1)),
                ("snr", "dB", s.get("snr_db")), ("battery", "%EL", s.get("battery")),
                ("battery-voltage", "V", s.get("battery_voltage")))
    out += [{"n": name, "u": unit, "v": value} for name, unit, value in optional if value is not None]
    if s.get("best_gateway"):
        out.append({"n": "best-gateway", "vs": s["best_gateway"]})
    return out


def pack(notice: Mapping[str, Any], fmt: str) -> bytes:
    """The notice encoded as a SenML JSON or CBOR pack."""
    return senml.encode(records(notice), fmt)


def device_state(notice: Mapping[str, Any]) -> str:
    """The NGSI-LD Device `deviceState` text: the state, then its problems, e.g. `ok: low-battery`."""
    problems = ",".join(notice["problems"])
    return f"{notice['state']}: {problems}" if problems else str(notice["state"])


def ngsi_ld_device(notice: Mapping[str, Any]) -> bytes:
    """The notice as an NGSI-LD batch upsert body: the device's Device entity with its `deviceState`.

    Sent with `options=update`, so only `deviceState` changes; the observed entities and the
    Device's other attributes (written with the uplinks) stay as they are.
    """
    entity = {"id": ngsi_ld.entity_id(ngsi_ld_context.DEVICE, notice["dev_eui"]), "type": ngsi_ld_context.DEVICE,
              "deviceState": {"type": "Property", "value": device_state(notice),
                              "observedAt": ngsi_ld.iso_time(notice["time"])},
              "@context": [ngsi_ld_context.CONTEXTS[ngsi_ld_context.DEVICE], ngsi_ld_context.CORE_CONTEXT]}
    return orjson.dumps([entity])


def encode(notice: Mapping[str, Any], fmt: str) -> tuple[bytes, str]:
    """The notice in an upstream's format, with its media type."""
    if fmt == NGSI_LD:
        return ngsi_ld_device(notice), "application/ld+json"
    return pack(notice, fmt), senml.CONTENT_TYPES[fmt]
