"""The `edge` command line: run, validate, status, simulate and demo."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from edge import present
from edge.cli.text import echo
from edge.config import DEFAULT_PATH, Config, describe, load_config, secret_file_warnings
from edge.errors import ConfigError, EdgeError

CONFIG_OPTION = click.option(
    "--config", "-c", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=DEFAULT_PATH,
    show_default=True, envvar="EDGE_CONFIG", help="Configuration file (TOML).",
)


def _load(path: Path) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(f"error: {problem}", err=True)
        if not path.exists():
            source = "EDGE_CONFIG" if os.environ.get("EDGE_CONFIG") else "the default" \
                if path == Path(DEFAULT_PATH) else "--config"
            click.echo(f"hint: {path} is {source}; pass --config PATH (or set EDGE_CONFIG) to use another file,"
                       " e.g. the demo's or a copy of deploy/edge.toml.example", err=True)
        raise SystemExit(2) from None


def _existing_buffer(path: str) -> str:
    """The buffer's path, or exit 1 with a clear error when `edge run` has not created it yet.

    Commands other than `edge run` never create the buffer: one run as root would leave a file the
    service's user cannot write.
    """
    if not Path(path).exists():
        click.echo(f"error: no buffer at {path} yet (has `edge run` started?)", err=True)
        raise SystemExit(1)
    return path


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lorawan-edge")
def main() -> None:
    """lorawan-edge: ChirpStack uplinks in, durable buffer, SenML upstream."""


@main.command()
@CONFIG_OPTION
def run(config_path: Path) -> None:
    """Run the gateway service (SIGTERM stops, SIGHUP reloads).

    Receives ChirpStack events, decodes, buffers and forwards until SIGTERM or Ctrl-C; SIGHUP
    reloads the log level and decoder rules.
    """
    from edge.pipeline import Pipeline
    from edge.service import Service
    from edge.telemetry import setup_logging

    cfg = _load(config_path)
    setup_logging(cfg.log_level)
    for warning in secret_file_warnings(cfg):
        logging.getLogger("edge").warning("%s", warning)
    try:
        pipeline = Pipeline(cfg)
    except EdgeError as exc:
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(1) from None
    service = Service(pipeline, config_path)
    service.install_signals()
    service.run()
    if pipeline.failed:
        raise SystemExit(1)


@main.command()
@CONFIG_OPTION
@click.option("--show", is_flag=True, help="Print the effective configuration (secrets are never included).")
def validate(config_path: Path, show: bool) -> None:
    """Check the configuration; print every problem with its key."""
    from edge.buffer.location import problem as buffer_problem
    from edge.pipeline import build_registry

    cfg = _load(config_path)
    if show:
        from edge.config.layers import describe_sources

        click.echo(json.dumps({**describe(cfg), "sources": describe_sources(config_path)}, indent=2))
    problems = []
    blocked = buffer_problem(cfg.buffer.path)
    if blocked:
        problems.append(f"buffer.path: {blocked}")
    # A rule naming a decoder that is not installed would leave its devices undecoded in silence.
    known = set(build_registry(cfg).ids())
    for i, rule in enumerate(cfg.decoding.rules):
        if rule.decoder not in known:
            problems.append(f"decoding.rule[{i}].decoder: no installed decoder has the id {rule.decoder!r}"
                            " (see `edge decoders list`; a plugin may be missing or blocked)")
    for warning in secret_file_warnings(cfg):
        echo(f"warning: {warning}", err=True)
    for problem in problems:
        click.echo(f"error: {problem}", err=True)
    if problems:
        raise SystemExit(2)
    click.echo(f"{config_path}: OK ({len(cfg.upstreams)} MQTT and {len(cfg.http_upstreams)} HTTP upstream(s))")


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


@main.command()
@CONFIG_OPTION
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--devices", default=20, show_default=True, help="How many devices to list.")
def status(config_path: Path, as_json: bool, devices: int) -> None:
    """Show backlogs, counters and each device's last uplink."""
    from edge import quarantine
    from edge.buffer.store import Buffer
    from edge.model import DecodeStatus
    from edge.telemetry import plain_counters, unmapped_by_codec

    cfg = _load(config_path)
    buf = Buffer(_existing_buffer(cfg.buffer.path), readonly=True)
    held = quarantine.load(quarantine.path_for(cfg.buffer.path))
    from importlib.metadata import PackageNotFoundError, version

    try:
        edge_version = version("lorawan-edge")
    except PackageNotFoundError:
        edge_version = "unknown"
    counters = buf.counters()
    data: dict[str, Any] = {
        "edge_id": cfg.edge_id,
        "version": edge_version,
        "generated_at": time.time(),
        "buffer": {"path": cfg.buffer.path, "used_bytes": buf.used_bytes(),
                   "max_bytes": int(cfg.buffer.max_size_mb * 1024 * 1024)},
        "counters": plain_counters(counters),
        # Fields no field map covers yet (sent unit-less under their own key), per codec key.
        "unmapped": unmapped_by_codec(counters),
        "upstreams": buf.sinks([u.name for u in cfg.upstreams] + [u.name for u in cfg.http_upstreams]),
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


@main.command()
@click.option("--url", default="mqtt://127.0.0.1:1883", show_default=True,
              help="ChirpStack's MQTT broker (mqtt://host[:port]).")
@click.option("--devices", "-n", type=click.IntRange(min=1), default=10, show_default=True,
              help="Number of simulated devices.")
@click.option("--count", type=click.IntRange(min=0), default=100, show_default=True,
              help="Uplinks to send (0 = until stopped).")
@click.option("--rate", type=click.FloatRange(min=0), default=10.0, show_default=True,
              help="Uplinks per second (0 = as fast as possible).")
@click.option("--protobuf", is_flag=True, help="Publish binary protobuf (ChirpStack json=false) instead of JSON.")
@click.option("--seed", type=int, default=None, help="Seed for repeatable payloads and ids.")
@click.option("--log", "log_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Append every uplink the broker acknowledged as a JSON line to this file.")
@click.option("--silent", type=click.IntRange(min=0), default=0, help="Devices that stop after 3 uplinks.")
@click.option("--lossy", type=click.IntRange(min=0), default=0, help="Devices losing every third frame.")
@click.option("--rejoin", type=click.IntRange(min=0), default=0, help="Devices whose frame counter restarts.")
@click.option("--draining", type=click.IntRange(min=0), default=0, help="Devices whose battery drains.")
def simulate(url: str, devices: int, count: int, rate: float, protobuf: bool, seed: int | None,
             log_path: Path | None, silent: int, lossy: int, rejoin: int, draining: int) -> None:
    """Publish simulated ChirpStack v4 uplinks of Elsys ERS sensors (some may misbehave, for sensor health)."""
    from urllib.parse import urlsplit

    from edge.simulate import SentUplink, Simulator, publish

    try:
        parts = urlsplit(url)
        port = parts.port or 1883
    except ValueError as exc:
        raise click.BadParameter(f"{url!r}: {exc}", param_hint="--url") from None
    if parts.scheme != "mqtt" or not parts.hostname:
        # The simulator speaks plain MQTT only: an mqtts:// URL must not silently go unencrypted.
        raise click.BadParameter(f"{url!r}: use mqtt://host[:port] (plain MQTT, e.g. a local test broker)",
                                 param_hint="--url")
    if silent + lossy + rejoin + draining > devices:
        raise click.BadParameter("more misbehaving devices than --devices", param_hint="--silent/--lossy/...")
    sim = Simulator(devices, protobuf=protobuf, seed=seed, silent=silent, lossy=lossy, rejoin=rejoin,
                    draining=draining)
    log_file = log_path.open("a") if log_path else None

    def on_sent(s: SentUplink) -> None:
        if log_file is not None:
            log_file.write(json.dumps({"uplink_id": s.uplink_id, "dev_eui": s.dev_eui, "time": s.time,
                                       "payload": s.payload.hex(), "fcnt": s.fcnt}) + "\n")

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        n = publish(parts.hostname, port, sim, count or None, rate or None, on_sent, stop)
    except OSError as exc:
        click.echo(f"error: cannot reach the MQTT broker at {parts.hostname}:{port}: {exc}", err=True)
        raise SystemExit(1) from None
    finally:
        if log_file is not None:
            log_file.close()
    click.echo(f"sent {n} uplinks from {devices} devices")


@main.command()
@click.option("--seconds", default=15.0, show_default=True, help="How long to send simulated traffic.")
@click.option("--devices", "-n", default=5, show_default=True, help="Number of simulated devices.")
@click.option("--rate", default=4.0, show_default=True, help="Uplinks per second.")
@click.option("--format", "fmt", type=click.Choice(["senml+json", "senml+cbor"]), default="senml+json",
              show_default=True, help="Upstream format.")
def demo(seconds: float, devices: int, rate: float, fmt: str) -> None:
    """Run the whole pipeline on simulated traffic (two local brokers).

    Starts two throwaway Mosquitto brokers, simulated ChirpStack traffic and the pipeline, and
    prints the records as they arrive upstream.
    """
    from edge.demo import run_demo

    sys.exit(run_demo(seconds=seconds, devices=devices, rate=rate, fmt=fmt))


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _timestamp(value: str | None, now: float | None = None, hint: str | None = None) -> float | None:
    """An ISO 8601 time (UTC when it has no offset) or a time ago like `90s`, `30m`, `2h`, `7d`, `1w`."""
    if value is None:
        return None
    text = value.strip()
    if text[:-1].replace(".", "", 1).isdigit() and text[-1:].lower() in _UNITS:
        return (time.time() if now is None else now) - float(text[:-1]) * _UNITS[text[-1].lower()]
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"{value!r} is neither an ISO 8601 time (e.g. 2026-11-25T10:00:00Z) nor a time"
                                 " ago like 2h or 7d", param_hint=hint) from None
    # A time without an offset is taken as UTC, the gateway's clock.
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def _register() -> None:
    from edge.cli.buffer import buffer
    from edge.cli.codecs import codecs
    from edge.cli.decoders import decoders
    from edge.cli.devices import devices, downlink
    from edge.cli.doctor import doctor
    from edge.cli.sharing import deadletter, shares
    from edge.cli.watch import watch

    main.add_command(buffer)
    main.add_command(decoders)
    main.add_command(codecs)
    main.add_command(doctor)
    main.add_command(watch)
    main.add_command(shares)
    main.add_command(deadletter)
    main.add_command(devices)
    main.add_command(downlink)
    # Imported for their effect: they add `import`, `verify`, `export` and `health` to the `devices` group.
    import edge.cli.health
    import edge.cli.onboard  # noqa: F401


