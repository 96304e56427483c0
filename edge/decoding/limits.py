"""Size and shape bounds on what codecs and ChirpStack hand the normaliser, checked before anything walks it."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

# The bounds of one decode. A real codec returns a few dozen values and an error or two; these
# are far above that and far below what hurts a Raspberry Pi (memory, a 1 GB buffer, the log).
MAX_DEPTH = 32  # nesting of objects and lists in `data`
MAX_LEAVES = 1000  # scalar values in `data`, lists included
MAX_DATA_BYTES = 64 * 1024  # about what `data` takes as JSON (keys and strings by length, 8 bytes a number)
MAX_MESSAGES = 20  # errors or warnings one decode may return
MAX_MESSAGE_CHARS = 256  # length of one error or warning
MAX_REASON_CHARS = 1024  # the stored reason of a failed decode or a malformed message, all in

# Integers a JSON encoder (orjson) and SQLite take: 64 bits.
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1


class OverLimit(ValueError):
    """Foreign data is beyond a bound; the text says which (and never quotes the data)."""


@dataclass(frozen=True, slots=True)
class Shape:
    """What check_data found: scalar values and the approximate JSON size."""

    leaves: int
    size: int


def truncate(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters, marked when it was cut."""
    if len(text) <= limit:
        return text
    return text[:max(0, limit - 14)] + f" …(+{len(text) - max(0, limit - 14)} chars)"


def check_data(data: Any, *, max_depth: int = MAX_DEPTH, max_leaves: int = MAX_LEAVES,
               max_bytes: int = MAX_DATA_BYTES, what: str = "data") -> None:
    """Check that `data` is JSON-shaped and within the bounds (see walk_data), fast for usual output.

    orjson serialises it first (in Rust: it refuses non-string keys, integers beyond 64 bits, lone
    surrogates, most non-JSON types, and nesting beyond 255); the bytes then bound the size exactly
    and, by their brackets and commas, depth and count. Only output that may be near a bound is
    walked value by value.

    Raises:
        OverLimit: a bound is crossed or a value is of another type.
    """
    try:
        blob = orjson.dumps(data)
    except orjson.JSONEncodeError as exc:
        walk_data(data, max_depth=max_depth, max_leaves=max_leaves, max_bytes=max_bytes, what=what)
        raise OverLimit(f"{what} cannot be represented as JSON: {truncate(str(exc), 120)}") from None
    if len(blob) > max_bytes:
        raise OverLimit(f"{what} is larger than {max_bytes // 1024} KB")
    brackets = blob.count(b"{") + blob.count(b"[")
    if brackets > max_depth or brackets + blob.count(b",") >= max_leaves:
        walk_data(data, max_depth=max_depth, max_leaves=max_leaves, max_bytes=max_bytes, what=what)


def walk_data(data: Any, *, max_depth: int = MAX_DEPTH, max_leaves: int = MAX_LEAVES,
              max_bytes: int = MAX_DATA_BYTES, what: str = "data") -> Shape:
    """Check that `data` is JSON-shaped and within the bounds, without recursion.

    JSON-shaped: mappings with string keys, lists or tuples, strings, finite or non-finite floats,
    64-bit integers, booleans and None. Walked iteratively and stopped at the first bound crossed,
    so a hostile value costs at most `max_leaves` steps.

    Raises:
        OverLimit: a bound is crossed or a value is of another type.
    """
    leaves = 0
    size = 0
    # (value, depth) pairs still to look at; containers push their children.
    stack: list[tuple[Any, int]] = [(data, 0)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, Mapping):
            if depth >= max_depth:
                raise OverLimit(f"{what} is nested deeper than {max_depth} levels")
            size += 2
            for key, child in value.items():
                if not isinstance(key, str):
                    raise OverLimit(f"{what} has a key that is not a string ({type(key).__name__})")
                _check_text(key, what)
                size += len(key) + 4
                stack.append((child, depth + 1))
                if len(stack) > max_leaves + max_depth:
                    raise OverLimit(f"{what} has more than {max_leaves} values")
        elif isinstance(value, list | tuple):
            if depth >= max_depth:
                raise OverLimit(f"{what} is nested deeper than {max_depth} levels")
            size += 2
            for child in value:
                size += 1
                stack.append((child, depth + 1))
                if len(stack) > max_leaves + max_depth:
                    raise OverLimit(f"{what} has more than {max_leaves} values")
        else:
            leaves += 1
            if leaves > max_leaves:
                raise OverLimit(f"{what} has more than {max_leaves} values")
            if isinstance(value, str):
                size += len(value) + 2
                _check_text(value, what)
            elif isinstance(value, bool) or value is None:
                size += 5
            elif isinstance(value, int):
                if not _INT_MIN <= value <= _INT_MAX:
                    raise OverLimit(f"{what} has an integer beyond 64 bits")
                size += 8
            elif isinstance(value, float):
                size += 8 if math.isfinite(value) else 4
            else:
                raise OverLimit(f"{what} has a value of type {type(value).__name__}, not a JSON type")
        if size > max_bytes:
            raise OverLimit(f"{what} is larger than {max_bytes // 1024} KB")
    return Shape(leaves, size)


def check_messages(messages: Any, what: str) -> list[str]:
    """A codec's `errors` or `warnings` as a list of strings, each at most MAX_MESSAGE_CHARS.

    Raises:
        OverLimit: not a list, more than MAX_MESSAGES entries, or an entry that is not a string
            or is longer than MAX_MESSAGE_CHARS.
    """
    if messages is None:
        return []
    if isinstance(messages, str) or not isinstance(messages, Sequence):
        raise OverLimit(f"{what} is not a list")
    if len(messages) > MAX_MESSAGES:
        raise OverLimit(f"{len(messages)} {what} (at most {MAX_MESSAGES})")
    out: list[str] = []
    for message in messages:
        if not isinstance(message, str):
            raise OverLimit(f"one of the {what} is a {type(message).__name__}, not a string")
        if len(message) > MAX_MESSAGE_CHARS:
            raise OverLimit(f"one of the {what} is {len(message)} characters long (at most {MAX_MESSAGE_CHARS})")
        _check_text(message, what)
        out.append(message)
    return out


def _check_text(text: str, what: str) -> None:
    # A lone surrogate (JSON "\\ud800", which a JS codec's output may carry) cannot be stored
    # or sent as UTF-8; ASCII, by far the common case, is checked without encoding.
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise OverLimit(f"{what} has a string that is not valid Unicode (a lone surrogate)") from None


def summarise_messages(messages: Any, what: str = "errors") -> str:
    """One bounded line for a codec's errors, also when they are over the caps (for the stored reason)."""
    if isinstance(messages, str):
        return truncate(messages, MAX_REASON_CHARS)
    if not isinstance(messages, Sequence):
        return f"{what} of type {type(messages).__name__}"
    shown: list[str] = []
    for message in list(messages[:MAX_MESSAGES]) if len(messages) > MAX_MESSAGES else messages:
        shown.append(truncate(message, MAX_MESSAGE_CHARS).encode("utf-8", "replace").decode("utf-8")
                     if isinstance(message, str) else f"<{type(message).__name__}>")
    more = f" (and {len(messages) - MAX_MESSAGES} more {what})" if len(messages) > MAX_MESSAGES else ""
    return truncate("; ".join(shown), MAX_REASON_CHARS - len(more)) + more
