"""Runs the uplink examples of TTN codec YAML and compares outputs as TTN's validator does.

Used by the test suite, by `edge decoders test` and by the pytest plugin for decoder authors; the
catalogues' other tests (routine examples, ChirpStack test files) are in catalogue_tests.py.
Comparison (TTN `bin/validate.js`): the output goes through a JSON round trip, missing `warnings`
and `errors` become [], missing `data` becomes null, numbers compare by value (41 == 41.0) but a
boolean never equals a number, and floats may differ by a relative 1e-9 (engines round `Math.pow`
differently in the last digits).
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from edge.decoding.base import Decoder, DecodeResult, DeviceContext
from edge.errors import ConfigError

# TTN's validator reads codec YAML with YAML 1.2 (core schema): `On`, `NO` and `yes` stay strings,
# where PyYAML's 1.1 rules would make booleans of them. ruamel's pure-Python safe loader follows
# 1.2 whether or not its C extension is installed. One loader per process; it is not thread-safe.
_YAML = YAML(typ="safe", pure=True)

# The TTN fixture README: one example differs from Go's math.Pow in the 14th significant digit.
REL_TOL = 1e-9


@dataclass(frozen=True)
class Example:
    """One `uplinkDecoder.examples` entry: its input and its expected output in compared form."""

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
    differences: list[str]

    @property
    def passed(self) -> bool:
        """True when the output matched."""
        return not self.differences

    def diff(self) -> str:
        """Each difference on its own line, then a unified diff of expected vs actual as JSON."""
        want = json.dumps(self.example.expected, indent=2, sort_keys=True).splitlines()
        got = json.dumps(self.actual, indent=2, sort_keys=True).splitlines()
        return "\n".join([*self.differences, *difflib.unified_diff(want, got, "expected", "actual", lineterm="")])


def read_yaml(path: Path) -> Mapping[str, Any]:
    """A codec YAML file as a mapping, read by YAML 1.2 rules as TTN's validator does.

    Raises:
        ConfigError: the file cannot be read or is not a YAML mapping.
    """
    try:
        doc = _YAML.load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, YAMLError) as exc:
        raise ConfigError([f"{path}: cannot read codec YAML: {exc}"]) from None
    if not isinstance(doc, Mapping):
        raise ConfigError([f"{path}: a codec YAML must be a mapping"])
    return doc


def load_examples(path: Path) -> list[Example]:
    """The uplink examples of a TTN codec YAML (an absent `examples` list gives []).

    Raises:
        ConfigError: the YAML is unreadable or an example is malformed.
    """
    doc = read_yaml(path)
    uplink = doc.get("uplinkDecoder")
    raw = uplink.get("examples") if isinstance(uplink, Mapping) else None
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ConfigError([f"{path}: uplinkDecoder.examples must be a list"])
    examples: list[Example] = []
    for n, item in enumerate(raw, 1):
        where = f"{path}: uplinkDecoder.examples[{n}]"
        if not isinstance(item, Mapping):
            raise ConfigError([f"{where} must be a mapping"])
        given = item.get("input")
        output = item.get("output", {})
        fport = given.get("fPort") if isinstance(given, Mapping) else None
        data = given.get("bytes") if isinstance(given, Mapping) else None
        problems = []
        if isinstance(fport, bool) or not isinstance(fport, int):
            problems.append(f"{where}.input.fPort must be an integer")
        if not isinstance(data, list) or not all(isinstance(b, int) and not isinstance(b, bool) and 0 <= b <= 255
                                                 for b in data):
            problems.append(f"{where}.input.bytes must be a list of integers 0-255")
        if not isinstance(output, Mapping):
            problems.append(f"{where}.output must be a mapping")
        if problems or not isinstance(fport, int) or not isinstance(data, list) or not isinstance(output, Mapping):
            raise ConfigError(problems)
        examples.append(Example(path, n, str(item.get("description", "")), fport, bytes(data), ttn_form(output)))
    return examples


def compare(expected: Mapping[str, Any] | DecodeResult, actual: Mapping[str, Any] | DecodeResult,
            *, rel_tol: float = REL_TOL) -> list[str]:
    """Compare codec outputs by the TTN validator's rules; the differences, empty when equal."""
    differences: list[str] = []
    _diff("", ttn_form(expected), ttn_form(actual), rel_tol, differences)
    return differences


