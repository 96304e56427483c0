"""The status page: its HTML, CSS and JavaScript (package data in edge/web/static) and the policy that guards it.

One self-contained document: no external assets (the gateway may have no Internet, the phone may
be on the service LAN only), no framework. Every value from the buffer is inserted with
textContent, never as HTML, since device names and decoder errors come from outside.
"""

from __future__ import annotations

import base64
import hashlib
from importlib.resources import files
from typing import Any

from edge import present
from edge.model import DecodeStatus
from edge.status import Snapshot, plain_counters, unmapped_by_codec


def _asset(name: str) -> str:
    return (files("edge.web") / "static" / name).read_text(encoding="utf-8")


def _csp_hash(source: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode()).digest()).decode() + "'"


# Inlined on a line of their own after the opening tag, as the hashes below cover them.
_STYLE = "\n" + _asset("page.css")
_SCRIPT = "\n" + _asset("page.js")
PAGE = (_asset("page.html").replace("<style></style>", f"<style>{_STYLE}</style>", 1)
        .replace("<script></script>", f"<script>{_SCRIPT}</script>", 1).encode())

# Only this page's own inline style and script may run: injected markup could do nothing.
CSP = (f"default-src 'none'; connect-src 'self'; img-src 'self'; style-src {_csp_hash(_STYLE)};"
       f" script-src {_csp_hash(_SCRIPT)}; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def status_document(snap: Snapshot, edge_id: str, max_bytes: int, stuck_after_s: float) -> dict[str, Any]:
    """The /api/status JSON body: what the status page shows."""
    devices = []
    for d in snap.devices:
        status = d["status"]
        devices.append({
            "dev_eui": d["dev_eui"], "name": d["name"], "application": d["application_name"],
            "last_time": d["last_time"], "fcnt": d["fcnt"], "rssi": d["rssi"], "snr": d["snr"],
            "gateway_id": d["gateway_id"], "decoder": d["decoder"],
            "status": DecodeStatus.NAMES[status] if 0 <= status < len(DecodeStatus.NAMES) else str(status),
            # Shown as every technician view shows them (edge/present.py: °C, ppm, hPa...).
            "readings": [{**r, "text": present.reading(r["n"], r.get("v", r.get("vs", r.get("vb"))), r.get("u"))}
                         for r in d["readings"]],
        })
    return {
        "edge_id": edge_id,
        "now": snap.time,
        "healthy": snap.healthy,
        "problems": snap.problems,
        "stuck_after_s": stuck_after_s,
        "source": {"connected": snap.source_connected, "reconnects": snap.source_reconnects,
                   "commits": snap.commits},
        "buffer": {"used_bytes": snap.used_bytes, "max_bytes": max_bytes, "uplinks": snap.uplinks,
                   "error": snap.buffer_error},
        "counters": plain_counters(snap.counters),
        "unmapped": unmapped_by_codec(snap.counters),
        "upstreams": snap.upstreams,
        "devices": devices,
        "decode_errors": {"by_decoder": snap.decode_errors, "recent": snap.recent_failures},
        "malformed": [{"received": m["received"], "topic": m["topic"], "error": m["error"]} for m in snap.malformed],
        "health": {"counts": snap.health_counts, "devices": snap.health},
    }
