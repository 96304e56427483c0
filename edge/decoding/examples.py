"""Runs TTN-style codec examples through a decoder and compares outputs by the TTN validator's rules.

Used by the test suite, by `edge decoders test` and by the pytest plugin for decoder authors.
Comparison (TTN `bin/validate.js`): the output goes through a JSON round trip, missing `warnings`
and `errors` become [], missing `data` becomes null, numbers compare by value (41 == 41.0) but a
boolean never equals a number, and floats may differ by a relative 1e-9 (engines round `Math.pow`
differently in the last digits).
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from edge.decoding.base import Decoder, DecodeResult, DeviceContext

REL_TOL = 1e-9


@dataclass(frozen=True)
class Example:
    """One uplink example of a codec YAML."""

    source: Path
    index: int
    description: str
    fport: int
    payload: bytes
    expected: dict[str, Any]

    @property
    def name(self) -> str:
        """`file.yaml#3 (description)`."""
        return f"{self.source.name}#{self.index} ({self.description})"


@dataclass(frozen=True)
class Outcome:
    """The result of running one example."""

    example: Example
    actual: dict[str, Any]
    passed: bool

    def diff(self) -> str:
        """A unified diff of expected vs actual output, as pretty JSON."""
        want = json.dumps(self.example.expected, indent=2, sort_keys=True).splitlines()
        got = json.dumps(self.actual, indent=2, sort_keys=True).splitlines()
        return "\n".join(difflib.unified_diff(want, got, "expected", "actual", lineterm=""))


def same(actual: Any, expected: Any, rel_tol: float = REL_TOL) -> bool:
    """Deep equality by TTN's rules (see module docstring)."""
    if isinstance(actual, bool) or isinstance(expected, bool):
        return type(actual) is type(expected) and actual == expected
    if isinstance(actual, int | float) and isinstance(expected, int | float):
        return actual == expected or math.isclose(actual, expected, rel_tol=rel_tol)
    if isinstance(actual, dict) and isinstance(expected, dict):
        return actual.keys() == expected.keys() and all(same(actual[k], expected[k], rel_tol) for k in actual)
    if isinstance(actual, list) and isinstance(expected, list):
        return len(actual) == len(expected) and all(
            same(a, e, rel_tol) for a, e in zip(actual, expected, strict=True))
    return type(actual) is type(expected) and actual == expected


def normal_form(output: Any) -> dict[str, Any]:
    """An output brought to the compared form: data, warnings and errors always present."""
    output = json.loads(json.dumps(output)) if output is not None else {}
    if not isinstance(output, dict):
        output = {"data": output}
    return {"data": output.get("data"), "warnings": output.get("warnings") or [],
            "errors": output.get("errors") or []}


def result_form(result: DecodeResult) -> dict[str, Any]:
    """A DecodeResult in the compared form."""
    return normal_form({"data": result.data, "warnings": list(result.warnings), "errors": list(result.errors)})


def codec_files(paths: Iterable[Path]) -> list[Path]:
    """The codec YAML files named, or found under the folders named, in a stable order."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*.yaml") if p.is_file()))
        else:
            found.append(path)
    return found


def load_examples(path: Path) -> list[Example]:
    """The uplink examples of one codec YAML (TTN Device Repository form)."""
    doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    section = doc.get("uplinkDecoder") or {}
    examples: list[Example] = []
    for i, ex in enumerate(section.get("examples") or [], 1):
        given = ex.get("input") or {}
        examples.append(Example(path, i, str(ex.get("description", "")), int(given.get("fPort", 0)),
                                bytes(given.get("bytes") or []), normal_form(ex.get("output"))))
    return examples


def codec_id(path: Path) -> str:
    """The TTN codec id of a codec YAML: `<vendor-folder>/<file-stem>`."""
    return f"{path.parent.name}/{path.stem}"


def run_example(decoder: Decoder, example: Example, dev_eui: str = "0000000000000000") -> Outcome:
    """Decode one example; an exception from the decoder is reported as an error output."""
    try:
        actual = result_form(decoder.decode(example.payload, example.fport, DeviceContext(dev_eui)))
    except Exception as exc:  # noqa: BLE001 - a crashing decoder is a failed example, not a crash here
        actual = {"data": None, "warnings": [], "errors": [f"decoder raised {type(exc).__name__}: {exc}"]}
    return Outcome(example, actual, same(actual, example.expected))


def run_examples(decoder: Decoder, examples: Iterable[Example]) -> Iterator[Outcome]:
    """Run examples one by one."""
    for example in examples:
        yield run_example(decoder, example)
