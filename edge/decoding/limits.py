"""Size and shape bounds on what codecs and ChirpStack hand the normaliser, checked before anything walks it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from edge.errors import OverLimit

# The bounds of one decode. A real codec returns a few dozen values and an error or two; these
# are far above that and far below what hurts a Raspberry Pi (memory, a 1 GB buffer, the log).
MAX_DEPTH = 32  # nesting of objects and lists in `data`
MAX_LEAVES = 1000  # scalar values in `data`, lists included
MAX_DATA_BYTES = 64 * 1024  # about what `data` takes as JSON (keys and strings by length, 8 bytes a number)
MAX_MESSAGES = 20  # errors or warnings one decode may return
MAX_MESSAGE_CHARS = 256  # length of one error or warning
MAX_REASON_CHARS = 1024  # the stored reason of a failed decode or a malformed message, all in

_SCALARS = frozenset({str, int, float, bool, type(None)})
# Integers a JSON encoder (orjson) and SQLite take: 64 bits.
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1


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
               max_bytes: int = MAX_DATA_BYTES, what: str = "data") -> Shape:
    """Check that `data` is JSON-shaped and within the bounds, without recursion.

    JSON-shaped: mappings with string keys, lists or tuples, strings, floats (non-finite ones
    too), 64-bit integers, booleans and None. Walked iteratively and stopped at the first bound
    crossed, so a hostile value costs at most about `max_leaves` steps; nothing is serialised
    first (orjson would build the whole output: `[big_string] * 100_000` from a buggy decoder
    could take gigabytes before any bound is seen).

    Raises:
        OverLimit: a bound is crossed or a value is of another type.
    """
    if type(data) is dict and len(data) <= max_leaves:
        # The usual codec output, a flat object of scalars: orjson (in Rust) then checks keys,
        # integer range and Unicode, and its length is the size. Serialised only once the strings
        # are known to fit: one long string referenced by every key must not be written out 1,000
        # times first.
        strings = 0
        for child in data.values():
            kind = type(child)
            if kind is str:
                strings += len(child)
            elif kind not in _SCALARS:
                break
        else:
            if strings > max_bytes:
                raise OverLimit(f"{what} is larger than {max_bytes // 1024} KB")
            try:
                size = len(orjson.dumps(data))
            except orjson.JSONEncodeError:
                pass  # the walk below says exactly what is wrong
            else:
                if size > max_bytes:
                    raise OverLimit(f"{what} is larger than {max_bytes // 1024} KB")
                return Shape(len(data), size)
    leaves = 0
    size = 0
    stack: list[tuple[Any, int]] = [(data, 0)]
    while stack:
        value, depth = stack.pop()
        if type(value) is dict or isinstance(value, Mapping):
            keys: Any = value.keys()
            children: Any = value.values()
        elif isinstance(value, list | tuple):
            keys = ()
            children = value
        else:
            # Only the root can be a scalar here; children are handled inline below.
            leaves, size = _leaf(value, leaves, size, what)
            continue
        if depth >= max_depth:
            raise OverLimit(f"{what} is nested deeper than {max_depth} levels")
        if len(value) > max_leaves:
            raise OverLimit(f"{what} has more than {max_leaves} values")
        size += 2 + len(value)
        for key in keys:
            if type(key) is not str:
                raise OverLimit(f"{what} has a key that is not a string ({type(key).__name__})")
            size += len(key) + 3
            if not key.isascii():
                _check_text(key, what)
        for child in children:
            kind = type(child)
            if kind is float or kind is bool or child is None:
                leaves += 1
                size += 8
            elif kind is str:
                leaves += 1
                size += len(child) + 2
                if not child.isascii():
                    if size > max_bytes:
                        break  # reported below, before scanning a long string
                    _check_text(child, what)
            elif kind is int:
                if not _INT_MIN <= child <= _INT_MAX:
                    raise OverLimit(f"{what} has an integer beyond 64 bits")
                leaves += 1
                size += 8
            else:
                stack.append((child, depth + 1))
        # One container adds at most max_leaves of each, so checking per container keeps the
        # work bounded and the loop above lean.
        if leaves > max_leaves or len(stack) > max_leaves:
            raise OverLimit(f"{what} has more than {max_leaves} values")
        if size > max_bytes:
            raise OverLimit(f"{what} is larger than {max_bytes // 1024} KB")
    return Shape(leaves, size)


def _leaf(value: Any, leaves: int, size: int, what: str) -> tuple[int, int]:
    """Count one scalar (any type check the inline path of check_data skipped)."""
    if isinstance(value, str):
        _check_text(value, what)
        return leaves + 1, size + len(value) + 2
    if isinstance(value, bool) or value is None:
        return leaves + 1, size + 5
    if isinstance(value, int):
        if not _INT_MIN <= value <= _INT_MAX:
            raise OverLimit(f"{what} has an integer beyond 64 bits")
        return leaves + 1, size + 8
    if isinstance(value, float):
        return leaves + 1, size + 8
    raise OverLimit(f"{what} has a value of type {type(value).__name__}, not a JSON type")


def check_messages(messages: Any, what: str) -> list[str]:
    """A codec's `errors` or `warnings` as a list of strings, each at most MAX_MESSAGE_CHARS.

    Raises:
        OverLimit: not a list, more than MAX_MESSAGES entries, or an entry that is not a string
            or is longer than MAX_MESSAGE_CHARS.
    """
    if not messages and (messages is None or type(messages) is list):
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


def reason(exc: BaseException) -> str:
    """An exception as a bounded one-line reason (its text may quote foreign data)."""
    try:
        text = f"{type(exc).__name__}: {exc}"
    except Exception:  # noqa: BLE001 - str() of a hostile exception argument may itself fail
        text = type(exc).__name__
    return truncate(text.replace("\n", " "), MAX_REASON_CHARS)
