"""Layers the configuration: the main TOML file, then its drop-in directory, then EDGE__* environment overrides.

A fleet shares one base file and gives each gateway only what differs::

    /etc/lorawan-edge/edge.toml          the base, the same on every gateway
    /etc/lorawan-edge/edge.d/*.toml      drop-ins, merged in lexical order (50-site.toml after 10-tls.toml)
    EDGE__<SECTION>__<KEY>=value         environment overrides, last (e.g. from /etc/default/lorawan-edge)

Merging rules (a later layer wins):

- Tables merge key by key, recursively.
- Arrays of tables merge by their `name` key: a drop-in `[[upstream]]` whose name exists updates
  that upstream; a new name (or an entry without a name, such as `[[decoding.rule]]`) is appended.
- Any other value, arrays of strings included, replaces the earlier one.
- A table never turns into a plain value or back: that is an error naming the file.

Environment overrides address keys with double underscores, case-insensitively:
`EDGE__CHIRPSTACK__MQTT_URL`, `EDGE__EDGE__ID`, `EDGE__BUFFER__MAX_SIZE_MB`, and for an entry of
an array of tables its name: `EDGE__UPSTREAM__CITY__URL` (a `-` in the name is written `_`). The
value is read as a TOML value when it parses (`1024`, `true`, `["a", "b"]`, `"quoted text"`),
otherwise as text. Where the files hold text the value stays text, so `EDGE__EDGE__ID=0042` keeps
its zeros; dates and times never appear in the configuration and also stay text.

Only the layering happens here; `edge.config.parse_config` validates the merged document.
"""

from __future__ import annotations

import datetime as dt
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.errors import ConfigError

__all__ = ["ENV_PREFIX", "Layer", "describe_sources", "drop_in_dir", "load_layers", "read_layers"]

ENV_PREFIX = "EDGE__"
# Arrays of tables that environment overrides can address by name even before any file has one,
# so that EDGE__UPSTREAM__CITY__URL without a [[upstream]] "city" is an error, not a new table.
_NAMED_ARRAYS = frozenset({"upstream", "http_upstream"})


@dataclass(frozen=True)
class Layer:
    """One contribution to the configuration.

    Attributes:
        source: the file's path, or the environment variable's name.
        keys: the dotted keys it set, e.g. ("edge.id", "upstream.city.url"); empty for the main file.
    """

    source: str
    keys: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"{self.source}: {', '.join(self.keys)}" if self.keys else self.source


def drop_in_dir(path: str | Path) -> Path:
    """The drop-in directory of a configuration file: /etc/lorawan-edge/edge.toml -> /etc/lorawan-edge/edge.d."""
    p = Path(path)
    stem = p.with_suffix("").name if p.suffix else p.name
    return p.with_name(f"{stem}.d")


