"""`edge buffer list` (what the gateway holds) and `edge buffer rewind` (send an upstream's data again)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import orjson

from edge.cli import CONFIG_OPTION, _existing_buffer, _load, _timestamp
from edge.cli.text import echo
from edge.model import DecodeStatus, Uplink

_STATUSES = {name: code for code, name in enumerate(DecodeStatus.NAMES)}


def _utc(ts: float | None, sep: str = " ") -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime(f"%Y-%m-%d{sep}%H:%M:%SZ")


def _short(records: list[dict[str, Any]]) -> str:
    parts = []
    for r in records:
        value = r.get("v", r.get("vs", r.get("vb")))
        parts.append(f"{r['n']}={value}" + (f" {r['u']}" if r.get("u") else ""))
    return "  ".join(parts)


@click.group()
def buffer() -> None:
    """Inspect the stored uplinks, or send an upstream's data again."""


@buffer.command("list")
@CONFIG_OPTION
@click.option("--device", "dev_eui", default=None, help="Only this DevEUI.")
@click.option("--since", default=None, help="Only uplinks received at or after this time (ISO 8601, or ago: 2h, 7d).")
@click.option("--until", default=None, help="Only uplinks received before this time (ISO 8601, or ago: 2h, 7d).")
@click.option("--status", "statuses", type=click.Choice(list(_STATUSES)), multiple=True,
              help="Only uplinks with this decode status (repeatable). Default: all but superseded (uplinks"
                   " re-decoded since; their newer row is listed).")
@click.option("--limit", type=click.IntRange(min=0), default=20, show_default=True,
              help="At most this many uplinks (0: all).")
@click.option("--raw", is_flag=True, help="Also show the LoRaWAN payload as hex.")
@click.option("--json", "as_json", is_flag=True,
              help="JSON Lines with everything: uplink id, stored SenML records, radio, raw payload (hex).")
def list_(config_path: Path, dev_eui: str | None, since: str | None, until: str | None, statuses: tuple[str, ...],
          limit: int, raw: bool, as_json: bool) -> None:
    """List stored uplinks, newest first, with their readings or decode error.

    Read only; works whether `edge run` is running or not. Newest first means newest stored:
    uplinks re-decoded by `edge redecode` are listed where they were stored again.
    """
    from edge.buffer import Buffer
    from edge.sources.chirpstack_events import parse

    cfg = _load(config_path)
    start, end = _timestamp(since, hint="--since"), _timestamp(until, hint="--until")
    buf = Buffer(_existing_buffer(cfg.buffer.path), readonly=True)
    shown = 0
    try:
        for row in buf.stored(dev_eui=dev_eui.lower() if dev_eui else None, since=start, until=end,
                              statuses=[_STATUSES[s] for s in statuses] or None, limit=limit or None,
                              raw=raw or as_json):
            shown += 1
            readings = orjson.loads(row.readings)
            radio = {r["n"]: r.get("v", r.get("vs")) for r in orjson.loads(row.radio)}
            payload: str | None = None
            if row.message is not None and row.topic is not None:
                event = parse(row.topic, row.message, row.received or row.time, cfg.chirpstack.max_payload_bytes)
                payload = event.payload.hex() if isinstance(event, Uplink) else None
            status = DecodeStatus.NAMES[row.status]
            if as_json:
                click.echo(json.dumps({
                    "id": row.id, "uplink_id": row.uplink_id, "record_id": f"urn:uuid:{row.uplink_id}",
                    "time": row.time, "time_utc": _utc(row.time, "T"), "dev_eui": row.dev_eui,
                    "application_id": row.application_id, "gateway_id": row.gateway_id or None,
                    "fcnt": radio.get("fcnt"), "fport": radio.get("fport"), "decoder": row.decoder or None,
                    "status": status, "error": row.error, "readings": readings, "radio": orjson.loads(row.radio),
                    "payload": payload, "received": row.received, "topic": row.topic,
                }))
                continue
            what = f"error: {row.error}" if row.error else _short(readings) or "(no readings)"
            line = (f"{_utc(row.time)}  {row.dev_eui}  fcnt={radio.get('fcnt', '-')} fport={radio.get('fport', '-')}"
                    f"  {row.decoder or '-'}  {status}  {what}")
            if raw:
                line += f"  payload={payload if payload is not None else '-'}"
            echo(line)
    finally:
        buf.close()
    if not as_json and not shown:
        click.echo("no stored uplinks match", err=True)


@buffer.command("rewind")
@CONFIG_OPTION
@click.option("--upstream", "name", required=True, help="The upstream (destination) to send the data to again.")
@click.option("--since", default=None,
              help="Send again every uplink held that was received at or after this time (ISO 8601, or ago: 2h, 7d).")
@click.option("--all", "everything", is_flag=True, help="Send again every uplink the buffer holds.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def rewind(config_path: Path, name: str, since: str | None, everything: bool, as_json: bool) -> None:
    """Send an upstream's stored uplinks again from a point in time (same uplink ids).

    Moves the upstream's delivery position back; a running `edge run` takes it up within about a
    second, a stopped one when it starts. Receivers drop repeats by uplink id.
    """
    from edge.buffer import Buffer

    cfg = _load(config_path)
    names = [u.name for u in cfg.upstreams] + [u.name for u in cfg.http_upstreams]
    if name not in names:
        raise click.UsageError(f"no upstream named {name!r}; configured: {', '.join(names)}")
    if everything == (since is not None):
        raise click.UsageError("give either --since TIME or --all")
    start = _timestamp(since, hint="--since")
    label = "the oldest uplink held" if start is None else _utc(start, "T")
    buf = Buffer(_existing_buffer(cfg.buffer.path), max_bytes=int(cfg.buffer.max_size_mb * 1024 * 1024))
    try:
        done = buf.rewind(name, start, label)
    finally:
        buf.close()
    older_gone = start is not None and done.oldest_time is not None and start < done.oldest_time
    total = done.again + done.pending
    if as_json:
        click.echo(json.dumps({"upstream": name, "since": start, "cursor": done.cursor, "previous_cursor": done.before,
                               "uplinks": total, "already_delivered": done.again,
                               "first_time": done.first_time, "oldest_held_time": done.oldest_time,
                               "held": done.held, "older_dropped_by_size_bound": older_gone and done.dropped > 0},
                              indent=2))
        return
    since_text = "" if start is None else f" received since {_utc(start)}"
    if done.again:
        click.echo(f"Upstream {name} rewound: {done.again} delivered uplinks{since_text} will be sent again with the"
                   f" same uplink ids, starting with one received {_utc(done.first_time)}.")
    else:
        click.echo(f"Upstream {name}: no uplink{since_text} held had been delivered; nothing to send again.")
    if done.pending:
        click.echo(f"{done.pending} uplinks not delivered yet follow as usual.")
    click.echo(f"Oldest uplink held: {_utc(done.oldest_time)} ({done.held} held).")
    if older_gone:
        if done.dropped:
            click.echo(f"Uplinks received before {_utc(done.oldest_time)} are no longer held: the size bound"
                       f" (buffer.max_size_mb) dropped them ({done.dropped} dropped so far); they cannot be sent"
                       " again.")
        else:
            click.echo(f"The buffer holds nothing received before {_utc(done.oldest_time)}.")
    if total:
        click.echo("A running `edge run` takes this up within about a second; a stopped one when it starts.")
