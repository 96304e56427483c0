"""`edge decoders`: list decoders, test codec examples, scaffold a decoder plugin package."""

from __future__ import annotations

import json
import re
from pathlib import Path

import click

from edge.cli.codec_runs import KINDS, Tally, run_chirpstack, run_ttn_routines, run_ttn_uplinks
from edge.config import DEFAULT_PATH, load_config
from edge.decoding.base import Decoder
from edge.decoding.catalogue_tests import codec_targets
from edge.decoding.coverage import summary_line
from edge.decoding.examples import codec_id
from edge.errors import ConfigError

ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,35}/[a-z0-9][a-z0-9-]{0,35}$")


@click.group()
def decoders() -> None:
    """List, test and scaffold decoders."""


@decoders.command("list")
@click.option("--config", "-c", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=DEFAULT_PATH,
              show_default=True, envvar="EDGE_CONFIG",
              help="Apply this configuration's plugin allow/block lists and list its JS codecs (if the file exists).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_(config_path: Path, as_json: bool) -> None:
    """Show every decoder, where it came from and its version.

    With a configuration file, plugins its allow/block lists keep out are shown as not loaded,
    and the JavaScript codecs of `decoding.codec_paths` are listed too, as `edge run` would use them.
    """
    from edge.plugins import load_decoders

    cfg = None
    if config_path.exists():
        try:
            cfg = load_config(config_path)
        except ConfigError as exc:
            for problem in exc.problems:
                click.echo(f"error: {problem}", err=True)
            raise SystemExit(2) from None
    allow, block = (cfg.decoding.plugins_allow, cfg.decoding.plugins_block) if cfg else ((), ())
    loaded = load_decoders(allow, block)
    from edge.decoding.fieldmap import map_for

    # "map": the field map key that normalises the decoder's output ("" when none does).
    rows = [{"id": i.decoder.id, "aliases": list(getattr(i.decoder, "aliases", ())),
             "ttn_codecs": list(getattr(i.decoder, "ttn_codecs", ())), "source": i.source, "version": i.version,
             "map": _map_key(map_for(i.decoder))}
            for i in loaded.decoders]
    if cfg is not None and cfg.decoding.codec_paths:
        from edge.decoders import js_codecs

        for decoder in js_codecs(cfg, [i.decoder for i in loaded.decoders]):
            script = getattr(getattr(decoder, "runtime", None), "name", "")
            rows.append({"id": decoder.id, "aliases": [], "ttn_codecs": [], "source": f"js {script}",
                         "version": "-", "map": _map_key(map_for(decoder))})
    if as_json:
        click.echo(json.dumps({"decoders": rows, "problems": loaded.problems, "not_allowed": loaded.not_allowed},
                              indent=2))
        return
    for r in rows:
        extra = f"  (also {', '.join(r['aliases'])})" if r["aliases"] else ""
        click.echo(f"{r['id']:<28} {r['source']} {r['version']}{extra}")
    for dist in loaded.not_allowed:
        click.echo(f"not loaded: {dist} (plugins_allow/plugins_block in {config_path})")
    for problem in loaded.problems:
        click.echo(f"problem: {problem}", err=True)
    click.echo(f"{len(rows)} decoders")


def _map_key(found: tuple[str, object]) -> str:
    key, fmap = found
    return key if getattr(fmap, "specs", ()) else ""


def _native_index() -> tuple[dict[str, Decoder], dict[str, Decoder]]:
    from edge.plugins import load_decoders

    loaded = load_decoders()
    by_codec: dict[str, Decoder] = {}
    for info in loaded.decoders:
        for codec in getattr(info.decoder, "ttn_codecs", ()):
            by_codec.setdefault(codec, info.decoder)
    return loaded.by_id(), by_codec


def _when(text: str) -> float:
    """--now as seconds since the epoch (a time without zone is UTC)."""
    from datetime import UTC, datetime

    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"not an ISO 8601 time: {text!r}", param_hint="--now") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


@decoders.command("test")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--decoder", "decoder_id", default=None, help="Run every file through this native decoder.")
@click.option("--native", is_flag=True,
              help="Run each file through the native decoder that declares its codec id (or has it as id).")
@click.option("--time-limit-ms", default=1000, show_default=True,
              help="CPU time per JS call (TTN's validator allows 1 s).")
@click.option("--quiet", "-q", is_flag=True, help="Print only failures and the summary.")
@click.option("--now", "pinned", metavar="TIME", default=None,
              help="Codecs see this as the current time (ISO 8601, e.g. 2026-01-02T15:00:00Z): for tests written"
                   " against the clock of their day.")
