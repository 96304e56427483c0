"""The catalogues' own codec tests: which files TTN's validator walks, its routine examples, ChirpStack's test files.

`edge decoders test` runs them as each catalogue's tool does. TTN's routine examples compare by
the validator's rules (examples.py); ChirpStack's device-profiles tests compare JSON.stringify of
both sides instead (see load_vectors).
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.decoding.examples import json_value, read_yaml
from edge.errors import ConfigError


@dataclass(frozen=True)
class RoutineExample:
    """One TTN example for a routine other than decodeUplink: its input and expected output as given."""

    source: Path
    index: int
    description: str
    routine: str
    section: str
    input: dict[str, Any]
    expected: dict[str, Any]


@dataclass(frozen=True)
class Vector:
    """One ChirpStack device-profiles test: `{name, input, expected}` from test_decode_/test_encode_<codec>.json."""

    source: Path
    index: int
    routine: str
    name: str
    input: Any
    expected: Any


def codec_targets(paths: Iterable[Path]) -> list[Path]:
    """The codec files `edge decoders test` runs: TTN codec YAMLs and ChirpStack codec scripts.

    A TTN repository (a folder holding `vendor/index.yaml`), its `vendor/` folder or one vendor's
    folder with an `index.yaml` is walked as TTN's validator walks it: vendors from the index,
    their end devices, and each codec a firmware version's profile names, once per vendor; codecs
    nobody references are not validated there either. A ChirpStack device-profiles repository, its
    `vendors/`, a vendor or a `codecs/` folder gives every `codecs/*.js`. Any other folder gives
    every YAML under it and every `.js` with a ChirpStack test file beside it; a file is itself.
    """
    found: list[Path] = []
    for path in paths:
        if not path.is_dir():
            found.append(path)
            continue
        indexed = _ttn_indexed(path)
        if indexed is not None:
            found.extend(indexed)
        elif (path / "vendors").is_dir() or path.name in ("vendors", "codecs") or (path / "codecs").is_dir():
            found.extend(sorted(p for p in path.rglob("*.js") if p.is_file() and p.parent.name == "codecs"))
        else:
            found.extend(sorted(p for p in path.rglob("*.yaml") if p.is_file()))
            found.extend(sorted(p for p in path.rglob("*.js") if p.is_file() and _has_vectors(p)))
    return found


def _has_vectors(script: Path) -> bool:
    return any((script.parent / f"test_{kind}_{script.stem}.json").is_file() for kind in ("decode", "encode"))


def _ttn_indexed(folder: Path) -> list[Path] | None:
    """The codec YAMLs a TTN repository's index references, or None if `folder` has no TTN index."""
    if (folder / "vendor" / "index.yaml").is_file():
        folder = folder / "vendor"
    index = folder / "index.yaml"
    if not index.is_file():
        return None
    try:
        doc = read_yaml(index)
    except ConfigError:
        return None
    if isinstance(doc.get("vendors"), list):
        vendors = [(folder / str(v["id"])) for v in doc["vendors"] if isinstance(v, Mapping) and "id" in v]
    elif isinstance(doc.get("endDevices"), list):
        vendors = [folder]
    else:
        return None
    found: list[Path] = []
    for vendor in vendors:
        found.extend(_vendor_codecs(vendor))
    return found


def _vendor_codecs(vendor: Path) -> list[Path]:
    """A TTN vendor folder's referenced codecs, in the order its devices name them."""
    try:
        index = read_yaml(vendor / "index.yaml")
    except ConfigError:
        return []  # TTN's validator skips a vendor without an index too
    codecs: dict[str, Path] = {}
    for device in index.get("endDevices") or []:
        try:
            doc = read_yaml(vendor / f"{device}.yaml")
        except ConfigError:
            continue
        for version in doc.get("firmwareVersions") or []:
            profiles = version.get("profiles") if isinstance(version, Mapping) else None
            for profile in (profiles or {}).values() if isinstance(profiles, Mapping) else []:
                codec = profile.get("codec") if isinstance(profile, Mapping) else None
                if isinstance(codec, str) and codec:
                    # The codec lives in the device's vendor folder, even when the profile's vendorID differs.
                    codecs.setdefault(codec, vendor / f"{codec}.yaml")
    return list(codecs.values())


