"""Relays downlink commands that a destination sends on its command topic to ChirpStack's API.

Off unless an upstream sets `command_topic`. A command is accepted only for a DevEUI in that
upstream's `command_devices` allow-list *and* covered by its sharing rules, so a destination can
reach exactly the devices it is allowed to see. The format is strict (docs/records.md, "Downlink
commands"): a JSON object of at most MAX_COMMAND_BYTES with an `id` and a `time`, the DevEUI,
`fport` (an integer 1-223), exactly one of `hex` (at most MAX_PAYLOAD bytes) or `object` (a JSON
object of bounded depth and size, encoded by the device profile's codec in ChirpStack), and
optionally `confirmed` (a boolean). Nothing else is accepted: a typo must not silently change
what a device is told.

Refused, each with a WARNING: retained commands (a retained message is handed to every new
subscription, so it would be enqueued again at every reconnect), commands older than the
upstream's `command_max_age_s` (or dated in the future), a command id this upstream already sent
(a redelivery; ids are kept in the buffer, so this holds across restarts), and more than
`command_max_per_hour` commands for one device. Accepted commands are enqueued through
DeviceService.Enqueue on a worker thread, so a slow API never stalls delivery.
"""

from __future__ import annotations

import logging
import math
import queue
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import orjson

from edge.config import ChirpStackConfig
from edge.errors import CommandError, EdgeError

log = logging.getLogger(__name__)

MAX_PENDING = 1000  # commands waiting for the API; more are refused rather than buffered without bound
MAX_COMMAND_BYTES = 8192  # a command message larger than this is refused before it is parsed
MAX_PAYLOAD = 242  # the largest LoRaWAN application payload (EU868 DR7 / US915 DR4 and up: 242 bytes)
MAX_OBJECT_DEPTH = 8  # nesting of `object` (the top-level object is depth 1)
MAX_OBJECT_NODES = 256  # keys, values and array items of `object` together
MAX_ID_LENGTH = 64
FUTURE_SLACK_S = 60.0  # clock difference allowed between the destination and this gateway
FIELDS = frozenset({"id", "time", "dev_eui", "fport", "hex", "object", "confirmed"})
_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_EUI = re.compile(r"[0-9a-f]{16}")
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})*")


@dataclass(frozen=True, slots=True)
class Command:
    """One validated downlink command."""

    id: str
    time: float  # POSIX seconds, as the destination dated it
    dev_eui: str
    fport: int
    payload: bytes | None  # from `hex`
    object: dict[str, Any] | None  # from `object`
    confirmed: bool


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _command_time(value: Any) -> float:
    if _number(value):
        t = float(value)
    elif isinstance(value, str) and len(value) <= 40:
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise CommandError("time must be POSIX seconds or an RFC 3339 time") from None
        if parsed.tzinfo is None:
            raise CommandError("time must carry a time zone (e.g. 2026-12-05T10:00:00Z)")
        t = parsed.timestamp()
    else:
        raise CommandError("time must be POSIX seconds or an RFC 3339 time")
    if not math.isfinite(t):
        raise CommandError("time must be finite")
    return t


