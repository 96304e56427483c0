"""Reads TOML tables into the config dataclasses by their schema, converting each value with msgspec.

Every problem is collected (never only the first) and worded from the schema as 'section.key: message'.
How a field maps to TOML comes from its dataclass metadata: "toml" (another key name; None: not a key),
"inline" (a dataclass whose keys sit in the parent's table, some renamed) with its "templates"
(defaults made from the entry's other keys: "<name>" is the upstream's name in its client id),
"computed" (no default in the file: made at load time, as edge.id).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import MISSING, fields, is_dataclass
from functools import cache
from typing import Annotated, Any, NamedTuple, get_args, get_origin, get_type_hints

import msgspec

# A section's rules beyond its bounds (edge/config/checks.py): check, then return it completed.
Rule = Callable[[Any, "Scope"], Any]
TEXT_TYPES = {str: "str", int: "int", float: "float", bool: "bool"}
_ABSENT = object()


class Context(NamedTuple):
    """What every table of one document is read with."""

    problems: list[str]
    edge_id: str
    rules: Mapping[type, Rule]


class Table:
    """One TOML table being read: collects problems instead of stopping at the first, and names unknown keys."""

    def __init__(self, raw: Any, where: str, problems: list[str]) -> None:
        self.where = where
        self.problems = problems
        if not isinstance(raw, dict):
            problems.append(f"{where}: must be a table")
            raw = {}
        self.table: dict[str, Any] = raw
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        """The qualified key of `name` in this table; the table itself for ''."""
        return f"{self.where}.{name}" if self.where and name else self.where or name

    def problem(self, name: str, text: str) -> None:
        self.problems.append(f"{self.key(name)}: {text}")

    def raw(self, name: str, kind: type, default: Any, required: bool = False) -> Any:
        """The value of `name` as TOML gave it if it is a `kind` (a table, an array), else `default`."""
        self.used.add(name)
        if name not in self.table:
            if required:
                self.problem(name, "is required")
            return default
        value = self.table[name]
        if not isinstance(value, kind):
            self.problem(name, f"must be {kind.__name__}, got {type(value).__name__}")
            return default
        return value

    def sub(self, name: str, required: bool = False) -> Table:
        """The table `name` of this one (empty when absent)."""
        return Table(self.raw(name, dict, {}, required), self.key(name), self.problems)

    def entries(self, name: str) -> list[Table]:
        """The array of tables `name`, one Table per entry (`name[i]`)."""
        return [Table(raw, f"{self.key(name)}[{i}]", self.problems)
                for i, raw in enumerate(self.raw(name, list, []))]

    def value(self, name: str, hint: Any, default: Any, required: bool = False) -> Any:
        """The value of key `name` converted to `hint`; `default` when absent or wrong (a problem)."""
        given = self.raw(name, object, _ABSENT, required)
        return default if given is _ABSENT else self.convert(name, given, hint, default)

    def convert(self, name: str, raw: Any, hint: Any, default: Any) -> Any:
        """`raw` converted to `hint` (problems reported under `name`); `default` when it does not fit."""
        try:
            return _convert(raw, hint, lambda entry, text: self.problem(f"{name}.{entry}", text))
        except _Wrong as exc:
            self.problem(name, str(exc))
            return default

    def done(self) -> None:
        """Report the keys nobody asked for, with the closest known key as a hint."""
        unknown = sorted(set(self.table) - self.used)
        if not unknown:
            return
        import difflib  # only a mistyped key needs it

        for name in unknown:
            # Every key this table knows was asked for, so `used` is the list to suggest from.
            close = difflib.get_close_matches(name, sorted(self.used), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            self.problem(name, f"unknown key{hint}")


class Scope(NamedTuple):
    """A dataclass as read from one table, for its rules: field names to qualified keys, problems, the context."""

    table: Table
    renames: Mapping[str, str]
    context: Context

    def key(self, field_name: str) -> str:
        return self.table.key(self.renames.get(field_name, field_name))

    def problem(self, field_name: str, text: str) -> None:
        """Report `text` under the key of `field_name` ('' for the table itself)."""
        self.table.problems.append(f"{self.key(field_name)}: {text}")


class Field(NamedTuple):
    """How one dataclass field is read: its TOML key and what it is there (worked out once per class)."""

    name: str
    key: str | None  # None: not a TOML key
    hint: Any
    kind: str  # "value", "table" (a nested dataclass), "array" (of tables) or "inline" (keys in the parent's table)
    cls: type  # the dataclass of a table, an array's entries or an inline field (else object)
    default: Any  # MISSING when none; a factory's value is made anew for each document
    factory: Callable[[], Any] | None
    inline: Mapping[str, str]  # an inline field's renamed keys
    templates: Mapping[str, str]  # an inline field's defaults made from the entry's other keys
    required: bool  # a key without a default; a table or inline field with such a key


@cache
def plan(cls: type) -> tuple[Field, ...]:
    """The fields of a config dataclass, as read from TOML."""
    out = []
    for f in fields(cls):
        hint = hints(cls)[f.name]
        item = _item_class(hint)
        table = isinstance(hint, type) and is_dataclass(hint)
        kind = "inline" if "inline" in f.metadata else "table" if table else "array" if item else "value"
        factory = None if f.default_factory is MISSING else f.default_factory
        sub = hint if kind in ("table", "inline") else item or object
        if kind == "value":  # a key made at load time ("computed": edge.id) is not required in the file
            required = f.default is MISSING and factory is None and not f.metadata.get("computed")
        else:
            required = kind != "array" and any(g.required for g in plan(sub) if g.kind in ("value", "inline"))
        out.append(Field(f.name, f.metadata.get("toml", f.name), hint, kind, sub, f.default, factory,
                         f.metadata.get("inline", {}), f.metadata.get("templates", {}), required))
    return tuple(out)


def read(cls: type, table: Table, context: Context, renames: Mapping[str, str] | None = None,
         templates: Mapping[str, str] | None = None, placeholders: Mapping[str, Any] | None = None) -> Any:
    """Build `cls` from `table`; nested tables are read (and their unknown keys reported) here, the table's own by
    the caller's `table.done()`. `placeholders` stand in for required keys that are missing or wrong."""
    renames = renames or {}
    values: dict[str, Any] = {}
    for f in plan(cls):
        name = renames.get(f.name, f.key)
        if name is None:
            continue
        if f.kind == "inline":
            filled = {k: _fill(t, values) for k, t in f.templates.items()}
            values[f.name] = read(f.cls, table, context, f.inline, filled)
        elif f.kind == "table":
            sub = table.sub(name, f.required)
            values[f.name] = read(f.cls, sub, context)
            sub.done()
        elif f.kind == "array":
            values[f.name] = tuple(_read_entry(f.cls, entry, context) for entry in table.entries(name))
        elif name not in table.table and not f.required:  # the common case, kept cheap
            table.used.add(name)
            values[f.name] = f.factory() if f.factory else f.default
        else:
            made = templates.get(f.name) if templates else None
            values[f.name] = table.value(name, f.hint, _fallback(f, made, placeholders), f.required and made is None)
    obj = cls(**values)
    rule = context.rules.get(cls)
    return rule(obj, Scope(table, renames, context)) if rule else obj


