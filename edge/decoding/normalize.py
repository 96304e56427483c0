"""The one normalisation step: a codec's vendor `data` plus its field map become standard readings."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from edge.decoding.fieldmap import EMPTY, FieldMap
from edge.decoding.fieldpath import ANY_INDEX, ANY_KEY, Step
from edge.decoding.fieldspec import FieldSpec
from edge.errors import UnitMismatch
from edge.model import Reading, Value

# Keys an object may have besides `value` and still be one leaf: `{"value": 3.1, "unit": "V",
# "displayName": "Battery voltage"}` as Decentlab, Adeunis and others return it.
_VALUE_OBJECT_KEYS = frozenset({"value", "unit", "displayName", "name", "label"})


@dataclass(slots=True)
class Leaf:
    """One scalar of `data`: its steps, its path as maps write it (`a.b[2].c`), its value, and the
    data's own unit for `{value, unit}` objects."""

    steps: tuple[Step, ...]
    value: Any
    unit: str | None = None
    path: str = ""


@dataclass(slots=True)
class Normalised:
    """The readings of one decode, and the paths of leaves no map entry covered."""

    readings: list[Reading] = field(default_factory=list)
    unmapped: list[str] = field(default_factory=list)
    # Leaves whose map entry names a unit the data's own unit contradicts (kept unit-less).
    unit_errors: list[str] = field(default_factory=list)
    # Leaves whose converted value lies outside the quantity's physical range: (path, quantity
    # name, converted value). A wrong unit in the map, a codec's "no sensor" marker (327.67 °C) or
    # a failing sensor; they are sent all the same, and sensor health flags them.
    out_of_range: list[tuple[str, str, float]] = field(default_factory=list)


def _value_object(value: Mapping[str, Any]) -> bool:
    if "value" not in value:
        return False
    inner = value["value"]
    return ((inner is None or isinstance(inner, str | int | float | bool)) and value.keys() <= _VALUE_OBJECT_KEYS
            and all(isinstance(value[k], str) for k in value if k != "value"))


# Deeper parts of a codec's output are not turned into readings (they stay in the raw uplink).
MAX_DEPTH = 32
_SPECIAL = re.compile(r"[.\[\]`]")
_PLAIN = frozenset({str, int, float, bool, list, tuple, type(None)})


def _key_text(key: str) -> str:
    return f"`{key}`" if not key or _SPECIAL.search(key) else key


def leaves(data: Any) -> list[Leaf]:
    """Every scalar of `data`, depth first in the data's own order; nulls are skipped."""
    out: list[Leaf] = []
    if isinstance(data, Mapping):
        _walk(data, (), "", out)
    return out


def _walk(data: Mapping[Any, Any], steps: tuple[Step, ...], path: str, out: list[Leaf]) -> None:
    # Per uplink, so written for speed: paths are built as the walk goes down, dicts tested first.
    if len(steps) >= MAX_DEPTH:
        return  # no sensor nests this deep; a hostile codec must not exhaust the stack (raw is kept)
    for key, value in data.items():
        if not isinstance(key, str):
            key = str(key)
        text = _key_text(key)
        _visit(value, (*steps, key), f"{path}.{text}" if path else text, out)


def _visit(value: Any, steps: tuple[Step, ...], path: str, out: list[Leaf]) -> None:
    kind = type(value)
    if kind is dict or (kind not in _PLAIN and isinstance(value, Mapping)):
        if _value_object(value):
            inner = value.get("value")
            if inner is not None:
                unit = value.get("unit")
                out.append(Leaf(steps, inner, unit if isinstance(unit, str) and unit else None, path))
        else:
            _walk(value, steps, path, out)
    elif kind is list or kind is tuple:
        if len(steps) >= MAX_DEPTH:
            return
        for i, item in enumerate(value):
            _visit(item, (*steps, i), f"{path}[{i}]", out)
    elif value is not None:
        out.append(Leaf(steps, value, None, path))


def component(steps: Sequence[Step]) -> str:
    """A SenML-safe name for an unmapped leaf: `batteryVoltage` -> `battery-voltage`, `a.b[2]` -> `a.b.2`."""
    text = ".".join(str(s) for s in steps)
    chars: list[str] = []
    for i, ch in enumerate(text):
        if ch.isupper() and i and text[i - 1].islower():
            chars.append("-")
        if ch.isalnum() and ch.isascii():
            chars.append(ch.lower())
        elif ch in ".-":
            chars.append(ch)
        else:
            chars.append("-")
    return "".join(chars).strip("-.") or "value"


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _round(value: float) -> float:
    # Round away binary noise of the conversion (0.1 * 3 = 0.30000000000000004).
    return float(f"{value:.12g}")


def _resolve(pattern: tuple[Step, ...], leaf: tuple[Step, ...]) -> tuple[Step, ...]:
    """The time path for a leaf: `[*]` and `*` take the leaf's indices and keys, in order."""
    indices = [s for s in leaf if isinstance(s, int)]
    keys_at = {i: s for i, s in enumerate(leaf)}
    out: list[Step] = []
    n_index = 0
    for pos, step in enumerate(pattern):
        if step == ANY_INDEX:
            out.append(indices[n_index] if n_index < len(indices) else 0)
            n_index += 1
        elif step == ANY_KEY:
            out.append(keys_at.get(pos, ""))
        else:
            out.append(step)
    return tuple(out)


