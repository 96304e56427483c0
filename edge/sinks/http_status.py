"""What an HTTP answer means for the message it answers: accepted, kept for a retry (and how long), or rejected."""

from __future__ import annotations

import email.utils
import time
from datetime import UTC

import httpx

# The part of a response body kept for the dead-letter store and the log.
EXCERPT_CHARS = 500

# Statuses that mean "try again later" (RFC 9110 §15.5.9, RFC 8470 §5.2, RFC 6585 §4).
_TRANSIENT = frozenset({408, 429})
# Every other 4xx is the destination refusing this message: it goes to the dead-letter store. A 401,
# 403, 404 or 415 usually means every message will get the same answer; the store is capped to a
# share of the buffer (edge.buffer.store.DEAD_LETTER_SHARE) and the operator replays after the fix.


def classify(status: int) -> str:
    """What an HTTP status means for the message: "accepted", "retry" or "rejected".

    Args:
        status: the response status code.

    Returns:
        "accepted" for 2xx; "retry" for 408, 429, 5xx and 3xx; "rejected" for every other status
        (4xx: the dead-letter table keeps them for the operator to inspect and replay).
    """
    if 200 <= status < 300:
        return "accepted"
    if status in _TRANSIENT or status >= 500 or 300 <= status < 400:
        return "retry"
    return "rejected"


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """The delay a Retry-After header asks for (RFC 9110 §10.2.3), or None if absent or unreadable.

    Args:
        value: the header, delta-seconds ("120") or an HTTP date ("Wed, 21 Oct 2026 07:28:00 GMT").
        now: the current POSIX time, for tests; the wall clock when None.

    Returns:
        Seconds to wait, never negative.
    """
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)  # RFC 9110 dates are GMT
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


def body_excerpt(response: httpx.Response) -> str:
    """The start of a response's body (EXCERPT_CHARS), as text where it decodes, for the log and dead letters."""
    try:
        text = response.text
    except (UnicodeDecodeError, LookupError):
        text = repr(response.content[:EXCERPT_CHARS])
    return text[:EXCERPT_CHARS]
