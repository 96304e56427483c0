"""Field paths of codec output (`a.b[2].c`, patterns with `[*]` and `*`): parsing, formatting, matching."""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase

# One step of a field path: a key (str) or a list index (int). Patterns add two wildcards.
Step = str | int
ANY_INDEX = "[*]"
ANY_KEY = "*"


def format_path(steps: Sequence[Step]) -> str:
    """`a.b[2].c` from ('a', 'b', 2, 'c'); a key containing '.', '[', ']' or '`' (or empty) is backtick-quoted."""
    out: list[str] = []
    for step in steps:
        if isinstance(step, int):
            out.append(f"[{step}]")
            continue
        text = f"`{step}`" if any(c in step for c in ".[]`") or step == "" else step
        out.append(f".{text}" if out else text)
    return "".join(out)


def parse_path(text: str) -> tuple[Step, ...]:
    """The steps of a path or pattern: keys, int indices, ANY_INDEX for `[*]`, ANY_KEY for `*`.

    Raises:
        ValueError: unbalanced backticks or brackets, an empty key, or a bad index.
    """
    steps: list[Step] = []
    i, n = 0, len(text)
    expect_key = True
    while i < n:
        ch = text[i]
        if ch == "[":
            end = text.find("]", i)
            if end < 0:
                raise ValueError(f"{text!r}: '[' without ']'")
            inner = text[i + 1 : end].strip()
            if inner == "*":
                steps.append(ANY_INDEX)
            elif inner.isdigit():
                steps.append(int(inner))
            else:
                raise ValueError(f"{text!r}: list index must be a number or '*', not {inner!r}")
            i = end + 1
            expect_key = False
            continue
        if ch == ".":
            if expect_key:
                raise ValueError(f"{text!r}: empty key")
            i += 1
            expect_key = True
            continue
        if not expect_key:
            raise ValueError(f"{text!r}: '.' or '[' expected at {i}")
        if ch == "`":
            end = text.find("`", i + 1)
            if end < 0:
                raise ValueError(f"{text!r}: unbalanced backtick")
            steps.append(text[i + 1 : end])
            i = end + 1
        else:
            j = i
            while j < n and text[j] not in ".[":
                if text[j] in "]`":
                    raise ValueError(f"{text!r}: unexpected {text[j]!r}")
                j += 1
            key = text[i:j]
            steps.append(ANY_KEY if key == "*" else key)
            i = j
        expect_key = False
    if expect_key:
        raise ValueError(f"{text!r}: empty key")
    return tuple(steps)


def matches(pattern: tuple[Step, ...], path: tuple[Step, ...]) -> bool:
    """True when a path of the pattern's length matches it step by step (wildcards and key globs)."""
    for want, got in zip(pattern, path, strict=True):
        if want == ANY_INDEX:
            if not isinstance(got, int):
                return False
        elif want == ANY_KEY:
            if not isinstance(got, str):
                return False
        elif isinstance(want, str) and "*" in want:
            if not isinstance(got, str) or not fnmatchcase(got, want):
                return False
        elif want != got:
            return False
    return True


def is_wild(step: Step) -> bool:
    """A step that matches more than one key or index: `[*]`, `*`, or a key glob like `temperature_*`."""
    return step == ANY_INDEX or (isinstance(step, str) and "*" in step)


def weight(step: Step) -> int:
    """How exact a step is: an exact step (2) beats a key glob like `temperature_*` (1), which beats a wildcard (0)."""
    if step == ANY_INDEX or step == ANY_KEY:
        return 0
    return 1 if isinstance(step, str) and "*" in step else 2