# TTN's validator runs these besides decodeUplink: (routine, YAML section whose fileName has it).
TTN_ROUTINES = (("normalizeUplink", "uplinkDecoder"), ("encodeDownlink", "downlinkEncoder"),
                ("decodeDownlink", "downlinkDecoder"))


def load_routine_examples(path: Path) -> list[RoutineExample]:
    """A TTN codec YAML's other examples, as its validator runs them ([] if none).

    `downlinkEncoder.examples` call encodeDownlink and `downlinkDecoder.examples` decodeDownlink
    with their input; an uplink example with a `normalizedOutput` calls normalizeUplink with its
    `output`, and expects the normalised `data` as a list (a single object is wrapped, as there).

    Raises:
        ConfigError: the YAML is unreadable or an example is malformed.
    """
    doc = read_yaml(path)
    examples: list[RoutineExample] = []
    for routine, section in TTN_ROUTINES:
        part = doc.get(section)
        raw = part.get("examples") if isinstance(part, Mapping) else None
        if raw is None:
            continue
        if not isinstance(raw, list):
            raise ConfigError([f"{path}: {section}.examples must be a list"])
        for n, item in enumerate(raw, 1):
            where = f"{path}: {section}.examples[{n}]"
            if not isinstance(item, Mapping):
                raise ConfigError([f"{where} must be a mapping"])
            description = str(item.get("description", ""))
            given, output = item.get("input"), item.get("output")
            if routine == "normalizeUplink":
                if "normalizedOutput" not in item:
                    continue
                given, output, description = output, item.get("normalizedOutput"), f"{description} (normalized)"
            if not isinstance(given, Mapping) or not isinstance(output, Mapping):
                raise ConfigError([f"{where} needs an input and an output mapping"])
            examples.append(RoutineExample(path, n, description, routine, section, json_value(given),
                                           json_value(output)))
    return examples


def routine_output(routine: str, value: Any) -> Any:
    """What TTN's validator compares for a routine's result: normalizeUplink's `data` always as a list."""
    if routine == "normalizeUplink" and isinstance(value, dict):
        data = value.get("data")
        if data is not None and not isinstance(data, list):
            return {**value, "data": [data]}
    return value


def vector_files(script: Path) -> dict[str, Path]:
    """ChirpStack's test files for a codec script, by routine: test_decode_<name>.json, test_encode_<name>.json."""
    files = {"decodeUplink": script.parent / f"test_decode_{script.stem}.json",
             "encodeDownlink": script.parent / f"test_encode_{script.stem}.json"}
    return {routine: path for routine, path in files.items() if path.is_file()}


def load_vectors(script: Path, literal: Callable[[str], Any]) -> list[Vector]:
    """The decode and encode tests beside a ChirpStack codec script, decode tests first.

    Args:
        script: the codec, e.g. vendors/acme/codecs/sensor.js.
        literal: evaluates a test file's text as a JS expression and returns it as JSON data; the
            files are JS literals (comments and trailing commas occur), which ChirpStack's runner
            pastes into its script as `const tests = <file>;`.

    Raises:
        ConfigError: a test file cannot be read or is not an array of tests.
    """
    vectors: list[Vector] = []
    for routine, path in vector_files(script).items():
        try:
            doc = literal(path.read_text(encoding="utf-8-sig"))
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError([f"{path}: cannot read: {exc}"]) from None
        if not isinstance(doc, list):
            raise ConfigError([f"{path}: a test file must be an array of tests"])
        for n, test in enumerate(doc, 1):
            if not isinstance(test, Mapping):
                raise ConfigError([f"{path}: test {n} must be an object with name, input and expected"])
            vectors.append(Vector(path, n, routine, str(test.get("name", "")), test.get("input"),
                                  test.get("expected")))
    return vectors


def vector_diff(want: str | None, got: str | None) -> str:
    """ChirpStack's failure message, then a unified diff of both sides pretty-printed (key order kept)."""
    lines = [f"Expected: {want}", f"Got: {got}"]

    def pretty(text: str | None) -> list[str]:
        if text is None:
            return ["undefined"]
        return json.dumps(json.loads(text), indent=2).splitlines()

    lines.extend(difflib.unified_diff(pretty(want), pretty(got), "expected", "actual", lineterm=""))
    return "\n".join(lines)
