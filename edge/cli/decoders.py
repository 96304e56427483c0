"""`edge decoders`: list decoders, test codec examples, scaffold a decoder plugin package."""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from edge.config import DEFAULT_PATH, load_config
from edge.decoding.base import Decoder
from edge.decoding.coverage import Coverage, map_report, summary_line
from edge.decoding.examples import (
    Outcome,
    codec_id,
    codec_targets,
    compare_encoded,
    load_examples,
    load_routine_examples,
    load_vectors,
    routine_output,
    run_examples,
    vector_diff,
)
from edge.errors import ConfigError

if TYPE_CHECKING:
    from edge.decoding.js.runtime import JsLimits

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
        from edge.decoding.setup import js_codecs

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


def _js_decoder(path: Path, limits: JsLimits, now: float | None = None) -> Decoder:
    from edge.decoding.js.codec import JsCodecDecoder

    return JsCodecDecoder.from_yaml(path, limits=limits, pinned_now=now)


def _when(text: str) -> float:
    """--now as seconds since the epoch (a time without zone is UTC)."""
    from datetime import UTC, datetime

    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"not an ISO 8601 time: {text!r}", param_hint="--now") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


# Test kinds counted apart: decodeUplink; normalizeUplink (TTN); encodeDownlink and decodeDownlink.
KINDS = ("uplink", "normalized", "downlink")


class _MapTally:
    """Map coverage summed over the files of one `edge decoders test` run."""

    def __init__(self) -> None:
        self.total = Coverage()
        self.without = 0


@dataclass(frozen=True)
class _CatalogueCodec:
    """What the map lookup needs of a catalogue codec run outside a decoder: its key."""

    key: str
    id: str = "catalogue"

    @property
    def codecs(self) -> tuple[str, ...]:
        return (self.key,)


def _check_map(path: Path, decoder: Decoder, outcomes: list[Outcome], maps: _MapTally, quiet: bool) -> int:
    """Check the codec's field map with the examples' outputs; 1 when the map fails (counted once)."""
    report = map_report(decoder, ((f"{path}#{o.example.index}", o.actual.get("data")) for o in outcomes))
    return _map_outcome(str(path), report, maps, quiet)


def _map_outcome(path: str, report: Any, maps: _MapTally, quiet: bool) -> int:
    """Print a map check's result; 1 when the map fails (counted once), 0 otherwise."""
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


@dataclass
class _Tally:
    """Passed/failed/skipped counts of one `edge decoders test` run, per direction."""

    passed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    failed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    skipped: int = 0
    maps: _MapTally = field(default_factory=lambda: _MapTally())

    def ok(self, kind: str, label: str, quiet: bool) -> None:
        self.passed[kind] += 1
        if not quiet:
            click.echo(f"ok   {label}")

    def fail(self, kind: str, label: str, details: str = "", count: int = 1) -> None:
        self.failed[kind] += count
        click.echo(f"FAIL {label}")
        for line in details.splitlines():
            click.echo(f"     {line}")


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

    tally = _Tally()
    limits = JsLimits(time_limit=time_limit_ms / 1000)
    now = _when(pinned) if pinned else None
    for path in codec_targets(paths):
        if path.suffix == ".js":
            if decoder_id or native:
                continue  # native decoders take TTN examples only
            _test_chirpstack(path, limits, now, quiet, tally)
            continue
        native_decoder: Decoder | None = None
        if decoder_id:
            native_decoder = by_id[decoder_id]
        elif native:
            # A TTN codec YAML is claimed through `ttn_codecs`; our own examples files are
            # named after the decoder id itself (decoders/<vendor>/<model>.yaml).
            native_decoder = by_codec.get(codec_id(path)) or by_id.get(codec_id(path))
        _test_ttn_uplinks(path, limits, now, native_decoder, bool(decoder_id or native), quiet, tally)
        if not (decoder_id or native):
            _test_ttn_routines(path, limits, now, quiet, tally)
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


def _test_ttn_uplinks(path: Path, limits: JsLimits, now: float | None, native_decoder: Decoder | None,
                      use_native: bool, quiet: bool, tally: _Tally) -> None:
    """A TTN codec YAML's uplinkDecoder examples, through its JS codec or the chosen native decoder."""
    try:
        examples = load_examples(path)
    except ConfigError as exc:
        # A YAML that cannot be read fails (counted once), and the other files still run.
        for problem in exc.problems:
            click.echo(f"FAIL {problem}")
        tally.failed["uplink"] += 1
        return
    if not examples:
        return
    decoder: Decoder | None = native_decoder
    if not use_native:
        try:
            decoder = _js_decoder(path, limits, now)
        except Exception as exc:  # noqa: BLE001 - a codec that cannot load fails its examples, not the run
            tally.fail("uplink", f"{path}: cannot load codec: {exc}", count=len(examples))
            return
    if decoder is None:
        click.echo(f"skip {path}: no native decoder declares codec {codec_id(path)}")
        tally.skipped += len(examples)
        return
    outcomes = list(run_examples(decoder, examples))
    for outcome in outcomes:
        label = f"{path}#{outcome.example.index} {outcome.example.description}"
        if outcome.passed:
            tally.ok("uplink", label, quiet)
        else:
            tally.fail("uplink", label, outcome.diff())
    # The codec's field map, checked with what the examples decode to (docs/field-maps.md).
    tally.failed["uplink"] += _check_map(path, decoder, outcomes, tally.maps, quiet)


