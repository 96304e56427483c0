"""Logging setup: one line per event, levels as in Vector's STYLE (ERROR = data loss or act now)."""

from __future__ import annotations

import logging
import os
import sys


def setup_logging(level: str = "info") -> None:
    """Log to stderr (the journal under systemd, which adds its own timestamps)."""
    under_journal = bool(os.environ.get("JOURNAL_STREAM"))
    fmt = "%(levelname)s %(name)s: %(message)s" if under_journal else "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), format=fmt, stream=sys.stderr,
                        force=True)
    # paho logs nothing useful at INFO; our own reconnect messages say what matters.
    logging.getLogger("paho").setLevel(logging.WARNING)