def _fallback(f: Field, made: str | None, placeholders: Mapping[str, Any] | None) -> Any:
    """The value a key takes when it is missing or wrong."""
    if placeholders and f.name in placeholders:
        return placeholders[f.name]
    if made is not None:
        return made
    if f.required:  # the empty value of its type stands in (the problem is reported)
        return split(f.hint)[0]()
    return f.factory() if f.factory else f.default


def _read_entry(cls: type, entry: Table, context: Context) -> Any:
    obj = read(cls, entry, context)
    entry.done()
    return obj


def _fill(template: str, values: Mapping[str, Any]) -> str:
    """A template default with the entry's keys read so far filled in ("<name>"); {placeholders} stay."""
    for key, value in values.items():
        if isinstance(value, str):
            template = template.replace(f"<{key}>", value)
    return template


@cache
def hints(cls: type) -> dict[str, Any]:
    """The resolved annotations of a dataclass, with their msgspec `Meta`."""
    return get_type_hints(cls, include_extras=True)


@cache
def split(hint: Any) -> tuple[Any, tuple[msgspec.Meta, ...]]:
    """(the bare type, its Meta constraints) of an annotation."""
    if get_origin(hint) is Annotated:
        base, *metas = get_args(hint)
        return base, tuple(m for m in metas if isinstance(m, msgspec.Meta))
    return hint, ()


