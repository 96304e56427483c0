"""`edge decoders test`, one codec file at a time: run its examples and tests, check its map, print each result."""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from edge.decoding.base import Decoder
from edge.decoding.catalogue_tests import load_routine_examples, load_vectors, routine_output, vector_diff
from edge.decoding.coverage import Coverage, map_report
from edge.decoding.examples import Outcome, codec_id, compare_encoded, load_examples, run_examples
from edge.errors import ConfigError

if TYPE_CHECKING:
    from edge.decoding.js.runtime import JsLimits


def _js_decoder(path: Path, limits: JsLimits, now: float | None = None) -> Decoder:
    from edge.decoding.js.codec import JsCodecDecoder

    return JsCodecDecoder.from_yaml(path, limits=limits, pinned_now=now)


# Test kinds counted apart: decodeUplink; normalizeUplink (TTN); encodeDownlink and decodeDownlink.
KINDS = ("uplink", "normalized", "downlink")


class MapTally:
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


def _check_map(path: Path, decoder: Decoder, outcomes: list[Outcome], maps: MapTally, quiet: bool) -> int:
    """Check the codec's field map with the examples' outputs; 1 when the map fails (counted once)."""
    report = map_report(decoder, ((f"{path}#{o.example.index}", o.actual.get("data")) for o in outcomes))
    return _map_outcome(str(path), report, maps, quiet)


def _map_outcome(path: str, report: Any, maps: MapTally, quiet: bool) -> int:
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
class Tally:
    """Passed/failed/skipped counts of one `edge decoders test` run, per direction."""

    passed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    failed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    skipped: int = 0
    maps: MapTally = field(default_factory=lambda: MapTally())

    def ok(self, kind: str, label: str, quiet: bool) -> None:
        self.passed[kind] += 1
        if not quiet:
            click.echo(f"ok   {label}")

    def fail(self, kind: str, label: str, details: str = "", count: int = 1) -> None:
        self.failed[kind] += count
        click.echo(f"FAIL {label}")
        for line in details.splitlines():
            click.echo(f"     {line}")

    def unreadable(self, kind: str, exc: ConfigError) -> None:
        """A file that cannot be read: each problem printed, one failure counted (the other files still run)."""
        for problem in exc.problems:
            click.echo(f"FAIL {problem}")
        self.failed[kind] += 1


def run_ttn_uplinks(path: Path, limits: JsLimits, now: float | None, native_decoder: Decoder | None,
                      use_native: bool, quiet: bool, tally: Tally) -> None:
    """A TTN codec YAML's uplinkDecoder examples, through its JS codec or the chosen native decoder."""
    try:
        examples = load_examples(path)
    except ConfigError as exc:
        tally.unreadable("uplink", exc)
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


def run_ttn_routines(path: Path, limits: JsLimits, now: float | None, quiet: bool, tally: Tally) -> None:
    """A TTN codec YAML's normalizeUplink, encodeDownlink and decodeDownlink examples, as its validator runs them."""
    from edge.decoding.js.codec import codec_script
    from edge.decoding.js.runtime import JsRuntime

    try:
        examples = load_routine_examples(path)
    except ConfigError as exc:
        tally.unreadable("downlink", exc)
        return
    runtimes: dict[str, JsRuntime | str] = {}  # section -> runtime, or why it does not load
    for example in examples:
        kind = kind_of(example.routine)
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


def run_chirpstack(script: Path, limits: JsLimits, now: float | None, quiet: bool, tally: Tally) -> None:
    """A ChirpStack codec's test_decode_/test_encode_ tests, compared as its runner does."""
    from edge.decoding.js.runtime import JsRuntime, js_literal

    try:
        vectors = load_vectors(script, js_literal)
    except ConfigError as exc:
        tally.unreadable("uplink", exc)
        return
    if not vectors:
        return
    try:
        source = script.read_text(encoding="utf-8-sig")
        runtime = JsRuntime(source, name=f"{script.parent.parent.name}/{script.name}", limits=limits,
                            pinned_now=now)
    except Exception as exc:  # noqa: BLE001 - a codec that cannot load fails its tests, not the run
        for kind in KINDS:
            count = sum(1 for v in vectors if kind_of(v.routine) == kind)
            if count:
                tally.fail(kind, f"{script}: cannot load codec: {exc}", count=count)
        return
    outputs: list[tuple[str, Mapping[str, Any] | None]] = []
    for vector in vectors:
        kind = kind_of(vector.routine)
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


def kind_of(routine: str) -> str:
    """The kind a routine's test is counted as: uplink, normalized or downlink."""
    return {"encodeDownlink": "downlink", "decodeDownlink": "downlink", "normalizeUplink": "normalized"}.get(
        routine, "uplink")
