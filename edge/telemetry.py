"""Logging setup: to the systemd journal with structured fields when run by systemd, else to stderr.

Levels as in Vector's STYLE: ERROR means data loss or an operator must act, WARNING something
unexpected that was recovered, INFO lifecycle, DEBUG per-uplink detail. Log calls pass context
as `extra={"dev_eui": ..., "upstream": ..., "count": ...}`; the journal gets those as fields
(DEV_EUI=, UPSTREAM=, COUNT=), so `journalctl -u lorawan-edge UPSTREAM=city` filters by them.

Every line is escaped (EscapingFormatter, escape_control): a device name, tag or topic from outside
that holds a newline or a terminal escape cannot forge a second log line or drive the terminal of
whoever reads the log; the characters show as `\n`, `\x1b` and so on.

Warnings and errors are rate-limited per message template (RateLimit): a flood of malformed events
or a bound hit every batch must not fill the journal (or the SD card behind it), nor make journald
drop the service's other lines; the counters keep the full count, and the next line that gets
through says how many like it were held back.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import sys
import threading
import time
import traceback
from typing import Any

JOURNAL_SOCKET = "/run/systemd/journal/socket"
# Fields a log call may attach with `extra=`; anything else stays out of the journal entry.
FIELDS = ("dev_eui", "upstream", "count", "decoder", "topic", "batch")
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}
# C0 controls, DEL, C1 controls (0x9b is a one-character CSI on some terminals), the Unicode line
# and paragraph separators, and lone surrogates (which cannot be encoded).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_one(match: re.Match[str]) -> str:
    ch = match.group()
    named = _NAMED.get(ch)
    if named is not None:
        return named
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


# The longest message a record may have; beyond it the text is cut (with a note), so one foreign
# value cannot make a multi-megabyte journal entry.
MAX_MESSAGE = 4000


def _capped(text: str) -> str:
    if len(text) <= MAX_MESSAGE:
        return text
    return f"{text[:MAX_MESSAGE]}… ({len(text) - MAX_MESSAGE} more characters)"


def escape_control(text: str) -> str:
    """`text` with every control character written as a visible escape (`\\n`, `\\x1b`): one line, inert."""
    return _CONTROL.sub(_escape_one, text) if _CONTROL.search(text) else text


class EscapingFormatter(logging.Formatter):
    """Formats a record with its message escaped (escape_control), so one record is one line.

    A traceback stays readable: its lines are escaped one by one and indented, so no line of it can
    pass for a record of its own.
    """

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = _capped(escape_control(record.message))
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:
        text = super().formatException(ei)
        return "\n".join("    " + escape_control(line) for line in text.splitlines())

    def formatStack(self, stack_info: str) -> str:
        return "\n".join("    " + escape_control(line) for line in stack_info.splitlines())


class RateLimit(logging.Filter):
    """Lets at most `burst` WARNING+ records of one message template through per `window_s`."""

    def __init__(self, burst: int = 10, window_s: float = 60.0) -> None:
        super().__init__()
        self.burst = burst
        self.window_s = window_s
        # (logger, template, level) -> [window start, passed in window, held back since last pass]
        self._seen: dict[tuple[str, str, int], list[float]] = {}
        self._lock = threading.Lock()  # records come from the source, sink and registry threads

    def filter(self, record: logging.LogRecord) -> bool:
        """True to emit; a record that passes after some were held back says how many."""
        if record.levelno < logging.WARNING:
            return True  # DEBUG is per-uplink detail an operator switched on; INFO is lifecycle
        key = (record.name, str(record.msg), record.levelno)
        now = time.monotonic()
        with self._lock:
            state = self._seen.get(key)
            if state is None or now - state[0] >= self.window_s:
                held = int(state[2]) if state is not None else 0
                self._seen[key] = [now, 1.0, 0.0]
            elif state[1] < self.burst:
                state[1] += 1
                held = 0
            else:
                state[2] += 1
                return False
        if held and isinstance(record.args, tuple):
            # Without args the template was never %-formatted, so a literal % in it must be escaped now.
            template = str(record.msg) if record.args else str(record.msg).replace("%", "%%")
            record.msg = f"{template} (%d more like this were held back in the last %d s)"
            record.args = (*record.args, held, int(self.window_s))
        return True


class JournalHandler(logging.Handler):
    """Writes records to journald's native socket (sd_journal_send's wire format, no library needed)."""

    def __init__(self, path: str = JOURNAL_SOCKET, identifier: str = "lorawan-edge") -> None:
        super().__init__()
        self.path = path
        self.identifier = identifier
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

    @staticmethod
    def _field(name: str, value: object) -> bytes:
        data = str(value).encode("utf-8", "replace")
        if b"\n" in data:
            # Multi-line values use the binary form: name, newline, 64-bit little-endian length, data.
            return name.encode() + b"\n" + len(data).to_bytes(8, "little") + data + b"\n"
        return name.encode() + b"=" + data + b"\n"

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = _capped(escape_control(record.getMessage()))
            if record.exc_info:
                message += "\n" + "\n".join("    " + escape_control(line) for line in
                                             "".join(traceback.format_exception(*record.exc_info)).splitlines())
            parts = [
                self._field("MESSAGE", message),
                self._field("PRIORITY", _PRIORITY.get(record.levelno, 6)),
                self._field("SYSLOG_IDENTIFIER", self.identifier),
                self._field("LOGGER", record.name),
                self._field("CODE_FILE", record.pathname),
                self._field("CODE_LINE", record.lineno),
                self._field("CODE_FUNC", record.funcName),
            ]
            for key in FIELDS:
                if key in record.__dict__:
                    parts.append(self._field(key.upper(), escape_control(str(record.__dict__[key]))))
            self.sock.sendto(b"".join(parts), self.path)
        except (OSError, ValueError):
            self.handleError(record)

    def close(self) -> None:
        self.sock.close()
        super().close()


def setup_logging(level: str = "info") -> None:
    """The journal with structured fields under systemd (JOURNAL_STREAM is set), else stderr."""
    handler: logging.Handler
    path = os.environ.get("EDGE_JOURNAL_SOCKET", JOURNAL_SOCKET)
    if os.environ.get("JOURNAL_STREAM") and os.path.exists(path):
        handler = JournalHandler(path)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(EscapingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RateLimit())
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=[handler], force=True)
    # paho logs nothing useful at INFO; our own reconnect messages say what matters.
    logging.getLogger("paho").setLevel(logging.WARNING)