def extra(hint: Any) -> dict[str, Any]:
    """The merged `Meta.extra` of an annotation: our wording of problems and how TOML gives the value."""
    merged: dict[str, Any] = {}
    for meta in split(hint)[1]:
        merged.update(meta.extra or {})
    return merged


def _item_class(hint: Any) -> type | None:
    """The dataclass of an array of tables (`tuple[Rule, ...]`), else None."""
    base = split(hint)[0]
    if get_origin(base) is tuple:
        args = get_args(base)
        if len(args) == 2 and args[1] is Ellipsis and is_dataclass(args[0]) and isinstance(args[0], type):
            return args[0]
    return None


class _Wrong(Exception):
    """A value does not fit its key; the message is the problem's text. Never leaves this module (ConfigError does)."""


@cache
def shape(hint: Any) -> str:
    """How TOML gives a value of this type: scalar, strings (or one string), pairs or mapping (a table), tables."""
    base = split(hint)[0]
    origin, args = get_origin(base), get_args(base)
    if base in TEXT_TYPES:
        return "scalar"
    if origin is Mapping or origin is dict:
        return "mapping"
    item = split(args[0])[0]
    if item is str:
        return "strings"
    return "pairs" if get_origin(item) is tuple else "tables"


def _convert(raw: Any, hint: Any, entry_problem: Callable[[str, str], None]) -> Any:
    """Convert one TOML value with msgspec; raise _Wrong worded from the schema, or report per entry of a table."""
    kind = shape(hint)
    how = extra(hint)
    if kind == "scalar":
        return _scalar(raw, hint)
    if kind == "strings":
        items = [raw] if isinstance(raw, str) else raw  # one string is an array of one
        if not isinstance(items, list):
            raise _Wrong(f"must be list or str, got {type(raw).__name__}")
        value = _msgspec(items, hint, how.get("problem", "must be a list of strings"))
        return tuple(v.lower() for v in value) if how.get("lower") else value
    if kind == "tables":  # an array of inline tables
        if not isinstance(raw, list):
            raise _Wrong(f"must be list, got {type(raw).__name__}")
        return _msgspec(raw, hint, how.get("problem", "must be a list of tables"))
    if not isinstance(raw, dict):
        raise _Wrong(f"must be dict, got {type(raw).__name__}")
    return _table(raw, hint, entry_problem, how)


def _table(raw: dict[str, Any], hint: Any, entry_problem: Callable[[str, str], None], how: Mapping[str, Any]) -> Any:
    """A TOML table into (key, value...) tuples or a mapping. With an "entry_problem" a bad entry is named and left
    out alone; without, it makes the whole value wrong."""
    pairs = shape(hint) == "pairs"
    args = get_args(split(hint)[0])
    item = args[0] if pairs else args[1]
    as_text = pairs and split(item)[0] == tuple[str, str]  # text pairs take any TOML value as its text
    entries: list[tuple[str, Any]] = []
    for key, value in raw.items():
        name = str(key).lower() if how.get("lower") else str(key)
        shown = str(value) if as_text else value
        entries.append((name, ((name, *shown) if isinstance(shown, list) else (name, shown)) if pairs else shown))
    kept = []
    for (name, value), given in zip(entries, raw.values(), strict=True):
        try:
            kept.append((name, _msgspec(value, item, how.get("problem", ""))))
        except _Wrong:
            if "entry_problem" not in how:
                raise
            entry_problem(name, how["entry_problem"].format(value=given))
    return tuple(v for _, v in kept) if pairs else dict(kept)


