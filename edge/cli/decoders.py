"""`edge decoders`: list decoders, test codec examples, scaffold a decoder plugin package."""

from __future__ import annotations

import json
import re
from pathlib import Path

import click

from edge.config import DEFAULT_PATH, load_config
from edge.decoding.base import Decoder
from edge.decoding.coverage import Coverage, map_report, summary_line
from edge.decoding.examples import Outcome, codec_files, codec_id, load_examples, run_examples
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
        from edge.pipeline import js_codecs

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


def _js_decoder(path: Path, time_limit_ms: int) -> Decoder:
    from edge.decoding.js.codec import JsCodecDecoder
    from edge.decoding.js.runtime import JsLimits

    return JsCodecDecoder.from_yaml(path, limits=JsLimits(time_limit=time_limit_ms / 1000))


@decoders.command("test")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--decoder", "decoder_id", default=None, help="Run every file through this native decoder.")
@click.option("--native", is_flag=True,
              help="Run each file through the native decoder that declares its codec id (or has it as id).")
@click.option("--time-limit-ms", default=1000, show_default=True,
              help="CPU time per JS decode (TTN's validator allows 1 s).")
@click.option("--quiet", "-q", is_flag=True, help="Print only failures and the summary.")
def test(paths: tuple[Path, ...], decoder_id: str | None, native: bool, time_limit_ms: int, quiet: bool) -> None:
    """Run the uplink examples of codec YAML files or folders.

    Takes TTN-style codec YAML files (or folders of them). By default each file's own JavaScript
    codec (uplinkDecoder.fileName) runs in the sandbox. A YAML that cannot be read counts as one
    failure. Each codec's field map (docs/field-maps.md) is checked with the examples' outputs:
    every numeric field mapped, a state or ignored, units convertible, values in range; a failing
    map counts as one failure, a codec without a map is reported but does not fail. Ends with the
    map coverage line, then `N passed, M failed`; exit status 0 only when all pass.
    """
    by_id: dict[str, Decoder] = {}
    by_codec: dict[str, Decoder] = {}
    if decoder_id or native:
        by_id, by_codec = _native_index()
    if decoder_id and decoder_id not in by_id:
        raise click.UsageError(f"no decoder with id {decoder_id!r} (see `edge decoders list`)")
    passed = failed = skipped = 0
    maps = _MapTally()
    for path in codec_files(paths):
        try:
            examples = load_examples(path)
        except ConfigError as exc:
            # A YAML that cannot be read fails (counted once), and the other files still run.
            for problem in exc.problems:
                click.echo(f"FAIL {problem}")
            failed += 1
            continue
        if not examples:
            continue
        decoder: Decoder | None
        try:
            if decoder_id:
                decoder = by_id[decoder_id]
            elif native:
                # A TTN codec YAML is claimed through `ttn_codecs`; our own examples files are
                # named after the decoder id itself (decoders/<vendor>/<model>.yaml).
                decoder = by_codec.get(codec_id(path)) or by_id.get(codec_id(path))
            else:
                decoder = _js_decoder(path, time_limit_ms)
        except Exception as exc:  # noqa: BLE001 - a codec that cannot load fails its examples, not the run
            click.echo(f"FAIL {path}: cannot load codec: {exc}")
            failed += len(examples)
            continue
        if decoder is None:
            click.echo(f"skip {path}: no native decoder declares codec {codec_id(path)}")
            skipped += len(examples)
            continue
        outcomes = list(run_examples(decoder, examples))
        for outcome in outcomes:
            if outcome.passed:
                passed += 1
                if not quiet:
                    click.echo(f"ok   {path}#{outcome.example.index} {outcome.example.description}")
            else:
                failed += 1
                _report(path, outcome)
        failed += _check_map(path, decoder, outcomes, maps, quiet)
    from edge.decoding.fieldmap import default_index

    for problem in default_index().problems:  # a map that does not load, or two maps claiming one codec
        click.echo(f"FAIL map {problem}")
        failed += 1
    click.echo(summary_line(maps.total, maps.without))
    if skipped:
        click.echo(f"{skipped} skipped (no native decoder declares their codec)")
    # The last line is exactly this, so scripts and CI can read it.
    click.echo(f"{passed} passed, {failed} failed")
    if failed or not passed:
        raise SystemExit(1)


class _MapTally:
    """Map coverage summed over the files of one `edge decoders test` run."""

    def __init__(self) -> None:
        self.total = Coverage()
        self.without = 0


def _check_map(path: Path, decoder: Decoder, outcomes: list[Outcome], maps: _MapTally, quiet: bool) -> int:
    """Check the codec's field map with the examples' outputs; 1 when the map fails (counted once)."""
    report = map_report(decoder, ((f"{path}#{o.example.index}", o.actual.get("data")) for o in outcomes))
    if not report.found:
        maps.without += 1
        if not quiet:
            click.echo(f"map  {path}: no field map for {report.key} (fields go out unit-less)")
        return 0
    maps.total.add(report.coverage)
    cov = report.coverage
    if cov.ok:
        if not quiet:
            click.echo(f"map  {path}: {report.key} covers {cov.covered}/{cov.numeric} numeric fields")
        return 0
    click.echo(f"FAIL map {report.key} for {path}: {cov.covered}/{cov.numeric} numeric fields covered")
    for problem in dict.fromkeys(cov.problems):
        click.echo(f"     {problem}")
    return 1


def _report(path: Path, outcome: Outcome) -> None:
    click.echo(f"FAIL {path}#{outcome.example.index} {outcome.example.description}")
    for line in outcome.diff().splitlines():
        click.echo(f"     {line}")


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