def _check_object(value: Any) -> None:
    """Depth and size of `object`, walked iteratively (no recursion on foreign data)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    nodes = 0
    while stack:
        item, depth = stack.pop()
        nodes += 1
        if nodes > MAX_OBJECT_NODES:
            raise CommandError(f"object has more than {MAX_OBJECT_NODES} keys and values")
        if isinstance(item, dict | list):
            if depth > MAX_OBJECT_DEPTH:
                raise CommandError(f"object is nested deeper than {MAX_OBJECT_DEPTH} levels")
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
        elif isinstance(item, float) and not math.isfinite(item):
            raise CommandError("object holds a number that is not finite")


def parse_command(payload: bytes) -> Command:
    """A command from its message, strictly (module doc); raises CommandError naming the first problem."""
    if len(payload) > MAX_COMMAND_BYTES:
        raise CommandError(f"the message is larger than {MAX_COMMAND_BYTES} bytes")
    try:
        raw = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise CommandError("not JSON (UTF-8)") from None
    if not isinstance(raw, dict):
        raise CommandError("must be a JSON object")
    unknown = set(raw) - FIELDS
    if unknown:
        raise CommandError(f"unknown field(s): {', '.join(sorted(repr(k[:32]) for k in unknown)[:5])}")
    for name in ("id", "time", "dev_eui", "fport"):
        if name not in raw:
            raise CommandError(f"{name} is required")
    command_id = raw["id"]
    if not isinstance(command_id, str) or not _ID.fullmatch(command_id):
        raise CommandError(f"id must be 1-{MAX_ID_LENGTH} letters, digits or . _ : -")
    when = _command_time(raw["time"])
    dev_eui = raw["dev_eui"]
    if not isinstance(dev_eui, str) or not _EUI.fullmatch(dev_eui.lower()):
        raise CommandError("dev_eui must be 16 hex digits")
    fport = raw["fport"]
    # bool is an int in Python; `true` is not a port.
    if not isinstance(fport, int) or isinstance(fport, bool) or not 1 <= fport <= 223:
        raise CommandError("fport must be an integer from 1 to 223")
    confirmed = raw.get("confirmed", False)
    if not isinstance(confirmed, bool):
        raise CommandError("confirmed must be true or false")
    if ("hex" in raw) == ("object" in raw):
        raise CommandError("give exactly one of hex and object")
    data: bytes | None = None
    obj: dict[str, Any] | None = None
    if "hex" in raw:
        text = raw["hex"]
        if not isinstance(text, str) or len(text) > 2 * MAX_PAYLOAD + 2 or not _HEX.fullmatch(text):
            raise CommandError(f"hex must be a string of hex digit pairs (at most {MAX_PAYLOAD} bytes)")
        data = bytes.fromhex(text)
        if len(data) > MAX_PAYLOAD:
            raise CommandError(f"the payload is {len(data)} bytes; LoRaWAN carries at most {MAX_PAYLOAD}")
    else:
        if not isinstance(raw["object"], dict):
            raise CommandError("object must be a JSON object")
        _check_object(raw["object"])
        obj = raw["object"]
    return Command(command_id, when, dev_eui.lower(), fport, data, obj, confirmed)


class _MemoryIds:
    """Command ids for the life of the process (when no buffer is given)."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], float] = {}

    def remember_command(self, upstream: str, command_id: str, now: float, keep_s: float) -> bool:
        self._seen = {k: t for k, t in self._seen.items() if t >= now - keep_s}
        if (upstream, command_id) in self._seen:
            return False
        self._seen[(upstream, command_id)] = now
        return True

    def forget_command(self, upstream: str, command_id: str) -> None:
        self._seen.pop((upstream, command_id), None)


class RateLimiter:
    """At most `limit` commands per device of one upstream in any hour (a sliding window)."""

    def __init__(self, limit: int, window_s: float = 3600.0) -> None:
        self.limit = limit
        self.window_s = window_s
        self._times: dict[str, deque[float]] = {}
        self._lock = threading.Lock()  # every upstream's sink thread calls `allow`

    def allow(self, dev_eui: str, now: float) -> bool:
        """Count a command for `dev_eui` now; False (not counted) when it is over the limit."""
        with self._lock:
            times = self._times.setdefault(dev_eui, deque())
            while times and times[0] <= now - self.window_s:
                times.popleft()
            if len(times) >= self.limit:
                return False
            times.append(now)
            if len(self._times) > 10_000:  # allow-lists are small; never grow without bound anyway
                self._times = {d: t for d, t in self._times.items() if t and t[-1] > now - self.window_s}
            return True


class CommandIds(Protocol):
    """Where command ids are remembered (edge.buffer.store.Buffer)."""

    def remember_command(self, upstream: str, command_id: str, now: float, keep_s: float) -> bool: ...

    def forget_command(self, upstream: str, command_id: str) -> None: ...


