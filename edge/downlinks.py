"""Relays downlink commands that a destination sends on its command topic to ChirpStack's API.

Off unless an upstream sets `command_topic`. A command is accepted only for a DevEUI in that
upstream's `command_devices` allow-list *and* covered by its sharing rules, so a destination can
reach exactly the devices it is allowed to see. Commands are JSON:
`{"dev_eui": "...", "fport": 2, "hex": "0100"}` or with `"object": {...}` (encoded by the device
profile's codec in ChirpStack), optionally `"confirmed": true`. They are enqueued through
DeviceService.Enqueue on a worker thread, so a slow API never stalls delivery.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from edge.config import ChirpStackConfig
from edge.errors import EdgeError

log = logging.getLogger(__name__)

MAX_PENDING = 1000  # commands waiting for the API; more are refused rather than buffered without bound


class CommandRelay:
    """Validates commands from upstreams and enqueues them in ChirpStack, one worker thread."""

    def __init__(self, cfg: ChirpStackConfig) -> None:
        self.cfg = cfg
        self._jobs: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue(MAX_PENDING)
        self.accepted = 0
        self.refused = 0
        self.enqueued = 0
        self.failed = 0
        self.heartbeat = 0.0

    def handler(self, upstream: str, allowed: frozenset[str],
                covered: Callable[[str], bool]) -> Callable[[bytes], None]:
        """The callback an upstream's sink calls with each command payload (on the sink's thread)."""

        def handle(payload: bytes) -> None:
            try:
                command = orjson.loads(payload)
                dev_eui = str(command["dev_eui"]).lower()
                fport = int(command["fport"])
                if not 1 <= fport <= 223:
                    raise ValueError("fport must be 1-223")
                if ("hex" in command) == ("object" in command):
                    raise ValueError("give exactly one of hex and object")
                if "hex" in command:
                    bytes.fromhex(str(command["hex"]))
                elif not isinstance(command["object"], dict):
                    raise ValueError("object must be a JSON object")
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                self.refused += 1
                log.warning("Refused a malformed downlink command from upstream %s: %s", upstream, exc)
                return
            if dev_eui not in allowed or not covered(dev_eui):
                self.refused += 1
                log.warning("Refused a downlink command from upstream %s for %s: the device is not in its"
                            " command_devices allow-list or its sharing rules.", upstream, dev_eui)
                return
            try:
                self._jobs.put_nowait((upstream, command | {"dev_eui": dev_eui, "fport": fport}))
                self.accepted += 1
            except queue.Full:
                self.refused += 1
                log.error("Downlink command queue full; refused a command from upstream %s.", upstream)

        return handle

    def run(self, stop: threading.Event) -> None:
        """The worker: enqueue accepted commands through ChirpStack's gRPC API."""
        import time

        from edge.sources.chirpstack_grpc import ChirpStackApi

        while not stop.is_set():
            self.heartbeat = time.monotonic()
            try:
                upstream, command = self._jobs.get(timeout=0.5)
            except queue.Empty:
                continue
            payload: bytes | dict[str, Any] = (bytes.fromhex(command["hex"]) if "hex" in command
                                               else command["object"])
            try:
                token = Path(self.cfg.api_token_file).read_text().strip()
                with ChirpStackApi(self.cfg.api_url, token, ca_file=self.cfg.api_ca_file or None,
                                   timeout_s=self.cfg.api_timeout_s, token_file=self.cfg.api_token_file) as api:
                    queue_id = api.enqueue(command["dev_eui"], command["fport"], payload,
                                           confirmed=bool(command.get("confirmed", False)))
                self.enqueued += 1
                log.info("Downlink from upstream %s for %s enqueued in ChirpStack (queue item %s).", upstream,
                         command["dev_eui"], queue_id)
            except (EdgeError, OSError) as exc:
                self.failed += 1
                log.error("Downlink from upstream %s for %s could not be enqueued: %s", upstream,
                          command["dev_eui"], exc)