def load_layers(path: str | Path, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Read the main file, merge its drop-ins and apply the environment overrides.

    Args:
        path: the main TOML file.
        environ: the environment to read EDGE__* overrides from; `os.environ` when None.

    Returns:
        The merged document, ready for `edge.config.parse_config`.

    Raises:
        ConfigError: a file cannot be read or is not TOML, a drop-in turns a table into a value,
            or an override names something that does not exist; each problem names its file or
            variable.
    """
    doc, _ = read_layers(path, environ)
    return doc


def describe_sources(path: str | Path, environ: Mapping[str, str] | None = None) -> list[str]:
    """Which files and variables contributed, in the order applied, for `edge validate --show`.

    Args:
        path: the main TOML file.
        environ: as for `load_layers`.

    Returns:
        One line per layer: the main file's path, then "<drop-in>: key, key" for each drop-in and
        "<VARIABLE>: key" for each override. Values are never included (they may be secrets).

    Raises:
        ConfigError: as `load_layers`.
    """
    _, layers = read_layers(path, environ)
    return [str(layer) for layer in layers]


def read_layers(path: str | Path, environ: Mapping[str, str] | None = None) -> tuple[dict[str, Any], list[Layer]]:
    """The merged document together with the layers that made it (see `load_layers`)."""
    main = Path(path)
    doc = _read_toml(main)  # a broken main file stops here: nothing else can be judged without it
    layers = [Layer(str(main))]
    problems: list[str] = []
    for drop_in in _drop_ins(main, problems):
        try:
            over = _read_toml(drop_in)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        touched: list[str] = []
        _merge(doc, over, "", str(drop_in), touched, problems)
        layers.append(Layer(str(drop_in), tuple(touched)))
    env = os.environ if environ is None else environ
    for name in sorted(n for n in env if n.upper().startswith(ENV_PREFIX)):
        key = _apply_override(doc, name, env[name], problems)
        if key is not None:
            layers.append(Layer(name, (key,)))
    if problems:
        raise ConfigError(problems)
    return doc, layers


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    try:
        return tomllib.loads(text.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None


def _drop_ins(main: Path, problems: list[str]) -> list[Path]:
    """The *.toml files of the drop-in directory in lexical order; hidden files (editor leftovers) are skipped."""
    directory = drop_in_dir(main)
    if not directory.exists():
        return []
    if not directory.is_dir():
        problems.append(f"{directory}: is not a directory (drop-ins go in a directory of *.toml files)")
        return []
    try:
        entries = list(directory.iterdir())
    except OSError as exc:
        problems.append(f"{directory}: cannot read: {exc.strerror}")
        return []
    return sorted((p for p in entries if p.suffix == ".toml" and not p.name.startswith(".")), key=lambda p: p.name)


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "a table"
    if _is_table_array(value):
        return "an array of tables"
    return f"a {type(value).__name__}"


def _merge(base: dict[str, Any], over: dict[str, Any], where: str, source: str, touched: list[str],
           problems: list[str]) -> None:
    """Merge `over` into `base` in place, recording the dotted keys set in `touched`."""
    for key, value in over.items():
        dotted = f"{where}.{key}" if where else key
        if key not in base:
            base[key] = value
            touched.append(dotted)
            continue
        old = base[key]
        if isinstance(old, dict) != isinstance(value, dict):
            problems.append(f"{source}: {dotted}: is {_kind(value)} here but {_kind(old)} in an earlier file")
        elif isinstance(old, dict):
            _merge(old, value, dotted, source, touched, problems)
        elif _is_table_array(old) and _is_table_array(value):
            _merge_by_name(old, value, dotted, source, touched, problems)
        else:
            base[key] = value
            touched.append(dotted)


def _merge_by_name(base: list[dict[str, Any]], over: list[dict[str, Any]], where: str, source: str,
                   touched: list[str], problems: list[str]) -> None:
    """Entries with a known `name` update that entry; the others are appended."""
    for entry in over:
        name = entry.get("name")
        match = next((b for b in base if isinstance(name, str) and b.get("name") == name), None)
        if match is None:
            base.append(entry)
            touched.append(f"{where}.{name}" if isinstance(name, str) else f"{where}[{len(base) - 1}]")
        else:
            rest = {k: v for k, v in entry.items() if k != "name"}
            _merge(match, rest, f"{where}.{name}", source, touched, problems)


def _apply_override(doc: dict[str, Any], var: str, raw: str, problems: list[str]) -> str | None:
    """Apply EDGE__A__B__C=raw to `doc`; returns the dotted key set, or None after recording a problem."""
    parts = var[len(ENV_PREFIX):].lower().split("__")
    if len(parts) < 2 or not all(parts):
        problems.append(f"{var}: expected {ENV_PREFIX}<SECTION>__<KEY>, e.g. EDGE__CHIRPSTACK__MQTT_URL")
        return None
    table = doc
    dotted: list[str] = []
    i = 0
    while i < len(parts) - 1:
        segment = parts[i]
        node = table.get(segment)
        if node is None and not (segment in _NAMED_ARRAYS and table is doc):
            node = table[segment] = {}
        if isinstance(node, dict):
            table = node
            dotted.append(segment)
            i += 1
            continue
        if node is None or (isinstance(node, list) and all(isinstance(v, dict) for v in node)):
            entries: list[dict[str, Any]] = node or []
            label = ".".join([*dotted, segment])
            if i + 2 > len(parts) - 1:
                problems.append(f"{var}: name an entry and its key, e.g. {ENV_PREFIX}{label.upper()}__<NAME>__<KEY>")
                return None
            wanted = parts[i + 1].replace("-", "_")
            found = [e for e in entries if isinstance(e.get("name"), str)
                     and e["name"].lower().replace("-", "_") == wanted]
            if len(found) != 1:
                names = ", ".join(str(e.get("name")) for e in entries) or "none"
                why = "names more than one" if found else "names no"
                problems.append(f"{var}: {why} [[{label}]] entry {parts[i + 1]!r} (names: {names})")
                return None
            table = found[0]
            dotted += [segment, str(table["name"])]
            i += 2
            continue
        problems.append(f"{var}: {'.'.join([*dotted, segment])} is {_kind(node)}, not a table")
        return None
    key = parts[-1]
    dotted.append(key)
    old = table.get(key)
    if isinstance(old, dict) or _is_table_array(old):
        problems.append(f"{var}: {'.'.join(dotted)} is {_kind(old)}; override one of its keys")
        return None
    table[key] = _parse_value(raw, old)
    return ".".join(dotted)


def _parse_value(raw: str, old: Any) -> Any:
    """A TOML value when `raw` is one, else the text itself; text stays text where the files hold text."""
    try:
        parsed = tomllib.loads(f"v = {raw}")
    except tomllib.TOMLDecodeError:
        return raw
    if set(parsed) != {"v"}:  # "1\nother = 2" is text, not an injected key
        return raw
    value = parsed["v"]
    if isinstance(value, dt.date | dt.time):  # datetime is a date: no key of ours holds one
        return raw
    if isinstance(old, str) and not isinstance(value, str):
        return raw
    return value
