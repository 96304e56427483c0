"""Renders upstream topics from data safely: placeholder values validated, published topics checked."""

from __future__ import annotations

import functools
import logging
import re
import threading
from collections.abc import Mapping
from types import MappingProxyType

log = logging.getLogger(__name__)

# What a placeholder value from data turns into when it is not of its documented form. A fixed,
# harmless level: the record is still delivered, on a topic no sender can choose (docs/records.md).
INVALID = "invalid"
# The MQTT limit on a topic name's UTF-8 length (MQTT 5 §1.5.4: a two-byte length prefix).
MAX_TOPIC_BYTES = 65535

_EUI = re.compile(r"[0-9a-f]{16}")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# ChirpStack v3 numbered its applications (decimal ids); v4 uses UUIDs.
_V3_ID = re.compile(r"[0-9]{1,20}")
# Levels of the edge id (from config, validated there): letters, digits and a few marks.
_EDGE_ID = re.compile(r"[A-Za-z0-9._:@=~-]{1,128}")
# Characters a topic built from data must never contain: wildcards (refused in PUBLISH, MQTT 5
# §4.7.1), NUL (§1.5.4), other control characters (MQTT 5 §1.5.4 "SHOULD NOT"), lone surrogates.
_FORBIDDEN = re.compile(r"[+#\x00-\x1f\x7f-\x9f\ud800-\udfff]")

_warned: set[tuple[str, str]] = set()
_warned_lock = threading.Lock()
_WARN_DISTINCT = 100  # distinct refused values warned about per process; beyond that only DEBUG


def _refused(kind: str, value: str) -> str:
    key = (kind, value[:64])
    with _warned_lock:
        first = key not in _warned and len(_warned) < _WARN_DISTINCT
        if first:
            _warned.add(key)
    # %r escapes control characters, so a hostile value cannot forge a log line.
    if first:
        log.warning("Topic level %r used instead of %s %r from ChirpStack, which is not of its documented form"
                    " (docs/records.md, Topics).", INVALID, kind, value[:64])
    else:
        log.debug("Invalid %s %r replaced by %r in a topic.", kind, value[:64], INVALID)
    return INVALID


def eui(value: str, kind: str = "DevEUI") -> str:
    """A DevEUI or gateway id as a topic level: 16 lower-case hex digits, else INVALID."""
    low = value.lower()
    return low if _EUI.fullmatch(low) else _refused(kind, value)


def application(value: str) -> str:
    """A ChirpStack application id as a topic level: a UUID (v4) or a decimal number (v3), else INVALID."""
    low = value.lower()
    return low if _UUID.fullmatch(low) or _V3_ID.fullmatch(low) else _refused("application id", value)


def edge_level(value: str) -> str:
    """The gateway's own id as a topic level (validated by `edge validate`; checked again here)."""
    return value if _EDGE_ID.fullmatch(value) else _refused("edge id", value)


def _compute(dev_eui: str, application_id: str, gateway_id: str | None, edge_id: str) -> Mapping[str, str]:
    app = application(application_id)
    return MappingProxyType({"dev_eui": eui(dev_eui), "application": app, "application_id": app,
                             "gateway_id": eui(gateway_id, "gateway id") if gateway_id else "unknown",
                             "edge_id": edge_level(edge_id)})


_cached = functools.lru_cache(maxsize=4096)(_compute)


def fields(dev_eui: str, application_id: str, gateway_id: str | None, edge_id: str) -> Mapping[str, str]:
    """Every topic placeholder's value, each validated (docs/records.md "Topics"); read-only.

    Cached: a backlog drain renders the same devices' topics over and over. Values far longer than
    any valid one are checked uncached, so a flood of them cannot fill the cache with large strings.
    """
    if len(dev_eui) + len(application_id) + len(gateway_id or "") + len(edge_id) > 256:
        return _compute(dev_eui, application_id, gateway_id, edge_id)
    return _cached(dev_eui, application_id, gateway_id, edge_id)


def problem(topic: str) -> str:
    """Why `topic` cannot be published to ('' when it can): empty, too long, or a forbidden character."""
    if not topic:
        return "empty topic"
    bad = _FORBIDDEN.search(topic)
    if bad:
        return f"topic contains the forbidden character {bad.group()!r}"
    if len(topic.encode("utf-8")) > MAX_TOPIC_BYTES:
        return f"topic longer than {MAX_TOPIC_BYTES} bytes"
    return ""
