"""One entry of a field map: what it says about a field path, parsed and checked against the vocabulary."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edge.decoding.fieldpath import Step, parse_path, weight
from edge.errors import UnitMismatch
from edge.vocabulary import BY_NAME, Quantity, conversion

TIME_UNITS = ("s", "ms", "iso8601", "offset-s", "ago-s")
_SPEC_KEYS = frozenset({"n", "u", "scale", "state", "values", "t", "tu", "dt", "not_readings"})


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """What a map says about one field path: ignore it, or its quantity, emitted unit and time.

    `factor`/`offset` convert a value as the codec emits it (after `scale`) to the quantity's unit;
    they are derived from `u`, never written in a map.
    """

    pattern: str
    steps: tuple[Step, ...]
    ignore: bool = False
    keep: bool = False  # sent unit-less under its own key on purpose: no quantity fits (yet)
    name: str = ""
    unit: str | None = None
    scale: float = 1.0
    state: bool = False
    values: Mapping[str, Any] | None = None
    # Values a catalogue example returns that no device sends (filler bytes): the range check skips them.
    not_readings: frozenset[float] = frozenset()
    time: tuple[Step, ...] | None = None
    time_unit: str = "s"
    time_step: float = 0.0
    quantity: Quantity | None = None
    factor: float = 1.0
    offset: float = 0.0

    @property
    def specificity(self) -> int:
        """How exact the pattern is: exact steps count 2, key globs 1, wildcards 0."""
        return sum(weight(s) for s in self.steps)

    def convert_from(self, unit: str) -> tuple[float, float]:
        """(factor, offset) from a unit the data itself declares (Decentlab's `unit`), with `scale`.

        Raises:
            UnitMismatch: the unit is unknown or measures something else than the quantity.
        """
        if self.quantity is None:
            raise UnitMismatch(f"{self.name!r} is not in the vocabulary")
        factor, offset = conversion(unit, self.quantity)
        return factor * self.scale, offset


def parse_spec(pattern: str, raw: Any, where: str, problems: list[str]) -> FieldSpec | None:
    """The spec a map writes for `pattern` (`raw`: 'ignore', 'keep' or a mapping); None, with the
    problems appended, when it cannot be used."""
    try:
        steps = parse_path(pattern)
    except ValueError as exc:
        problems.append(f"{where}: bad field path: {exc}")
        return None
    if raw == "ignore":
        return FieldSpec(pattern, steps, ignore=True)
    if raw == "keep":
        return FieldSpec(pattern, steps, keep=True)
    if not isinstance(raw, Mapping):
        problems.append(f"{where}: must be 'ignore', 'keep' or a mapping with n (and u, state, t ...)")
        return None
    unknown = set(map(str, raw)) - _SPEC_KEYS
    if unknown:
        problems.append(f"{where}: unknown keys {sorted(unknown)} (allowed: {sorted(_SPEC_KEYS)})")
    name = raw.get("n")
    quantity = BY_NAME.get(name) if isinstance(name, str) else None
    if quantity is None:
        problems.append(f"{where}: n {name!r} is not in the vocabulary (docs/vocabulary.md)")
        return None
    state = raw.get("state", False)
    if not isinstance(state, bool):
        problems.append(f"{where}: state must be true or false")
        state = False
    unit = raw.get("u")
    scale = raw.get("scale", 1.0)
    if isinstance(scale, bool) or not isinstance(scale, int | float) or scale == 0:
        problems.append(f"{where}: scale must be a non-zero number")
        scale = 1.0
    factor, offset = float(scale), 0.0
    if state:
        if quantity.unit is not None and not quantity.state:
            problems.append(f"{where}: state: true, but {name} is a measurement in {quantity.unit}")
        if unit is not None:
            problems.append(f"{where}: a state has no unit (u: {unit!r})")
    elif unit is not None:
        if not isinstance(unit, str):
            problems.append(f"{where}: u must be a string")
        else:
            try:
                f, offset = conversion(unit, quantity)
                factor = f * float(scale)
            except UnitMismatch as exc:
                problems.append(f"{where}: {exc}")
    elif quantity.state:
        problems.append(f"{where}: {name} is a state quantity: add state: true")
    not_readings = raw.get("not_readings", [])
    if not isinstance(not_readings, list) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in not_readings):
        problems.append(f"{where}: not_readings must be a list of numbers (example values that are filler)")
        not_readings = []
    values = raw.get("values")
    if values is not None and not isinstance(values, Mapping):
        problems.append(f"{where}: values must be a mapping (enum value: meaning)")
        values = None
    time: tuple[Step, ...] | None = None
    if raw.get("t") is not None:
        try:
            time = parse_path(str(raw["t"]))
        except ValueError as exc:
            problems.append(f"{where}: bad t path: {exc}")
    time_unit = raw.get("tu", "s")
    if time_unit not in TIME_UNITS:
        problems.append(f"{where}: tu must be one of {', '.join(TIME_UNITS)}")
    time_step = raw.get("dt", 0.0)
    if isinstance(time_step, bool) or not isinstance(time_step, int | float):
        problems.append(f"{where}: dt must be a number of seconds")
        time_step = 0.0
    return FieldSpec(pattern, steps, name=str(name), unit=unit if isinstance(unit, str) else None,
                     scale=float(scale), state=state, values=values,
                     not_readings=frozenset(not_readings), time=time, time_unit=str(time_unit),
                     time_step=float(time_step), quantity=quantity, factor=factor, offset=offset)
