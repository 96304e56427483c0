"""`edge shares` (what a destination receives) and `edge deadletter` (what a destination refused)."""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import click

from edge.cli import CONFIG_OPTION, _existing_buffer, _load
from edge.cli.text import clean
from edge.config import Config


def _upstream_names(cfg: Config) -> list[str]:
    return [u.name for u in cfg.upstreams] + [u.name for u in cfg.http_upstreams]


@click.group()
def shares() -> None:
    """Inspect what each destination may receive."""


@shares.command("explain")
@CONFIG_OPTION
@click.option("--upstream", "name", required=True, help="The upstream (destination) name.")
@click.argument("dev_eui")
def explain(config_path: Path, name: str, dev_eui: str) -> None:
    """Show what UPSTREAM would receive for DEV_EUI's last uplink."""
    from edge.buffer import Buffer
    from edge.buffer.adapters import BufferThinStore
    from edge.formats.outbound import make_http_formatter
    from edge.formats.share import ShareFilter
    from edge.pipeline import make_formatter

    cfg = _load(config_path)
    mqtt = {u.name: u for u in cfg.upstreams}
    http = {u.name: u for u in cfg.http_upstreams}
    if name not in mqtt and name not in http:
        raise click.UsageError(f"no upstream named {name!r}; configured: {', '.join(_upstream_names(cfg))}")
    buf = Buffer(_existing_buffer(cfg.buffer.path), readonly=True)
    dev_eui = dev_eui.lower()
    last = buf.last_uplink_row(dev_eui)
    if last is None:
        raise click.ClickException(f"no uplink from {dev_eui} in the buffer yet")
    entries = buf.read(last - 1, 1)
    if not entries or entries[0].dev_eui != dev_eui:
        raise click.ClickException(f"the last uplink of {dev_eui} is no longer buffered")
    rules = mqtt[name].share if name in mqtt else http[name].share
    # The upstream's stored thinning decisions, read only: the answer matches what `edge run` did
    # (or will do) with this uplink.
    share = ShareFilter(rules, buf.device_meta, BufferThinStore(buf, name, readonly=True))
    allowed = share.apply(entries) if share.active else entries
    if not allowed:
        meta = buf.device_meta([dev_eui]).get(dev_eui)
        if not share.allows_device(dev_eui):
            why = "its sharing rules do not select this device"
            if meta is None and (rules.applications or rules.device_profiles or rules.tags):
                why += " (its application, profile and tags are not known yet, so only a DevEUI rule could)"
        elif not any(e.has_readings for e in ShareFilter(replace(rules, thin_s=0.0), buf.device_meta).apply(entries)):
            why = "none of this uplink's readings is among the quantities it may receive"
        else:
            why = (f"thinned out: it gets at most one uplink per {rules.thin_s:g} s from a device, and an"
                   " earlier uplink of this interval was sent")
        click.echo(f"{name} receives nothing from this uplink of {dev_eui}: {why}.")
        return
    if name in mqtt:
        up = mqtt[name]
        messages = make_formatter(up if rules.radio else replace(up, link_topic=""), cfg.edge_id)(allowed)
    else:
        messages = make_http_formatter(http[name])(allowed)
    kept = [r.name for r in allowed[0].readings]
    dropped = sorted({r.name for r in entries[0].readings} - set(kept))
    not_sent = f" (not: {', '.join(dropped)})" if dropped else ""
    radio = "" if rules.radio else ", no radio metadata"
    click.echo(f"{name} receives {len(kept)} of {len(entries[0].readings)} readings of {dev_eui}{not_sent}{radio}")
    for m in messages:
        body = m.payload.decode() if "json" in m.content_type else m.payload.hex()
        click.echo(f"--- {m.topic or 'POST'} ({m.content_type}, {len(m.payload)} bytes)\n{body}")


@click.group()
def deadletter() -> None:
    """List or replay messages a destination refused or that could not be published."""