def _test_ttn_routines(path: Path, limits: JsLimits, now: float | None, quiet: bool, tally: _Tally) -> None:
    """A TTN codec YAML's normalizeUplink, encodeDownlink and decodeDownlink examples, as its validator runs them."""
    from edge.decoding.js.codec import codec_script
    from edge.decoding.js.runtime import JsRuntime

    try:
        examples = load_routine_examples(path)
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(f"FAIL {problem}")
        tally.failed["downlink"] += 1
        return
    runtimes: dict[str, JsRuntime | str] = {}  # section -> runtime, or why it does not load
    for example in examples:
        kind = _kind(example.routine)
        if example.section not in runtimes:
            try:
                script, source = codec_script(path, example.section)
                runtimes[example.section] = JsRuntime(source, name=f"{path.parent.name}/{script.name}",
                                                      limits=limits, pinned_now=now)
            except Exception as exc:  # noqa: BLE001 - a codec that cannot load fails its examples, not the run
                runtimes[example.section] = str(exc)
        label = f"{path}#{example.section}{example.index} {example.description}"
        runtime = runtimes[example.section]
        if isinstance(runtime, str):
            tally.fail(kind, label, f"cannot load codec: {runtime}")
            continue
        result = runtime.call_routine(example.routine, example.input)
        if result.error:
            tally.fail(kind, label, result.error)
            continue
        actual = routine_output(example.routine, result.value)
        differences = compare_encoded(example.expected, actual)
        if differences:
            want = json.dumps(example.expected, indent=2, sort_keys=True).splitlines()
            got = json.dumps(actual, indent=2, sort_keys=True).splitlines()
            tally.fail(kind, label, "\n".join(
                [*differences, *difflib.unified_diff(want, got, "expected", "actual", lineterm="")]))
        else:
            tally.ok(kind, label, quiet)


def _test_chirpstack(script: Path, limits: JsLimits, now: float | None, quiet: bool, tally: _Tally) -> None:
    """A ChirpStack codec's test_decode_/test_encode_ tests, compared as its runner does."""
    from edge.decoding.js.runtime import JsRuntime, js_literal

    try:
        vectors = load_vectors(script, js_literal)
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(f"FAIL {problem}")
        tally.failed["uplink"] += 1
        return
    if not vectors:
        return
    try:
        source = script.read_text(encoding="utf-8-sig")
        runtime = JsRuntime(source, name=f"{script.parent.parent.name}/{script.name}", limits=limits,
                            pinned_now=now)
    except Exception as exc:  # noqa: BLE001 - a codec that cannot load fails its tests, not the run
        for kind in KINDS:
            count = sum(1 for v in vectors if _kind(v.routine) == kind)
            if count:
                tally.fail(kind, f"{script}: cannot load codec: {exc}", count=count)
        return
    outputs: list[tuple[str, Mapping[str, Any] | None]] = []
    for vector in vectors:
        kind = _kind(vector.routine)
        label = f"{vector.source}#{vector.index} {vector.name}"
        result = runtime.call_routine(vector.routine, vector.input, vector.expected)
        if result.error:
            tally.fail(kind, label, f"Test '{vector.name}' failed - {result.error}")
        elif result.got != result.want:
            tally.fail(kind, label, vector_diff(result.want, result.got))
        else:
            tally.ok(kind, label, quiet)
            if vector.routine == "decodeUplink":
                decoded = json.loads(result.got) if isinstance(result.got, str) else result.got
                data = decoded.get("data") if isinstance(decoded, Mapping) else None
                outputs.append((f"{vector.source}#{vector.index}", data if isinstance(data, Mapping) else None))
    if outputs:
        # The codec's field map (chirpstack:<vendor>/<codec>), checked with what its tests decode to.
        codec = _CatalogueCodec(f"chirpstack:{script.parent.parent.name}/{script.stem}")
        report = map_report(codec, outputs)
        tally.failed["uplink"] += _map_outcome(str(script), report, tally.maps, quiet)


def _kind(routine: str) -> str:
    return {"encodeDownlink": "downlink", "decodeDownlink": "downlink", "normalizeUplink": "normalized"}.get(
        routine, "uplink")


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