def _get(data: Any, steps: tuple[Step, ...]) -> Any:
    for step in steps:
        if isinstance(step, int):
            if not isinstance(data, list | tuple) or step >= len(data):
                return None
            data = data[step]
        elif isinstance(data, Mapping):
            data = data.get(step)
        else:
            return None
        if isinstance(data, Mapping) and _value_object(data):
            data = data.get("value")
    return data


def _time(spec: FieldSpec, leaf: Leaf, data: Any, recv_time: float) -> float | None:
    base: float | None = None
    if spec.time is not None:
        raw = _get(data, _resolve(spec.time, leaf.steps))
        base = _timestamp(raw, spec.time_unit, recv_time)
        if base is None:
            return None
    if spec.time_step:
        index = next((s for s in reversed(leaf.steps) if isinstance(s, int)), 0)
        base = (recv_time if base is None else base) + index * spec.time_step
    return None if base is None else _round(base)


def _timestamp(raw: Any, unit: str, recv_time: float) -> float | None:
    if unit == "iso8601":
        if not isinstance(raw, str):
            return None
        try:
            parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            return None
        if parsed.tzinfo is None:
            return None  # a local time without an offset cannot be placed
        return parsed.timestamp()
    if not _number(raw):
        return None
    number = float(raw)
    if unit == "ms":
        return number / 1000
    if unit == "offset-s":
        return recv_time + number
    if unit == "ago-s":
        return recv_time - number
    return number


_NUMBER_TEXT = re.compile(r"^\s*([-+]?\d+(?:\.\d+)?)\s*([^\d\s].*?)?\s*$")


def _numeric_text(text: str, map_unit: str | None) -> Value:
    """A number a codec wrote as text ("-10.00", "1234 mm", in the map's unit) as a number.

    Text that is not a number, or states a unit other than the map's, stays text (sent as `vs`).
    """
    match = _NUMBER_TEXT.match(text)
    if match is None:
        return text
    number, unit = match.groups()
    if unit is not None and unit != map_unit:
        return text
    return float(number) if "." in number else int(number)


def normalise(data: Mapping[str, Any] | None, fmap: FieldMap = EMPTY, recv_time: float = 0.0) -> Normalised:
    """Vendor `data` plus its map -> readings (docs/field-maps.md, "What the normaliser does").

    A mapped leaf gets the quantity's name and unit, its value converted, its own time when the map
    names one, and its source path. An ignored leaf leaves nothing. Any other number, string or
    boolean goes out unit-less under its own key and is listed in `unmapped`: never a guessed unit.
    A converted value outside the quantity's physical range is listed in `out_of_range` (sensor
    health judges the readings themselves; map checks use the list).
    """
    out = Normalised()
    if not data:
        return out
    readings = out.readings
    lookup = fmap.lookup
    timed = False
    for leaf in leaves(data):
        value = leaf.value
        kind = type(value)
        if kind is float:
            if not math.isfinite(value):
                continue
        elif kind is not int and kind is not str and kind is not bool and not isinstance(value, (str, int, float)):
            continue
        spec = lookup(leaf.steps)
        path = leaf.path
        if spec is None or spec.keep:
            if spec is None:
                out.unmapped.append(path)
            readings.append(Reading(component(leaf.steps), value, None, path))
            continue
        if spec.ignore:
            continue
        when = None
        if spec.time is not None or spec.time_step:
            when = _time(spec, leaf, data, recv_time)
            timed = timed or when is not None
        quantity = spec.quantity
        unit = quantity.unit if quantity is not None else spec.unit
        if kind is str and not spec.state and unit is not None:
            value = _numeric_text(value, spec.unit)
            kind = type(value)
        if spec.state or kind is str or kind is bool or unit is None:
            # States, and strings or booleans under a measurement (e.g. "2.3(low battery)"), carry no unit.
            readings.append(Reading(spec.name, value, None, path, when))
            continue
        factor, offset = spec.factor, spec.offset
        if spec.unit is None and leaf.unit is None:
            # The map relies on the data's own unit, which this leaf lacks: no unit beats a guess.
            out.unit_errors.append(path)
            readings.append(Reading(component(leaf.steps), value, None, path, when))
            continue
        if leaf.unit is not None and spec.unit is None:
            try:
                factor, offset = spec.convert_from(leaf.unit)
            except UnitMismatch:
                out.unit_errors.append(path)
                readings.append(Reading(component(leaf.steps), value, None, path, when))
                continue
        converted: float = value
        if factor != 1.0 or offset != 0.0:
            converted = _round(value * factor + offset)
        if quantity is not None and not quantity.low <= converted <= quantity.high:
            # Sent as it is: sensor health flags it on the gateway (edge/health.py), and a map check
            # (`edge decoders test`) tells a wrong unit from a codec's "no value" marker.
            out.out_of_range.append((path, spec.name, float(converted)))
        readings.append(Reading(spec.name, converted, unit, path, when))
    if timed:
        # The uplink's own readings first, then samples with their own time, newest first: whoever
        # takes the first reading of a name as the current one (sensor health) gets the newest.
        readings.sort(key=lambda r: -math.inf if r.time is None else -r.time)
    return out
