"""Log lines and technician views escape what comes from outside: one record is one line, no terminal control."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
from pathlib import Path

from edge.cli.text import clean
from edge.telemetry import EscapingFormatter, JournalHandler, escape_control

FORGED = "2026-12-05 10:00:00,000 ERROR edge.pipeline: forged"


def _record(msg: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("bad\n" + FORGED)
        except ValueError:
            exc_info = sys.exc_info()
    return logging.LogRecord("edge.test", logging.WARNING, __file__, 1, msg, args, exc_info)


def test_log_line_with_a_newline_stays_one_line() -> None:
    formatter = EscapingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    line = formatter.format(_record("Decoder %s failed", "tag\n" + FORGED + "\r\x1b[2J\x00\u2028\x9b31m"))
    assert "\n" not in line and "\r" not in line and "\x1b" not in line and "\x00" not in line
    assert "\u2028" not in line and "\x9b" not in line
    assert line.endswith("Decoder tag\\n" + FORGED + "\\r\\x1b[2J\\x00\\u2028\\x9b31m failed")


def test_log_traceback_lines_are_indented_and_escaped() -> None:
    formatter = EscapingFormatter("%(levelname)s %(name)s: %(message)s")
    lines = formatter.format(_record("boom", exc=True)).splitlines()
    assert lines[0] == "WARNING edge.test: boom"
    assert all(line.startswith("    ") for line in lines[1:]), lines


def test_log_very_long_message_is_cut() -> None:
    line = EscapingFormatter("%(message)s").format(_record("%s", "x" * 100_000))
    assert len(line) < 4100 and line.endswith("(96000 more characters)")


def test_log_journal_message_is_escaped(tmp_path: Path) -> None:
    path = str(tmp_path / "journal.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    handler = JournalHandler(path)
    try:
        record = _record("name %s", "a\nb\x1b[31m")
        record.dev_eui = "x\ny"
        handler.emit(record)
        data = server.recv(65536)
    finally:
        handler.close()
        server.close()
    assert b"MESSAGE=name a\\nb\\x1b[31m\n" in data and b"DEV_EUI=x\\ny\n" in data


def test_log_stderr_of_a_real_process_has_one_line_per_record(tmp_path: Path) -> None:
    code = ("from edge.telemetry import setup_logging; import logging; setup_logging();"
            f"logging.getLogger('edge').warning('tag %s', 'evil\\n' + {FORGED!r})")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent, env={"PYTHONPATH": "."})
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].endswith("tag evil\\n" + FORGED)


def test_terminal_text_strips_control_sequences() -> None:
    assert clean("\x1b[31mred\x1b[0m") == "red"
    assert clean("title\x1b]0;pwned\x07 after") == "title after"
    assert clean("link \x1b]8;;http://evil\x1b\\x\x1b]8;;\x1b\\") == "link x"
    assert clean("reset\x1bc!") == "reset!"
    assert clean("8-bit \x9b2J csi") == "8-bit  csi"
    assert clean("line\nforged") == "line\\nforged"
    assert clean("cut \x1b[3") == "cut 3"  # a cut sequence is still removed
    assert clean("unterminated \x1b]0;title") == "unterminated "
    assert clean("plain ümlaut ✓") == "plain ümlaut ✓"
    assert escape_control("ok") == "ok"