def _scalar(raw: Any, hint: Any) -> Any:
    base, metas = split(hint)
    how = extra(hint)
    if how.get("int_as_text") and isinstance(raw, int):
        raw = str(raw)
    if how.get("lower") and isinstance(raw, str):
        raw = raw.lower()
    if isinstance(raw, bool) and base in (int, float):
        raise _Wrong("must be a number, not a boolean")
    try:
        value = msgspec.convert(raw, base)
    except msgspec.ValidationError:
        kinds = "str or int" if how.get("int_as_text") else TEXT_TYPES[base]
        raise _Wrong(f"must be {kinds}, got {type(raw).__name__}") from None
    if isinstance(value, float) and not math.isfinite(value):
        # TOML has inf and nan; neither is a size, a count or a time.
        raise _Wrong("must be a finite number")
    for meta in metas:
        try:
            msgspec.convert(value, Annotated[base, meta])
        except msgspec.ValidationError:
            raise _Wrong(_bound_problem(value, meta, how)) from None
    return value


def _msgspec(raw: Any, hint: Any, problem: str) -> Any:
    try:
        return msgspec.convert(raw, hint)
    except msgspec.ValidationError:
        raise _Wrong(problem) from None


def _bound_problem(value: Any, meta: msgspec.Meta, how: Mapping[str, Any]) -> str:
    """Our wording of the bound `value` broke: the schema's own, or one made from the bound."""
    low = (meta.gt is not None and not value > meta.gt) or (meta.ge is not None and not value >= meta.ge)
    high = (meta.lt is not None and not value < meta.lt) or (meta.le is not None and not value <= meta.le)
    side = "low" if low else "high" if high else ""
    text = how.get("problem") or how.get(side)
    if text:
        return str(text).format(value=value)
    if meta.min_length == 1 and not value:
        return "must not be empty"
    if low:
        return f"must be greater than {_number(meta.gt)}" if meta.gt is not None else \
            f"must be at least {_number(meta.ge)}"
    if high:
        return f"must be less than {_number(meta.lt)}" if meta.lt is not None else f"must be at most {_number(meta.le)}"
    return f"must match {meta.pattern}" if meta.pattern else "is not valid"


def _number(bound: Any) -> str:
    return f"{bound:g}" if isinstance(bound, float) else str(bound)


class Key(NamedTuple):
    """One TOML key of the schema, for docs and tests."""

    name: str  # section-qualified: "upstream.share.devices", "decoding.rule.decoder", "edge.id"
    table: str  # its table as a file writes it: "[upstream.share]", "[[decoding.rule]]", "[edge]"
    hint: Any
    default: Any  # MISSING when it has none (a required key, or one made at load time like edge.id)
    required: bool
    description: str


def keys(cls: type, prefix: str = "", table: str = "", renames: Mapping[str, str] | None = None,
         templates: Mapping[str, str] | None = None) -> Iterator[Key]:
    """Every TOML key of `cls` and the tables below it, in field order."""
    for f in plan(cls):
        name = (renames or {}).get(f.name, f.key)
        if name is None:
            continue
        full = f"{prefix}.{name}" if prefix else name
        if f.kind == "inline":
            yield from keys(f.cls, prefix, table, f.inline, f.templates)
        elif f.kind == "table":
            yield from keys(f.cls, full, f"[{full}]")
        elif f.kind == "array":
            yield from keys(f.cls, full, f"[[{full}]]")
        else:
            made = (templates or {}).get(f.name)
            default = made if made is not None else f.factory() if f.factory else f.default
            description = " ".join(m.description for m in split(f.hint)[1] if m.description)
            yield Key(full, table or f"[{full.rpartition('.')[0]}]", f.hint, default, f.required and made is None,
                      description)
