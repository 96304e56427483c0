"""Logging: the rate limit on warnings and errors, through a real logger and handler."""

from __future__ import annotations

import logging

from edge.telemetry import RateLimit


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _logger(limit: RateLimit) -> tuple[logging.Logger, _Lines]:
    handler = _Lines()
    handler.addFilter(limit)
    logger = logging.getLogger(f"edge.test.ratelimit.{id(limit)}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, handler


def test_telemetry_rate_limit_holds_back_a_flood_and_says_how_many():
    limit = RateLimit(burst=3, window_s=60)
    logger, out = _logger(limit)
    for i in range(50):
        logger.warning("Malformed message on %s stored for inspection: %s", f"t/{i}", "bad")
    logger.error("Another template at 100%")
    assert out.lines == [f"Malformed message on t/{i} stored for inspection: bad" for i in range(3)] + [
        "Another template at 100%"]
    # A new window: the first line through says how many the last one held back.
    limit.window_s = 0
    logger.warning("Malformed message on %s stored for inspection: %s", "t/50", "bad")
    assert out.lines[-1] == ("Malformed message on t/50 stored for inspection: bad"
                             " (47 more like this were held back in the last 0 s)")


def test_telemetry_rate_limit_escapes_a_template_without_args():
    limit = RateLimit(burst=1, window_s=60)
    logger, out = _logger(limit)
    for _ in range(3):
        logger.warning("Disk 100% full")
    limit.window_s = 0
    logger.warning("Disk 100% full")
    assert out.lines == ["Disk 100% full", "Disk 100% full (2 more like this were held back in the last 0 s)"]


def test_telemetry_rate_limit_never_holds_back_debug_or_info():
    logger, out = _logger(RateLimit(burst=1, window_s=60))
    for _ in range(5):
        logger.debug("per-uplink %s", "detail")
        logger.info("lifecycle")
    assert len(out.lines) == 10
