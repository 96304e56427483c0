"""The `edge` command line: run, validate, simulate, demo and redecode; the other commands are registered here."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import click

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
    from edge.decoders import build_registry

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
    from edge.cli.devices import devices
    from edge.cli.doctor import doctor
    from edge.cli.downlink import downlink
    from edge.cli.sharing import deadletter, shares
    from edge.cli.status import status
    from edge.cli.watch import watch

    main.add_command(buffer)
    main.add_command(decoders)
    main.add_command(codecs)
    main.add_command(doctor)
    main.add_command(status)
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
    from edge.redecode import redecode as run_redecode

    cfg = _load(config_path)
    totals = run_redecode(cfg, dev_eui=dev_eui.lower() if dev_eui else None, decoder=decoder,
                          since=_timestamp(since, hint="--since"), until=_timestamp(until, hint="--until"),
                          everything=everything, dry_run=dry_run)
    verb = "would be queued" if dry_run else "queued for every upstream"
    click.echo(f"{totals['seen']} uplinks re-decoded: {totals['decoded']} decoded, {totals['chirpstack']} from"
               f" ChirpStack's object, {totals['undecoded']} without decoder, {totals['decode_failed']} still failing;"
               f" new readings {verb}.")


_full_short_help(main)  # last, once every command is registered