def compare_encoded(expected: Mapping[str, Any], actual: Any, *, rel_tol: float = REL_TOL) -> list[str]:
    """Compare a routine's result as TTN's validator does (deep equality; numbers by value)."""
    differences: list[str] = []
    _diff("", json_value(expected), json_value(actual), rel_tol, differences)
    return differences


def ttn_form(output: Mapping[str, Any] | DecodeResult) -> dict[str, Any]:
    """An output after a JSON round trip, with `data`, `warnings` and `errors` always present."""
    doc: dict[str, Any]
    if isinstance(output, DecodeResult):
        doc = json_value({"data": output.data, "warnings": output.warnings, "errors": output.errors})
    else:
        doc = json_value(output)
    if doc.get("warnings") is None:
        doc["warnings"] = []
    if doc.get("errors") is None:
        doc["errors"] = []
    doc.setdefault("data", None)
    return doc


def json_value(value: Any) -> Any:
    """What JSON.parse(JSON.stringify(value)) gives: non-finite numbers become null, tuples lists."""
    if isinstance(value, Mapping):
        return {str(k): json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_value(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, str | int | float):
        return value
    return json.loads(json.dumps(value, default=str))


def _diff(path: str, expected: Any, actual: Any, rel_tol: float, out: list[str]) -> None:
    where = path or "output"
    if isinstance(expected, bool) or isinstance(actual, bool):
        if type(expected) is not type(actual) or expected != actual:
            out.append(f"{where}: expected {expected!r}, got {actual!r}")
    elif isinstance(expected, int | float) and isinstance(actual, int | float):
        if expected != actual and not math.isclose(expected, actual, rel_tol=rel_tol):
            out.append(f"{where}: expected {expected!r}, got {actual!r}")
    elif isinstance(expected, dict) and isinstance(actual, dict):
        for key in sorted(expected.keys() - actual.keys()):
            out.append(f"{where}: missing key {key!r}")
        for key in sorted(actual.keys() - expected.keys()):
            out.append(f"{where}: unexpected key {key!r}")
        for key in sorted(expected.keys() & actual.keys()):
            _diff(f"{path}.{key}" if path else key, expected[key], actual[key], rel_tol, out)
    elif isinstance(expected, list) and isinstance(actual, list):
        if len(expected) != len(actual):
            out.append(f"{where}: expected {len(expected)} items, got {len(actual)}")
        else:
            for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
                _diff(f"{path}[{i}]", e, a, rel_tol, out)
    elif type(expected) is not type(actual) or expected != actual:
        out.append(f"{where}: expected {expected!r}, got {actual!r}")


def codec_files(paths: Iterable[Path]) -> list[Path]:
    """The codec YAML files named, or found under the folders named, in a stable order."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*.yaml") if p.is_file()))
        else:
            found.append(path)
    return found


def codec_id(path: Path) -> str:
    """The TTN codec id of a codec YAML: `<vendor-folder>/<file-stem>`."""
    return f"{path.parent.name}/{path.stem}"


def run_example(decoder: Decoder, example: Example, dev_eui: str = "0000000000000000") -> Outcome:
    """Decode one example; an exception from the decoder is reported as an error output."""
    try:
        actual = ttn_form(decoder.decode(example.payload, example.fport, DeviceContext(dev_eui)))
    except Exception as exc:  # noqa: BLE001 - a failing codec fails its example, not the whole run
        actual = {"data": None, "warnings": [], "errors": [f"decoder raised {type(exc).__name__}: {exc}"]}
    return Outcome(example, actual, compare(example.expected, actual))


def run_examples(decoder: Decoder, examples: Iterable[Example]) -> Iterator[Outcome]:
    """Run examples one by one."""
    for example in examples:
        yield run_example(decoder, example)