def test(paths: tuple[Path, ...], decoder_id: str | None, native: bool, time_limit_ms: int, quiet: bool,
         pinned: str | None) -> None:
    """Run the examples of TTN codec YAMLs and the tests of ChirpStack codecs, as their own tools do.

    TTN: codec YAML files or folders; a repository root, its `vendor/` or a vendor folder is walked
    through its index as TTN's validator does. Each file's own JavaScript runs in the sandbox on
    its uplinkDecoder examples (outputs compared by the validator's rules), normalizedOutput,
    downlinkEncoder and downlinkDecoder examples (deep equality). ChirpStack device-profiles:
    codec `.js` files, `codecs/` folders, a vendor, `vendors/` or the repository root; the tests
    in test_decode_<name>.json and test_encode_<name>.json beside each codec call decodeUplink or
    encodeDownlink with their input and compare JSON.stringify of the result with that of
    `expected`, as ChirpStack's runner does. Some codecs resolve device time against `new Date()`;
    --now pins the clock their tests were written at. A file that cannot be
    read counts as one failure. Ends with the line `N passed, M failed`; exit status 0 only when all pass.
    """
    by_id: dict[str, Decoder] = {}
    by_codec: dict[str, Decoder] = {}
    if decoder_id or native:
        by_id, by_codec = _native_index()
    if decoder_id and decoder_id not in by_id:
        raise click.UsageError(f"no decoder with id {decoder_id!r} (see `edge decoders list`)")
    from edge.decoding.js.runtime import JsLimits

    tally = Tally()
    limits = JsLimits(time_limit=time_limit_ms / 1000)
    now = _when(pinned) if pinned else None
    for path in codec_targets(paths):
        if path.suffix == ".js":
            if decoder_id or native:
                continue  # native decoders take TTN examples only
            run_chirpstack(path, limits, now, quiet, tally)
            continue
        native_decoder: Decoder | None = None
        if decoder_id:
            native_decoder = by_id[decoder_id]
        elif native:
            # A TTN codec YAML is claimed through `ttn_codecs`; our own examples files are
            # named after the decoder id itself (decoders/<vendor>/<model>.yaml).
            native_decoder = by_codec.get(codec_id(path)) or by_id.get(codec_id(path))
        run_ttn_uplinks(path, limits, now, native_decoder, bool(decoder_id or native), quiet, tally)
        if not (decoder_id or native):
            run_ttn_routines(path, limits, now, quiet, tally)
    from edge.decoding.fieldmap import default_index

    for problem in default_index().problems:  # a map that does not load, or two maps claiming one codec
        tally.fail("uplink", f"map {problem}")
    if tally.maps.total.numeric or tally.maps.without:
        click.echo(summary_line(tally.maps.total, tally.maps.without))
    if tally.skipped:
        click.echo(f"{tally.skipped} skipped (no native decoder declares their codec)")
    passed, failed = sum(tally.passed.values()), sum(tally.failed.values())
    if any(tally.passed[k] or tally.failed[k] for k in KINDS[1:]):
        click.echo("; ".join(f"{kind}: {tally.passed[kind]} passed, {tally.failed[kind]} failed"
                             for kind in KINDS if kind == "uplink" or tally.passed[kind] or tally.failed[kind]))
    # The last line is exactly this, so scripts and CI can read it.
    click.echo(f"{passed} passed, {failed} failed")
    if failed or not passed:
        raise SystemExit(1)


@decoders.command("readings")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="One JSON line per example (the only output form for now).")
def readings(paths: tuple[Path, ...], as_json: bool) -> None:
    """Print the readings a receiver gets from each uplink example of codec files.

    PATHS are TTN codec YAMLs or folders of them, or ChirpStack device-profiles codec scripts
    (`vendors/<vendor>/codecs/<name>.js`, examples from `test_decode_<name>.json` beside them) or
    `codecs/` folders. Each example is decoded by its codec in the JS sandbox and normalised with
    the codec's field map. One line per example, in file order: {"file", "example" (from 0),
    "readings": [{"field", "n", "u"?, "v"|"vs"|"vb", "t"?}]}; unmapped fields have no "u". Examples are
    decoded as if received at time 0: a sample's absolute time prints as itself, an offset from the
    receive time (`tu: offset-s`, `ago-s`) as negative seconds.
    """
    from edge.decoding.coverage import example_readings, reading_json

    for example, found, error in example_readings(list(paths)):
        if example.number < 0:
            click.echo(f"error: {example.file}: {error}", err=True)
            continue
        if error:
            click.echo(f"warning: {example.file} example {example.number}: {error}", err=True)
        click.echo(json.dumps({"file": str(example.file), "example": example.number,
                               "readings": [reading_json(r) for r in found]}, ensure_ascii=False))


@decoders.command("new")
@click.argument("decoder_id")
@click.option("--dir", "parent", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              show_default=True, help="Where to create the package folder.")
def new(decoder_id: str, parent: Path) -> None:
    """Scaffold a decoder plugin package for VENDOR/MODEL.

    The package has the entry point, a decoder module, an examples file and a test that runs them,
    and passes its own tests out of the box.
    """
    from edge.cli.scaffold import edge_source, scaffold

    if not ID_RE.match(decoder_id):
        raise click.UsageError("the id must be VENDOR/MODEL: lowercase letters, digits and dashes, ≤36 each")
    try:
        root = scaffold(decoder_id, parent)
    except FileExistsError as exc:
        raise click.ClickException(f"{exc}; choose another --dir or remove it") from None
    click.echo(f"created {root}")
    click.echo(f"next, in a fresh virtualenv: pip install {edge_source().split('  #')[0]} && cd {root}"
               f" && pip install -e '.[test]' && pytest  (then `edge decoders list` shows {decoder_id})")
