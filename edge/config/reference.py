"""Writes docs/config.md, the reference of every configuration key, from the schema: python -m edge.config.reference"""

import re
from collections.abc import Iterable
from dataclasses import MISSING
from typing import Any

from edge.config.schema import Config
from edge.config.sections import MAX_WAIT_MS, MAX_WAIT_S, MAX_WAIT_WHOLE_S
from edge.config.tables import Key, extra, keys, shape, split

_CHOICE = re.compile(r"\^\((.*)\)\\Z")  # a pattern made by sections.choice()
_BARE = re.compile(r"[A-Za-z0-9_-]+")  # a TOML key that needs no quotes


def toml_value(key: Key) -> Any:
    """The key's default as TOML gives it: tuples as arrays, (key, value...) tuples and mappings as tables."""
    kind = shape(key.hint)
    if kind == "pairs":
        return {k: rest[0] if len(rest) == 1 else list(rest) for k, *rest in key.default}
    if kind == "mapping":
        return dict(key.default)
    return list(key.default) if isinstance(key.default, tuple) else key.default


def literal(value: Any) -> str:
    """`value` written as TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(literal(v) for v in value) + "]"
    if isinstance(value, dict):
        pairs = [f"{k if _BARE.fullmatch(k) else literal(k)} = {literal(v)}" for k, v in value.items()]
        return "{ " + ", ".join(pairs) + " }" if pairs else "{}"
    return repr(value)


def _kind(key: Key) -> str:
    base = split(key.hint)[0]
    return {"scalar": getattr(base, "__name__", str(base)), "strings": "array of strings", "pairs": "table",
            "mapping": "table", "tables": "array of tables"}[shape(key.hint)]


def _bounds(key: Key) -> str:
    """The key's bounds as a reader wants them: a range, or the values allowed."""
    out = []
    for meta in split(key.hint)[1]:
        if meta.ge is not None and meta.le is not None:
            out.append(f"{_number(meta.ge)} to {_number(meta.le)}")
        else:
            low = f"> {_number(meta.gt)}" if meta.gt is not None else f"≥ {_number(meta.ge)}" if meta.ge is not None \
                else ""
            high = f"< {_number(meta.lt)}" if meta.lt is not None else f"≤ {_number(meta.le)}" if meta.le is not None \
                else ""
            if low or high:
                out.append(", ".join(b for b in (low, high) if b))
        if meta.min_length:
            out.append("not empty")
        if meta.pattern and (choice := _CHOICE.fullmatch(meta.pattern)):
            values = [re.sub(r"\\(.)", r"\1", v) for v in re.split(r"(?<!\\)\|", choice.group(1))]
            out.append(" or ".join(f"`{v}`" for v in values))
        elif meta.pattern:
            out.append(str(extra(key.hint).get("problem", f"matches `{meta.pattern}`")))
    if not out and "problem" in extra(key.hint):
        out.append(str(extra(key.hint)["problem"]))
    return "; ".join(out)


def _number(bound: float) -> str:
    """A bound; the OS's longest wait is named, not given (it differs between 32- and 64-bit systems)."""
    waits = {MAX_WAIT_S: "the longest thread wait", MAX_WAIT_WHOLE_S: "the longest thread wait",
             MAX_WAIT_MS: "the longest thread wait in ms"}
    return waits.get(bound, f"{bound:g}" if isinstance(bound, float) else str(bound))


def _default(key: Key) -> str:
    if key.default is MISSING:
        return "required" if key.required else "—"
    return f"`{literal(toml_value(key))}`"


def _text(text: str) -> str:
    """Prose for a Markdown table: <placeholders> shown, not taken for HTML tags."""
    return text.replace("<", "\\<").replace("|", "\\|")


def markdown(schema: Iterable[Key] | None = None) -> str:
    """docs/config.md: one table per TOML table, in the order of the schema."""
    tables: dict[str, list[Key]] = {}
    for key in keys(Config) if schema is None else schema:
        tables.setdefault(key.table, []).append(key)
    lines = ["# Configuration reference", "",
             "Every key of `edge.toml` (and its drop-ins), generated from the schema in `edge/config/` by",
             "`python -m edge.config.reference > docs/config.md`; `tests/test_docs.py` keeps it current.",
             "`deploy/edge.toml.example` explains the keys at length. Numbers are checked against the bounds",
             "by `edge validate`; `<name>` in a default is the upstream's name."]
    for table, members in tables.items():
        lines += ["", f"## `{table}`", "", "| key | type | default | bounds | description |", "|---|---|---|---|---|"]
        for key in members:
            cells = (f"`{key.name.rpartition('.')[2]}`", _kind(key), _default(key), _text(_bounds(key)),
                     _text(key.description))
            lines.append(f"| {' | '.join(cells)} |")
    return "\n".join(lines).replace("|  |", "| |") + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
