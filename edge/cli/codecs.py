"""`edge codecs`: import local clones of the TTN and ChirpStack codec catalogues into the index, and list it."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import click

from edge.buffer.codec_index import CodecIndex
from edge.cli import CONFIG_OPTION, _load
from edge.decoders import open_catalogue
from edge.decoding.catalogue import CATALOGUES, CatalogueIndex, index_path
from edge.errors import ConfigError


@click.group()
def codecs() -> None:
    """Import codec catalogues (the TTN and ChirpStack device repositories) and list them."""


@codecs.command("import")
@CONFIG_OPTION
@click.argument("path", type=click.Path(exists=True, file_okay=False, path_type=Path))
def import_(config_path: Path, path: Path) -> None:
    """Read a local clone of a catalogue at PATH into the index next to the buffer.

    PATH is a checkout of github.com/TheThingsNetwork/lorawan-devices (or a fork) or of
    github.com/chirpstack/chirpstack-device-profiles, or its vendor/ or vendors/ folder. Nothing is
    downloaded: clone or update the repository yourself (git pull), then import again; an import
    replaces what the index held from that catalogue. `edge run` reads the index when it starts.
    """
    cfg = _load(config_path)
    target = index_path(cfg.buffer.path)
    if not target.parent.is_dir():
        raise click.ClickException(f"the buffer's folder {target.parent} does not exist")
    index = CatalogueIndex(CodecIndex(target))
    try:
        summary = index.import_path(path)
    except ConfigError as exc:
        raise click.ClickException("; ".join(exc.problems)) from None
    finally:
        index.close()
    for problem in summary.problems:
        click.echo(f"warning: {problem}", err=True)
    revision = f" at {summary.revision[:12]}" if summary.revision else ""
    click.echo(f"imported {summary.catalogue} from {summary.path}{revision}: {summary.vendors} vendors,"
               f" {summary.devices} devices, {summary.firmware} firmware versions, {summary.codecs} codecs,"
               f" {summary.profiles} device-profile templates")
    click.echo(f"index: {target} (restart `edge run` to use it)")


@codecs.command("list")
@CONFIG_OPTION
@click.option("--catalogue", type=click.Choice(CATALOGUES), default=None, help="Only this catalogue.")
@click.option("--vendor", default=None, help="Only this vendor (its folder name).")
@click.option("--profiles", is_flag=True, help="List ChirpStack's device-profile templates instead of codecs.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_(config_path: Path, catalogue: str | None, vendor: str | None, profiles: bool, as_json: bool) -> None:
    """Show what the index holds: each import, then its codecs (or profile templates)."""
    cfg = _load(config_path)
    index = open_catalogue(cfg.buffer.path)
    if index is None:
        click.echo(f"no codec index at {index_path(cfg.buffer.path)}: run `edge codecs import PATH`", err=True)
        raise SystemExit(1)
    try:
        imports = [i for i in index.imports() if catalogue in (None, i["catalogue"])]
        rows = index.profile_templates(vendor) if profiles else index.codec_rows(catalogue, vendor)
    finally:
        index.close()
    if as_json:
        click.echo(json.dumps({"imports": imports, "profiles" if profiles else "codecs": rows}, indent=2))
        return
    for i in imports:
        when = datetime.fromtimestamp(i["imported_at"], UTC).strftime("%Y-%m-%d %H:%M UTC")
        click.echo(f"{i['catalogue']}: {i['path']} {i['revision'][:12]} (imported {when}): {i['vendors']} vendors,"
                   f" {i['devices']} devices, {i['firmware']} firmware versions, {i['codecs']} codecs,"
                   f" {i['profiles']} profile templates")
    if profiles:
        for p in rows:
            click.echo(f"{p['vendor']}/{p['id']:<32} {p['region']:<8} LoRaWAN {p['mac_version']}")
        click.echo(f"{len(rows)} profile templates")
        return
    for r in rows:
        can = "+".join(k for k in ("uplink", "downlink") if r[k]) or "-"
        used = ", ".join(r["devices"][:3]) + (f" (+{len(r['devices']) - 3})" if len(r["devices"]) > 3 else "")
        click.echo(f"{r['key']:<48} {can:<16} {used}")
    click.echo(f"{len(rows)} codecs")
