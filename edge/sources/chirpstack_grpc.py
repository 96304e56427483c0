"""ChirpStack v4 gRPC API client: tenants, applications, devices, device profiles and downlink enqueue.

Nothing here is imported at `edge` import time on purpose: grpcio costs ~20 MB RSS and
`chirpstack_api` another ~5 MB, so both are imported inside the functions that need them.
No protobuf object leaves this module; callers get the frozen dataclasses below.

Its errors are ApiError and its subclasses, drawn with the whole tree in edge/errors.py.

ChirpStack v4 never answers PERMISSION_DENIED: its request validator turns every refused access
into UNAUTHENTICATED with empty details, while a token it cannot decode gets the decoder's error
as details. That empty reason is the only way to tell "wrong key" from "right key, wrong tenant".
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

from edge.errors import (
    ApiAuthError,
    ApiError,
    ApiExists,
    ApiNotFound,
    ApiPermissionError,
    ApiUnavailable,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

PAGE_SIZE = 100


@dataclass(frozen=True, slots=True)
class ApplicationRecord:
    """A ChirpStack application."""

    id: str
    tenant_id: str
    name: str
    description: str = ""


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    """A ChirpStack device.

    `variables` and `is_disabled` are None when the record comes from `list_devices`:
    ChirpStack's List response does not carry them, only Get does.
    """

    dev_eui: str
    name: str
    application_id: str
    profile_id: str
    description: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    variables: dict[str, str] | None = None
    is_disabled: bool | None = None
    join_eui: str = ""  # OTAA JoinEUI (AppEUI); only from `get_device`


@dataclass(frozen=True, slots=True)
class ProfileRecord:
    """A ChirpStack device profile with its payload codec."""

    id: str
    name: str
    codec_runtime: str  # "NONE", "CAYENNE_LPP" or "JS"
    codec_script: str = ""
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DeviceKeys:
    """A device's OTAA root keys, hex. Never logged or printed unless asked for (`export --with-keys`).

    For LoRaWAN 1.0.x devices the AppKey is ChirpStack's `nwk_key` (its API names it so);
    `app_key` is only set for LoRaWAN 1.1 devices.
    """

    dev_eui: str
    nwk_key: str
    app_key: str = ""

    def __repr__(self) -> str:
        return f"DeviceKeys({self.dev_eui!r}, <keys hidden>)"


@dataclass(frozen=True, slots=True)
class SyncResult:
    """What one `sync` pulled from ChirpStack."""

    tenants: int
    applications: int
    devices: int
    profiles: int
    seconds: float


def _grpc() -> Any:
    # gRPC's C core prints its own INFO lines (TLS handshake details) to stderr unless told not
    # to; our messages say the same in words a technician can act on.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    # grpcio ships no type information (no py.typed, grpc-stubs not installed): treat it as Any.
    import grpc  # type: ignore[import-untyped]

    return grpc


def _target(api_url: str, ca_file: str | None) -> tuple[str, bool]:
    """Split an API URL into the gRPC target and whether to use TLS."""
    if "://" not in api_url:
        # Bare host:port: plaintext, ChirpStack's default on a LAN, unless a CA file asks for TLS.
        return api_url, bool(ca_file)
    parts = urlsplit(api_url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        raise ApiError(f"ChirpStack API URL must be host:port, http://host:port or https://host[:port], "
                       f"got {api_url!r}")
    tls = parts.scheme == "https"
    port = parts.port or (443 if tls else 80)
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{host}:{port}", tls


class ChirpStackApi:
    """A synchronous client of ChirpStack's gRPC API, authenticated by an API token.

    Every call has a deadline of `timeout_s`. Reads are retried on UNAVAILABLE and
    DEADLINE_EXCEEDED with full-jitter backoff, at most `attempts` times in all; enqueue is
    never retried (see `enqueue`). Use as a context manager or call `close()`.
    """

    def __init__(self, api_url: str, token: str, *, ca_file: str | None = None, timeout_s: float = 10.0,
                 attempts: int = 3, backoff_s: float = 0.2, page_size: int = PAGE_SIZE,
                 token_file: str | None = None) -> None:
        """Open a channel (connecting lazily, on the first call).

        Args:
            api_url: "host:port" (plaintext), "http://host:port" or "https://host[:port]".
            token: a ChirpStack admin or tenant API key; sent as "Bearer <token>", never logged.
            ca_file: PEM file of the CA that signed ChirpStack's certificate (implies TLS); None for
                the system roots on https URLs.
            timeout_s: deadline of each call.
            attempts: tries per read call in all, including the first.
            backoff_s: base of the exponential backoff between tries.
            page_size: `limit` of each List request.
            token_file: where the token came from, named in error messages (never the token itself).
        """
        grpc = _grpc()
        self.url = api_url
        self.timeout_s = timeout_s
        self.attempts = max(1, attempts)
        self.backoff_s = backoff_s
        self.page_size = page_size
        self.token_file = token_file
        self.tls = False
        self._metadata = (("authorization", f"Bearer {token}"),)
        target, tls = _target(api_url, ca_file)
        self.tls = tls
        if tls:
            roots = Path(ca_file).read_bytes() if ca_file else None
            self._channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=roots))
        else:
            self._channel = grpc.insecure_channel(target)
        self._stubs: dict[str, Any] = {}

    def __repr__(self) -> str:
        # The token must never end up in logs or tracebacks, so it is left out here.
        return f"ChirpStackApi({self.url!r})"

    def __enter__(self) -> ChirpStackApi:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def _stub(self, service: str) -> Any:
        stub = self._stubs.get(service)
        if stub is None:
            from chirpstack_api import api

            stub = self._stubs[service] = getattr(api, f"{service}Stub")(self._channel)
        return stub

    def _call(self, action: str, rpc: Callable[..., T], request: Any, *, retry: bool = True) -> T:
        """Run one unary call with deadline, auth metadata, retries and clear errors."""
        grpc = _grpc()
        transient = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        attempts = self.attempts if retry else 1
        for attempt in range(1, attempts + 1):
            try:
                return rpc(request, timeout=self.timeout_s, metadata=self._metadata)
            except grpc.RpcError as exc:
                code, details = exc.code(), exc.details() or ""
                if code in transient and attempt < attempts:
                    # Full jitter (as aiomqtt): clients that lost ChirpStack together do not retry in step.
                    delay = random.uniform(0, self.backoff_s * 2 ** (attempt - 1))
                    log.warning("ChirpStack API %s: %s failed (%s), retry %d of %d in %.2fs.",
                                self.url, action, code.name, attempt, attempts - 1, delay)
                    time.sleep(delay)
                    continue
                raise self._error(action, code, details) from None
        raise AssertionError("unreachable")  # the loop either returns or raises

    def _error(self, action: str, code: Any, details: str) -> ApiError:
        grpc = _grpc()
        where = f"ChirpStack at {self.url}"
        token = f"the token in {self.token_file}" if self.token_file else "the API token"
        if code == grpc.StatusCode.UNAUTHENTICATED and details.strip():
            return ApiAuthError(f"{where} rejected {token} ({details}): it is not an API key of this ChirpStack."
                                " Create one in ChirpStack's web interface (API keys, or Tenants > API keys)"
                                " and put it in the token file.")
        if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            writes = " or a read-only key (downlinks need one that is not)," if action.startswith("enqueue") else ""
            return ApiPermissionError(f"{where} refused to {action} with {token}: the key was deleted,{writes} or it"
                                      " is a tenant key and this is outside its tenant.")
        if code == grpc.StatusCode.NOT_FOUND:
            return ApiNotFound(f"{where}: {action}: not found")
        if code == grpc.StatusCode.ALREADY_EXISTS:
            return ApiExists(f"{where}: {action}: already exists")
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return ApiUnavailable(f"ChirpStack API {self.url} unreachable: {self._hint(code, details)}"
                                  f" ({code.name}: {details})")
        return ApiError(f"ChirpStack API {self.url}: {action} failed: {code.name}: {details}")

    def _hint(self, code: Any, details: str) -> str:
        """What a technician should check, read from gRPC's (rather technical) failure details."""
        grpc = _grpc()
        text = details.lower()
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return (f"no answer within {self.timeout_s:g} s; the host is down, or a firewall drops the traffic,"
                    " or ChirpStack is overloaded")
        if "connection refused" in text:
            return ("nothing listens on that port; is ChirpStack running, and is the port that of its"
                    " [api] bind (8080 by default)?")
        if "resolv" in text or "domain name" in text or "dns" in text:
            return "the host name does not resolve; check the name or use an IP address"
        if "handshake" in text or "ssl" in text or "certificate" in text:
            if self.tls:
                return ("the TLS handshake failed; if ChirpStack serves plain gRPC (its default) write host:port"
                        " or http://host:port, otherwise api_ca_file must be the CA that signed its certificate")
            return "the TLS handshake failed"
        if "http/2" in text or "http2" in text or "settings frame" in text:
            return ("something answers on that port, but not gRPC; is it ChirpStack's API port ([api] bind,"
                    " 8080 by default)?" + ("" if self.tls else " If it serves TLS, use https://host:port."))
        return "no connection; is ChirpStack running and reachable from here?"

    def _pages(self, action: str, rpc: Callable[..., Any], make: Callable[[int, int], Any]) -> list[Any]:
        """Every item of a List call, page by page, until total_count is reached."""
        items: list[Any] = []
        while True:
            resp = self._call(action, rpc, make(self.page_size, len(items)))
            items.extend(resp.result)
            # An empty page ends the loop even below total_count: objects deleted while paging
            # would otherwise keep us asking for offsets that no longer exist.
            if not resp.result or len(items) >= resp.total_count:
                return items

    # -- reads -------------------------------------------------------------------------------

    def get_tenant(self, tenant_id: str) -> str:
        """Check that a tenant exists and the token may read it; returns its name.

        Listing a tenant's applications cannot tell these apart: for an admin key ChirpStack
        answers an empty list for a tenant that does not exist, which a sync would take for
        "every device was deleted".

        Args:
            tenant_id: the tenant's UUID.

        Returns:
            The tenant's name.

        Raises:
            ApiNotFound: no such tenant.
            ApiPermissionError: the key may not read it (a key of another tenant, or deleted).
            ApiError: the id is not a UUID (and any other failure).
        """
        from chirpstack_api import api

        hint = "check [chirpstack] tenant_id (or --tenant-id): ChirpStack shows a tenant's id on its dashboard"
        try:
            resp = self._call(f"read tenant {tenant_id}", self._stub("TenantService").Get,
                              api.GetTenantRequest(id=tenant_id))
        except ApiNotFound:
            raise ApiNotFound(f"ChirpStack at {self.url} has no tenant {tenant_id}; {hint}") from None
        except ApiPermissionError:
            raise ApiPermissionError(
                f"ChirpStack at {self.url} refused to read tenant {tenant_id} with"
                f" {'the token in ' + self.token_file if self.token_file else 'the API token'}: the key belongs to"
                f" another tenant or was deleted; {hint}, or use a key of that tenant") from None
        except ApiError as exc:
            if "INVALID_ARGUMENT" in str(exc):
                raise ApiError(f"tenant id {tenant_id!r} is not a UUID; {hint}") from None
            raise
        return str(resp.tenant.name)

    def list_tenants(self, fallback_tenant_id: str | None = None) -> list[str]:
        """The ids of every tenant the token can see.

        Only admin keys may list tenants; a tenant key is refused, and then the configured
        tenant is the answer.

        Args:
            fallback_tenant_id: returned as the only tenant when listing is not permitted.

        Returns:
            Tenant ids.

        Raises:
            ApiPermissionError: listing was denied and no fallback was given.
        """
        from chirpstack_api import api

        stub = self._stub("TenantService")
        try:
            items = self._pages("list tenants", stub.List, lambda n, o: api.ListTenantsRequest(limit=n, offset=o))
        except ApiPermissionError:
            if fallback_tenant_id:
                return [fallback_tenant_id]
            raise ApiPermissionError(
                f"ChirpStack at {self.url} refused to list tenants: only an admin API key may. A tenant key needs"
                " its tenant's id in [chirpstack] tenant_id (or --tenant-id); an admin key that is refused was"
                " deleted") from None
        return [t.id for t in items]

    def list_applications(self, tenant_id: str) -> list[ApplicationRecord]:
        """Every application of a tenant.

        Args:
            tenant_id: the tenant's UUID (ChirpStack requires it).

        Returns:
            The applications, in ChirpStack's order.
        """
        from chirpstack_api import api

        items = self._pages(f"list applications of tenant {tenant_id}", self._stub("ApplicationService").List,
                            lambda n, o: api.ListApplicationsRequest(limit=n, offset=o, tenant_id=tenant_id))
        return [ApplicationRecord(a.id, tenant_id, a.name, a.description) for a in items]

    def list_devices(self, application_id: str) -> list[DeviceRecord]:
        """Every device of an application (without variables and is_disabled; see DeviceRecord).

        Args:
            application_id: the application's UUID (ChirpStack requires it).

        Returns:
            The devices, in ChirpStack's order.
        """
        from chirpstack_api import api

        items = self._pages(
            f"list devices of application {application_id}", self._stub("DeviceService").List,
            lambda n, o: api.ListDevicesRequest(limit=n, offset=o, application_id=application_id))
        return [DeviceRecord(d.dev_eui, d.name, application_id, d.device_profile_id, d.description, dict(d.tags))
                for d in items]

    def get_device(self, dev_eui: str) -> DeviceRecord:
        """One device with everything the cache keeps, variables included.

        Args:
            dev_eui: the DevEUI in hex.

        Returns:
            The complete record.

        Raises:
            ApiNotFound: ChirpStack has no such device.
        """
        from chirpstack_api import api

        d = self._call(f"read device {dev_eui}", self._stub("DeviceService").Get,
                       api.GetDeviceRequest(dev_eui=dev_eui.lower())).device
        return DeviceRecord(d.dev_eui, d.name, d.application_id, d.device_profile_id, d.description, dict(d.tags),
                            dict(d.variables), d.is_disabled, d.join_eui)

    def get_device_profile(self, profile_id: str) -> ProfileRecord:
        """One device profile with its codec.

        Args:
            profile_id: the profile's UUID.

        Returns:
            The record; codec_runtime is "NONE", "CAYENNE_LPP" or "JS".

        Raises:
            ApiNotFound: ChirpStack has no such profile.
        """
        from chirpstack_api import api

        p = self._call(f"read device profile {profile_id}", self._stub("DeviceProfileService").Get,
                       api.GetDeviceProfileRequest(id=profile_id)).device_profile
        return ProfileRecord(p.id, p.name, api.CodecRuntime.Name(p.payload_codec_runtime), p.payload_codec_script,
                             dict(p.tags))

    # -- writes ------------------------------------------------------------------------------

    def list_device_profiles(self, tenant_id: str) -> list[tuple[str, str]]:
        """(id, name) of every device profile of a tenant.

        Args:
            tenant_id: the tenant's UUID.
        """
        from chirpstack_api import api

        items = self._pages(f"list device profiles of tenant {tenant_id}", self._stub("DeviceProfileService").List,
                            lambda n, o: api.ListDeviceProfilesRequest(limit=n, offset=o, tenant_id=tenant_id))
        return [(p.id, p.name) for p in items]

    def get_keys(self, dev_eui: str) -> DeviceKeys | None:
        """A device's OTAA keys, or None when it has none (ABP or not set yet)."""
        from chirpstack_api import api

        try:
            k = self._call(f"read the keys of device {dev_eui}", self._stub("DeviceService").GetKeys,
                           api.GetDeviceKeysRequest(dev_eui=dev_eui.lower())).device_keys
        except ApiNotFound:
            return None
        return DeviceKeys(dev_eui.lower(), k.nwk_key, k.app_key)

    def _device(self, record: DeviceRecord) -> Any:
        from chirpstack_api import api

        return api.Device(dev_eui=record.dev_eui.lower(), name=record.name, description=record.description,
                          application_id=record.application_id, device_profile_id=record.profile_id,
                          tags=dict(record.tags), variables=dict(record.variables or {}),
                          join_eui=record.join_eui.lower(), is_disabled=bool(record.is_disabled))

    def create_device(self, record: DeviceRecord) -> None:
        """Create a device. Not retried here: the caller checks with `get_device` and retries (idempotently).

        Raises:
            ApiExists: ChirpStack already has a device with this DevEUI.
        """
        from chirpstack_api import api

        self._call(f"create device {record.dev_eui}", self._stub("DeviceService").Create,
                   api.CreateDeviceRequest(device=self._device(record)), retry=False)

    def update_device(self, record: DeviceRecord) -> None:
        """Replace a device's name, description, profile, tags, variables and JoinEUI."""
        from chirpstack_api import api

        self._call(f"update device {record.dev_eui}", self._stub("DeviceService").Update,
                   api.UpdateDeviceRequest(device=self._device(record)))

    def set_keys(self, keys: DeviceKeys, *, exists: bool) -> None:
        """Create (or, when `exists`, replace) a device's OTAA keys."""
        from chirpstack_api import api

        message = api.DeviceKeys(dev_eui=keys.dev_eui.lower(), nwk_key=keys.nwk_key.lower(),
                                 app_key=keys.app_key.lower())
        service = self._stub("DeviceService")
        if exists:
            self._call(f"update the keys of device {keys.dev_eui}", service.UpdateKeys,
                       api.UpdateDeviceKeysRequest(device_keys=message))
        else:
            self._call(f"create the keys of device {keys.dev_eui}", service.CreateKeys,
                       api.CreateDeviceKeysRequest(device_keys=message), retry=False)

    def enqueue(self, dev_eui: str, f_port: int, payload: bytes | Mapping[str, Any], *,
                confirmed: bool = False) -> str:
        """Queue a downlink for a device.

        Not retried: a call that timed out may still have been queued, and sending a command
        to an actuator twice is worse than reporting an error the operator can act on.

        Args:
            dev_eui: the DevEUI in hex.
            f_port: LoRaWAN FPort, 1 to 223.
            payload: raw bytes, or an object for the device profile's JS encoder (ChirpStack
                encodes it; JSON numbers become floats in protobuf's Struct).
            confirmed: ask the device to acknowledge the downlink.

        Returns:
            The queue item id; ChirpStack reports it as `queueItemId` in the ack/txack events.
        """
        from chirpstack_api import api

        if not 1 <= f_port <= 223:
            raise ValueError(f"f_port must be 1 to 223, got {f_port}")
        item = api.DeviceQueueItem(dev_eui=dev_eui.lower(), f_port=f_port, confirmed=confirmed)
        if isinstance(payload, bytes | bytearray):
            item.data = bytes(payload)
        else:
            item.object.update(dict(payload))
        resp = self._call(f"enqueue a downlink for {dev_eui}", self._stub("DeviceService").Enqueue,
                          api.EnqueueDeviceQueueItemRequest(queue_item=item), retry=False)
        return str(resp.id)


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
