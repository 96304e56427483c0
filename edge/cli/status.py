"""`edge status`: backlogs, counters, sensor health and each device's last uplink, from the buffer and the service."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from edge import present
from edge.cli import CONFIG_OPTION, _existing_buffer, _load
from edge.cli.text import echo
from edge.config import Config

if TYPE_CHECKING:
    from edge.status import Progress


def service_health(cfg: Config, timeout: float = 3.0) -> dict[str, Any]:
    """What the running service's /health says, asked over the status server ([web]).

    Returns:
        `{"url", "reachable", "healthy", "problems", ...the /health body}`; `reachable` is False
        (with `error`) when nothing answers, `url` is "" when [web] is off.
    """
    import urllib.error
    import urllib.request

    web = cfg.web
    if not web.port:
        return {"url": "", "reachable": False, "healthy": None, "problems": [],
                "error": "the status server is off ([web] port = 0)"}
    # A wildcard bind is reached on loopback, like any specific address of this host.
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(web.bind, web.bind)
    url = f"http://{f'[{host}]' if ':' in host else host}:{web.port}/health"
    request = urllib.request.Request(url)
    try:
        token = web.token()
    except OSError as exc:
        return {"url": url, "reachable": False, "healthy": None, "problems": [],
                "error": f"cannot read web.token_file: {exc.strerror or exc}"}
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            body = json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        if exc.code != 503:
            return {"url": url, "reachable": True, "healthy": None, "problems": [],
                    "error": f"HTTP {exc.code} from {url}"}
        body = json.loads(exc.read())  # 503: unhealthy, and the body says why
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return {"url": url, "reachable": False, "healthy": None, "problems": [], "error": str(reason)}
    return {"url": url, "reachable": True, **body}


def _ago(ts: float | None) -> str:
    if ts is None:
        return "never"
    return f"{max(0.0, time.time() - ts):.0f}s ago"


@click.command()
@CONFIG_OPTION
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--devices", default=20, show_default=True, help="How many devices to list.")
def status(config_path: Path, as_json: bool, devices: int) -> None:
    """Show backlogs, counters and each device's last uplink."""
    from edge import quarantine
    from edge.buffer import Buffer
    from edge.model import DecodeStatus
    from edge.status import plain_counters, read_buffer, unmapped_by_codec, upstream_names

    cfg = _load(config_path)
    buf = Buffer(_existing_buffer(cfg.buffer.path), readonly=True)
    held = quarantine.load(quarantine.path_for(cfg.buffer.path))
    from importlib.metadata import PackageNotFoundError, version

    try:
        edge_version = version("lorawan-edge")
    except PackageNotFoundError:
        edge_version = "unknown"
    now = time.time()
    # A removed upstream's cursor row is listed too: its backlog still holds the buffer's rows.
    state = read_buffer(buf, upstream_names(cfg), now, unconfigured=True)
    counters = state.counters
    data: dict[str, Any] = {
        "edge_id": cfg.edge_id,
        "version": edge_version,
        "generated_at": now,
        "buffer": {"path": cfg.buffer.path, "used_bytes": state.used_bytes,
                   "max_bytes": int(cfg.buffer.max_size_mb * 1024 * 1024)},
        "counters": plain_counters(counters),
        # Fields no field map covers yet (sent unit-less under their own key), per codec key.
        "unmapped": unmapped_by_codec(counters),
        "upstreams": [_upstream(p) for p in sorted(state.progress, key=lambda p: p.name)],
        "devices": buf.devices(devices),
        "events": buf.recent_events(10),
        "malformed": buf.recent_malformed(5),
        # Uplinks a decoder hung on, to be stored raw when the broker redelivers them.
        "quarantined": [asdict(e) for e in held.values()],
        # Live state from the running service; the rest above is the buffer's and works without it.
        "service": service_health(cfg),
    }
    buf.close()
    from edge.cli.health import line as health_line
    from edge.cli.health import report as health_report

    sensors = health_report(cfg)
    data["health"] = {"counts": {s: sum(r["state"] == s for r in sensors) for s in ("ok", "silent", "never-seen")},
                      "with_problems": sum(bool(r["problems"]) for r in sensors),
                      "unwell": [r for r in sensors if r["state"] != "ok" or r["problems"]][:devices]}
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    c = data["counters"]
    # MiB, the unit of buffer.max_size_mb: 1024 in the config reads 1024.0 MiB here, not 1074 MB.
    echo(f"edge {cfg.edge_id}  buffer {present.size(data['buffer']['used_bytes'])}"
         f" of {present.size(data['buffer']['max_bytes'])}")
    svc = data["service"]
    if not svc["reachable"]:
        echo(f"service: not reachable ({svc['error']}); `systemctl status lorawan-edge` tells more")
    elif svc["healthy"]:
        echo("service: running, healthy")
    else:
        echo("service: running, PROBLEMS: " + ("; ".join(svc["problems"]) or svc.get("error", "")))
    if held:
        echo(f"quarantine: {quarantine.summary(held.values())}; {quarantine.FIX}")
    echo("counters: " + "  ".join(f"{k}={c.get(k, 0)}" for k in (
        "received", "duplicates", "decoded", "chirpstack", "undecoded", "decode_failed", "malformed", "events",
        "dropped")))
    if data["unmapped"]:
        top = list(data["unmapped"].items())[:8]
        more = len(data["unmapped"]) - len(top)
        echo("unmapped fields (no field map yet, sent without a unit): "
             + "  ".join(f"{codec}={n}" for codec, n in top) + (f"  (+{more} more)" if more else ""))
    echo("upstreams:")
    live = svc.get("upstreams", {}) if svc["reachable"] else {}
    for up in data["upstreams"]:
        age = up["oldest_undelivered_age_s"]
        state = live.get(up["name"], {})
        if not svc["reachable"]:
            link = "service down"
        elif state.get("connected"):
            link = "connected"
        else:
            down = state.get("disconnected_for_s")
            link = "NOT CONNECTED" + (f" for {down:.0f}s" if down is not None else "")
        echo(f"  {up['name']:<16} {link:<22} backlog={up['backlog']:<8}"
             f" oldest={'-' if age is None else f'{age:.0f}s'}  delivered={up['delivered']}"
             f"  dropped={up['dropped']}  last={_ago(up['last_delivery'])}")
    h = data["health"]
    echo(f"sensor health: {h['counts']['ok']} ok, {h['counts']['silent']} silent,"
         f" {h['counts']['never-seen']} never seen, {h['with_problems']} with problems"
         + ("; the unwell (edge devices health --unwell lists all):" if h["unwell"] else ""))
    for r in h["unwell"][:10]:
        echo(f"  {health_line(r)}")
    echo("devices (last uplink):")
    for d in data["devices"]:
        values = " ".join(f"{r['n']}={present.reading(r['n'], r.get('v', r.get('vs', r.get('vb'))), r.get('u'))}"
                          for r in d["readings"][:6])
        echo(f"  {d['dev_eui']} {d['name'][:20]:<20} {_ago(d['last_time']):>9} fcnt={d['fcnt']}"
             f" rssi={present.rssi(d['rssi'])} snr={present.snr(d['snr'])}"
             f" {DecodeStatus.NAMES[d['status']]}:{d['decoder'] or '-'}  {values}")
    if data["events"]:
        echo("device events:")
        for e in data["events"]:
            when = datetime.fromtimestamp(e["time"], UTC).strftime("%Y-%m-%d %H:%M:%S")
            echo(f"  {when} {e['dev_eui']} {e['kind']}: {e['summary']}")
    if data["malformed"]:
        echo("malformed messages (newest):")
        for m in data["malformed"]:
            echo(f"  {m['topic']}: {m['error']}")


def _upstream(p: Progress) -> dict[str, Any]:
    """An upstream as `edge status --json` lists it (cursor 0 before its first delivery)."""
    return {"name": p.name, "cursor": p.cursor or 0, "backlog": p.backlog,
            "oldest_undelivered_age_s": p.oldest_undelivered_age_s, "delivered": p.delivered,
            "dropped": p.dropped, "last_delivery": p.last_delivery}
