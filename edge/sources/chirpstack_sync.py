"""Fills the device cache from ChirpStack: every application, device and profile the API token can see."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Protocol

from edge.errors import ApiNotFound
from edge.sources.chirpstack_grpc import ChirpStackApi
from edge.sources.chirpstack_records import ApplicationRecord, DeviceRecord, ProfileRecord, SyncResult

log = logging.getLogger(__name__)


class RegistryWriter(Protocol):
    """Where `sync` writes (edge.buffer.registry.DeviceRegistry; a protocol so sources never import buffer)."""

    def replace_all(self, applications: Sequence[ApplicationRecord], devices: Sequence[DeviceRecord],
                    profiles: Sequence[ProfileRecord]) -> None:
        """Replace the whole cache in one transaction."""


def sync(api: ChirpStackApi, registry: RegistryWriter, tenant_id: str | None = None) -> SyncResult:
    """Pull every application, device and profile the token can see and replace the cache.

    Everything is read before anything is written: if ChirpStack fails mid-way the exception
    propagates and the cache keeps its previous content.

    Args:
        api: the client.
        registry: the cache to replace.
        tenant_id: sync only this tenant (needed for tenant keys, which may not list tenants);
            None syncs every tenant, which only an admin key may list.

    Returns:
        Counts of what was written.
    """
    started = time.monotonic()
    if tenant_id:
        api.get_tenant(tenant_id)  # a mistyped id must fail, not replace the cache with nothing
        tenants = [tenant_id]
    else:
        tenants = api.list_tenants()
    apps = [app for t in tenants for app in api.list_applications(t)]
    # List responses lack variables and is_disabled, so each device is read once more.
    devices: list[DeviceRecord] = []
    for app in apps:
        for listed in api.list_devices(app.id):
            try:
                devices.append(api.get_device(listed.dev_eui))
            except ApiNotFound:
                # Deleted between List and Get: it is gone, which is what the cache should say.
                log.debug("Device %s was deleted during the sync.", listed.dev_eui)
    profile_ids = sorted({d.profile_id for d in devices if d.profile_id})
    profiles = [api.get_device_profile(p) for p in profile_ids]
    registry.replace_all(apps, devices, profiles)
    result = SyncResult(len(tenants), len(apps), len(devices), len(profiles), time.monotonic() - started)
    log.info("Device cache synced from %s: %d devices in %d applications, %d profiles (%.1fs).",
             api.url, result.devices, result.applications, result.profiles, result.seconds)
    return result
