"""Keeps the ChirpStack device registry cache fresh and answers the hot path from memory.

One worker thread talks to ChirpStack's gRPC API: a full sync at start and every
`api_sync_interval_s`, and a one-off fetch of any device seen in an uplink but not cached yet.
A sync that fails (ChirpStack still starting after a power cut, the backhaul to a remote API
down) is tried again after RETRY_SYNC_S, doubling up to the interval, not a whole interval later.
The pipeline only ever reads `hints(dev_eui)`, a dictionary lookup in an immutable snapshot that
the worker swaps atomically; the API being down never slows or stops decoding.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from edge.buffer.registry import CachedDevice, CachedProfile, DeviceRegistry
from edge.config import ChirpStackConfig
from edge.decoding.registry import NO_HINTS, DeviceHints
from edge.errors import ApiNotFound, EdgeError

if TYPE_CHECKING:  # the gRPC client costs ~20 MB: imported only when an API is configured
    from edge.sources.chirpstack_grpc import ChirpStackApi

log = logging.getLogger(__name__)

RETRY_UNKNOWN_S = 600.0  # a device the API could not be asked about is tried again after this
RETRY_SYNC_S = 15.0  # first retry of a failed sync; doubles up to the sync interval (an hour if that is 0)


def retry_delay(failures: int, interval_s: float) -> float:
    """Seconds until the next try after `failures` failed syncs in a row (jittered, capped)."""
    cap = interval_s if interval_s > 0 else 3600.0
    delay = min(cap, RETRY_SYNC_S * 2 ** min(failures - 1, 16))
    # Jitter (0.5x to 1x): gateways that lost a shared API together do not return in step.
    return float(delay * random.uniform(0.5, 1.0))


class DeviceCache:
    """The in-memory view of the device registry cache, refreshed by a worker thread."""

    def __init__(self, cfg: ChirpStackConfig, db_path: str | Path) -> None:
        self.cfg = cfg
        self.db_path = Path(db_path)
        self._hints: dict[str, DeviceHints] = {}
        self._asked: dict[str, float] = {}  # dev_eui -> when a fetch was queued
        self._wanted: queue.SimpleQueue[str] = queue.SimpleQueue()
        self.last_sync_ok: float | None = None
        self.last_error = ""
        self.failures = 0  # failed syncs in a row
        self.heartbeat = time.monotonic()
        registry = DeviceRegistry(self.db_path)
        try:
            self._snapshot(registry)
        finally:
            registry.close()

    def hints(self, dev_eui: str) -> DeviceHints:
        """What the cache knows about a device; an unknown one is queued for a fetch (hot path)."""
        found = self._hints.get(dev_eui)
        if found is not None:
            return found
        now = time.monotonic()
        asked = self._asked.get(dev_eui)
        if asked is None or now - asked > RETRY_UNKNOWN_S:
            self._asked[dev_eui] = now
            self._wanted.put(dev_eui)
        return NO_HINTS

    def known(self) -> list[str]:
        """Every DevEUI in the cache (the devices ChirpStack has)."""
        return list(self._hints)

    def _snapshot(self, registry: DeviceRegistry) -> None:
        profiles: dict[str, CachedProfile] = {p.id: p for p in registry.list_profiles()}
        hints: dict[str, DeviceHints] = {}
        for device in registry.list_devices():
            hints[device.dev_eui] = _hints(device, profiles.get(device.profile_id))
        self._hints = hints  # one reference swap: readers see the old or the new snapshot, never a mix

    def _api(self) -> ChirpStackApi:
        from edge.sources.chirpstack_grpc import ChirpStackApi

        token = Path(self.cfg.api_token_file).read_text().strip()
        return ChirpStackApi(self.cfg.api_url, token, ca_file=self.cfg.api_ca_file or None,
                             timeout_s=self.cfg.api_timeout_s, token_file=self.cfg.api_token_file)

    def run(self, stop: threading.Event) -> None:
        """The worker: sync now and periodically, fetch unknown devices in between."""
        from edge.sources.chirpstack_sync import sync

        registry = DeviceRegistry(self.db_path)
        next_sync = 0.0
        try:
            while not stop.is_set():
                self.heartbeat = time.monotonic()
                now = time.monotonic()
                if now >= next_sync:
                    try:
                        with self._api() as api:
                            result = sync(api, registry, self.cfg.tenant_id or None)
                        self._snapshot(registry)
                        self.last_sync_ok = time.time()
                        self.last_error = ""
                        self.failures = 0
                        log.info("Device registry synced from ChirpStack: %s.", result)
                    except (EdgeError, OSError) as exc:
                        self.last_error = str(exc)
                        self.failures += 1
                    interval = self.cfg.api_sync_interval_s
                    if self.failures:
                        delay = retry_delay(self.failures, interval)
                        log.warning("Device registry sync failed (the cache keeps serving; next try in %.0f s): %s",
                                    delay, self.last_error)
                        next_sync = now + delay
                    else:
                        next_sync = now + interval if interval > 0 else float("inf")
                try:
                    dev_eui = self._wanted.get(timeout=min(1.0, max(0.0, next_sync - time.monotonic())))
                except queue.Empty:
                    continue
                try:
                    with self._api() as api:
                        device = api.get_device(dev_eui)
                        profile = None
                        if device.profile_id and registry.get_profile(device.profile_id) is None:
                            profile = api.get_device_profile(device.profile_id)
                    registry.upsert_device(device, profile)
                    self._snapshot(registry)
                    log.info("Fetched device %s (%s) from ChirpStack.", dev_eui, device.name)
                except ApiNotFound:
                    log.debug("Device %s is not known to ChirpStack's API.", dev_eui)
                except (EdgeError, OSError) as exc:
                    self.last_error = str(exc)
                    log.warning("Could not fetch device %s from ChirpStack (retried later): %s", dev_eui, exc)
        finally:
            registry.close()


def _hints(device: CachedDevice, profile: CachedProfile | None) -> DeviceHints:
    if profile is None:
        return DeviceHints(tags=device.tags, variables=device.variables, profile_id=device.profile_id)
    return DeviceHints(
        tags=device.tags, variables=device.variables, profile_id=profile.id, profile_tags=profile.tags,
        profile_js=profile.codec_script if profile.codec_runtime == "JS" else "",
    )
