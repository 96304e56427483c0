"""Makes text from outside safe for a technician's terminal: one helper every human-readable view uses."""

from __future__ import annotations

import re

import click

from edge.telemetry import escape_control

# Terminal control sequences, 7-bit and 8-bit forms (ECMA-48 §5.4, §8.3): CSI (colours, cursor
# moves, screen clears), OSC (window titles, hyperlinks, clipboard writes), DCS/SOS/PM/APC strings,
# and two-character escapes (ESC c resets the terminal). An unterminated string runs to the end.
_SEQUENCE = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]"
    r"|(?:\x1b\]|\x9d).*?(?:\x07|\x1b\\|\x9c|$)"
    r"|(?:\x1b[PX^_]|[\x90\x98\x9e\x9f]).*?(?:\x1b\\|\x9c|$)"
    r"|\x1b[ -/]*[0-~]",
    re.DOTALL)


def clean(text: str) -> str:
    """`text` without terminal control sequences and with every other control character escaped (one line)."""
    return escape_control(_SEQUENCE.sub("", text))


def echo(line: str, err: bool = False) -> None:
    """Print one line of a human-readable view, cleaned (our own lines never hold control characters)."""
    click.echo(clean(line), err=err)