@deadletter.command("list")
@CONFIG_OPTION
@click.option("--upstream", "name", default=None, help="Only this upstream.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_(config_path: Path, name: str | None, as_json: bool) -> None:
    """Show dead letters, oldest first."""
    from edge.buffer import Buffer

    cfg = _load(config_path)
    letters = Buffer(_existing_buffer(cfg.buffer.path), readonly=True).dead_letters(name)
    if as_json:
        click.echo(json.dumps([{k: v for k, v in d.items() if k != "payload"} | {"bytes": len(d["payload"])}
                               for d in letters], indent=2))
        return
    http = {u.name for u in cfg.http_upstreams}
    for d in letters:
        when = datetime.fromtimestamp(d["created"], UTC).strftime("%Y-%m-%d %H:%M:%S")
        # HTTP: the status; MQTT: the PUBACK reason; 0: refused before it was sent (or not formatted)
        kind = "HTTP" if d["sink"] in http else "MQTT"
        if not d["status"]:
            status = f"{kind} -   "
        else:
            status = f"HTTP {d['status']}" if kind == "HTTP" else f"MQTT {d['status']:#04x}"
        click.echo(clean(f"{d['id']:>6} {when} {d['sink']:<16} {status}  {len(d['payload'])} B  {d['detail'][:80]}"))
    click.echo(f"{len(letters)} dead letter(s)")


@deadletter.command("replay")
@CONFIG_OPTION
@click.option("--upstream", "name", required=True, help="The upstream whose dead letters to send again.")
@click.option("--id", "ids", type=int, multiple=True, help="Only these dead letters (default: all of the upstream).")
def replay(config_path: Path, name: str, ids: tuple[int, ...]) -> None:
    """Send dead letters again (after fixing the destination); each one accepted is removed."""
    from edge.buffer import Buffer
    from edge.model import OutMessage

    cfg = _load(config_path)
    http = {u.name: u for u in cfg.http_upstreams}
    mqtt = {u.name: u for u in cfg.upstreams}
    if name not in http and name not in mqtt:
        raise click.UsageError(f"{name!r} is not an upstream")
    buf = Buffer(_existing_buffer(cfg.buffer.path))
    letters = [d for d in buf.dead_letters(name) if not ids or d["id"] in ids]
    ok = failed = 0
    if name in mqtt:
        from edge.sinks.mqtt import MqttSink

        # A letter without a topic describes an uplink the formatter failed on: nothing to publish;
        # `edge redecode` or a fixed release and `edge buffer rewind` send that uplink again.
        sendable = [d for d in letters if d["topic"]]
        for d in letters:
            if not d["topic"]:
                failed += 1
                click.echo(f"{d['id']}: not a message (the formatter failed on an uplink); see its detail")
        sink = MqttSink(mqtt[name], lambda: None, lambda entries: [], threading.Event())  # type: ignore[arg-type,return-value]
        try:
            results = sink.publish_once([OutMessage(d["topic"], d["payload"], d["content_type"]) for d in sendable])
        except OSError as exc:
            raise click.ClickException(f"cannot reach upstream {name}: {exc}") from None
        for d, why in zip(sendable, results, strict=True):
            if why:
                failed += 1
                click.echo(f"{d['id']}: {clean(why)}")
            else:
                buf.remove_dead_letter(d["id"])
                ok += 1
                click.echo(f"{d['id']}: delivered")
        click.echo(f"{ok} delivered, {failed} still failing")
        if failed:
            raise SystemExit(1)
        return
    from edge.sinks.http import HttpSink

    sink_http = HttpSink(http[name], lambda: None, lambda entries: [], threading.Event())  # type: ignore[arg-type,return-value]
    for d in letters:
        try:
            status = sink_http.post_once(OutMessage(d["topic"], d["payload"], d["content_type"]))
        except Exception as exc:  # noqa: BLE001 - report and go on with the next letter
            click.echo(f"{d['id']}: failed ({clean(str(exc))})")
            failed += 1
            continue
        if 200 <= status < 300:
            buf.remove_dead_letter(d["id"])
            ok += 1
            click.echo(f"{d['id']}: delivered (HTTP {status})")
        else:
            failed += 1
            click.echo(f"{d['id']}: refused again (HTTP {status})")
    click.echo(f"{ok} delivered, {failed} still failing")
    if failed:
        raise SystemExit(1)