class CommandRelay:
    """Validates commands from upstreams and enqueues them in ChirpStack, one worker thread.

    Args:
        cfg: ChirpStack's API settings.
        ids: opens the store of command ids (the buffer), called once on the worker thread; None
            remembers ids for the process only (tests, tools).
    """

    def __init__(self, cfg: ChirpStackConfig, ids: Callable[[], CommandIds] | None = None) -> None:
        self.cfg = cfg
        self._open_ids = ids
        # (upstream, command, its command_max_age_s, its per-device rate limiter)
        self._jobs: queue.Queue[tuple[str, Command, float, RateLimiter]] = queue.Queue(MAX_PENDING)
        self.accepted = 0
        self.refused = 0
        self.duplicates = 0
        self.enqueued = 0
        self.failed = 0
        self.heartbeat = 0.0

    def handler(self, upstream: str, allowed: frozenset[str], covered: Callable[[str], bool],
                max_age_s: float = 600.0, max_per_hour: int = 12) -> Callable[[bytes, bool], None]:
        """The callback an upstream's sink calls with each command payload and its retain flag (sink thread)."""
        limiter = RateLimiter(max_per_hour)

        def refuse(reason: str, *args: object) -> None:
            self.refused += 1
            log.warning("Refused a downlink command from upstream %s: " + reason, upstream, *args,
                        extra={"upstream": upstream})

        def handle(payload: bytes, retained: bool = False) -> None:
            if retained and not payload:
                log.debug("Upstream %s cleared a retained message on its command topic.", upstream)
                return
            if retained:
                refuse("it was retained (a retained command would be sent again at every reconnect); publish"
                       " commands with retain=false")
                return
            try:
                command = parse_command(payload)
            except CommandError as exc:
                refuse("%s", exc)
                return
            now = time.time()
            if command.time < now - max_age_s:
                refuse("command %r is %.0f s old (command_max_age_s = %g)", command.id, now - command.time,
                       max_age_s)
                return
            if command.time > now + FUTURE_SLACK_S:
                refuse("command %r is dated %.0f s in the future; check the sender's clock", command.id,
                       command.time - now)
                return
            if command.dev_eui not in allowed or not covered(command.dev_eui):
                refuse("%s is not in its command_devices allow-list or its sharing rules", command.dev_eui)
                return
            try:
                self._jobs.put_nowait((upstream, command, max_age_s, limiter))
                self.accepted += 1
            except queue.Full:
                self.refused += 1
                log.error("Downlink command queue full; refused a command from upstream %s.", upstream,
                          extra={"upstream": upstream})

        return handle

    def run(self, stop: threading.Event) -> None:
        """The worker: enqueue accepted commands through ChirpStack's gRPC API."""
        from edge.sources.chirpstack_grpc import ChirpStackApi

        ids = self._open_ids() if self._open_ids is not None else _MemoryIds()
        while not stop.is_set():
            self.heartbeat = time.monotonic()
            try:
                upstream, command, max_age_s, limiter = self._jobs.get(timeout=0.5)
            except queue.Empty:
                continue
            # Remembered before the enqueue: a downlink sent twice may actuate twice, so a command
            # whose id was seen is never enqueued again (at most once); a failed enqueue forgets it.
            if not ids.remember_command(upstream, command.id, time.time(), max_age_s + FUTURE_SLACK_S + 3600):
                self.duplicates += 1
                log.warning("Refused a downlink command from upstream %s: command %r was received before"
                            " (a redelivery); it is enqueued once.", upstream, command.id,
                            extra={"upstream": upstream})
                continue
            # After the id check, so that a redelivery does not use up the device's budget.
            if not limiter.allow(command.dev_eui, time.time()):
                self.refused += 1
                ids.forget_command(upstream, command.id)
                log.warning("Refused a downlink command from upstream %s: more than %d commands for %s in the last"
                            " hour (command_max_per_hour).", upstream, limiter.limit, command.dev_eui,
                            extra={"upstream": upstream})
                continue
            payload: bytes | dict[str, Any] = command.payload if command.payload is not None else command.object or {}
            try:
                token = Path(self.cfg.api_token_file).read_text().strip()
                with ChirpStackApi(self.cfg.api_url, token, ca_file=self.cfg.api_ca_file or None,
                                   timeout_s=self.cfg.api_timeout_s, token_file=self.cfg.api_token_file) as api:
                    queue_id = api.enqueue(command.dev_eui, command.fport, payload, confirmed=command.confirmed)
                self.enqueued += 1
                log.info("Downlink %r from upstream %s for %s enqueued in ChirpStack (queue item %s).", command.id,
                         upstream, command.dev_eui, queue_id, extra={"upstream": upstream})
            except (EdgeError, OSError) as exc:
                self.failed += 1
                ids.forget_command(upstream, command.id)
                log.error("Downlink %r from upstream %s for %s could not be enqueued: %s", command.id, upstream,
                          command.dev_eui, exc, extra={"upstream": upstream})
