"""ChirpStack v4 gRPC API client: tenants, applications, devices, device profiles and downlink enqueue.

Nothing here is imported at `edge` import time on purpose: grpcio costs ~20 MB RSS and
`chirpstack_api` another ~5 MB, so both are imported inside the functions that need them.
No protobuf object leaves this module; callers get the frozen dataclasses of
edge/sources/chirpstack_records.py. `sync` (edge/sources/chirpstack_sync.py) fills the device
cache through this client.

Its errors are ApiError and its subclasses, drawn with the whole tree in edge/errors.py.

ChirpStack v4 never answers PERMISSION_DENIED: its request validator turns every refused access
into UNAUTHENTICATED with empty details, while a token it cannot decode gets the decoder's error
as details. That empty reason is the only way to tell "wrong key" from "right key, wrong tenant".
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from edge.errors import (
    ApiAuthError,
    ApiError,
    ApiExists,
    ApiNotFound,
    ApiPermissionError,
    ApiUnavailable,
)
from edge.sources.chirpstack_channel import grpc_module, grpc_target, unreachable_hint
from edge.sources.chirpstack_records import ApplicationRecord, DeviceKeys, DeviceRecord, ProfileRecord

log = logging.getLogger(__name__)

T = TypeVar("T")

PAGE_SIZE = 100


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
        grpc = grpc_module()
        self.url = api_url
        self.timeout_s = timeout_s
        self.attempts = max(1, attempts)
        self.backoff_s = backoff_s
        self.page_size = page_size
        self.token_file = token_file
        self.tls = False
        self._metadata = (("authorization", f"Bearer {token}"),)
        target, tls = grpc_target(api_url, ca_file)
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
        grpc = grpc_module()
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
        grpc = grpc_module()
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
            hint = unreachable_hint(code.name, details, timeout_s=self.timeout_s, tls=self.tls)
            return ApiUnavailable(f"ChirpStack API {self.url} unreachable: {hint}"
                                  f" ({code.name}: {details})")
        return ApiError(f"ChirpStack API {self.url}: {action} failed: {code.name}: {details}")

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