def _full_short_help(group: click.Group) -> None:
    """Show each command's whole first line in `--help` listings (wrapped, not cut off with "...")."""
    for command in group.commands.values():
        if not command.short_help and command.help:
            command.short_help = command.help.strip().split("\n\n", 1)[0].replace("\n", " ")
        if isinstance(command, click.Group):
            _full_short_help(command)


_register()


@main.command()
@CONFIG_OPTION
@click.option("--device", "dev_eui", default=None, help="Only this DevEUI.")
@click.option("--decoder", default=None, help="Only uplinks that were decoded (or failed) with this decoder id.")
@click.option("--since", default=None, help="Only uplinks received at or after this time (ISO 8601, or ago: 2h, 7d).")
@click.option("--until", default=None, help="Only uplinks received before this time (ISO 8601, or ago: 2h, 7d).")
@click.option("--all", "everything", is_flag=True,
              help="Re-decode every matching uplink, not only failed and undecoded ones.")
@click.option("--dry-run", is_flag=True, help="Decode and count, but store and send nothing.")
def redecode(config_path: Path, dev_eui: str | None, decoder: str | None, since: str | None, until: str | None,
             everything: bool, dry_run: bool) -> None:
    """Decode stored raw uplinks again and send the new readings.

    Re-runs today's decoders over stored raw uplinks (by default those that failed or had no
    decoder) and queues the new readings for every upstream.
    """
    from edge.pipeline import redecode as run_redecode

    cfg = _load(config_path)
    totals = run_redecode(cfg, dev_eui=dev_eui.lower() if dev_eui else None, decoder=decoder,
                          since=_timestamp(since, hint="--since"), until=_timestamp(until, hint="--until"),
                          everything=everything, dry_run=dry_run)
    verb = "would be queued" if dry_run else "queued for every upstream"
    click.echo(f"{totals['seen']} uplinks re-decoded: {totals['decoded']} decoded, {totals['chirpstack']} from"
               f" ChirpStack's object, {totals['undecoded']} without decoder, {totals['decode_failed']} still failing;"
               f" new readings {verb}.")


_full_short_help(main)  # last, once every command is registered
