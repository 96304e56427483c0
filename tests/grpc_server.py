"""A real gRPC server on loopback that plays ChirpStack's API from in-memory data, for the client's tests.

Errors follow ChirpStack v4 (chirpstack/src/api/auth): a token it cannot decode is UNAUTHENTICATED
with the decoder's message; a valid key that may not do something (a tenant key listing tenants,
or reaching into another tenant) is UNAUTHENTICATED with *empty* details; ChirpStack never answers
PERMISSION_DENIED. A tenant id that is not a UUID is INVALID_ARGUMENT; an admin key asking for a
tenant that does not exist gets NOT_FOUND from TenantService.Get and an empty application list.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from chirpstack_api import api

# Called at the start of every RPC with (method, request, context); it may abort the call.
Hook = Callable[[str, Any, grpc.ServicerContext], None]


@dataclass
class Enqueued:
    """One DeviceService.Enqueue the server received."""

    id: str
    dev_eui: str
    f_port: int
    confirmed: bool
    data: bytes
    object: dict[str, Any]


@dataclass
class State:
    """ChirpStack's data as the fake serves it."""

    token: str = "secret-token"
    admin: bool = True  # False: a tenant key, TenantService.List is denied
    tenant_ids: list[str] = field(default_factory=list)
    allowed_tenants: set[str] | None = None  # None: every tenant; else others are denied (tenant key)
    revoked: bool = False  # the key was deleted in ChirpStack: the token still decodes, every call is denied
    read_only: bool = False  # a read-only key: reads pass, Enqueue is denied
    applications: dict[str, list[api.ApplicationListItem]] = field(default_factory=dict)  # by tenant
    devices: dict[str, api.Device] = field(default_factory=dict)  # by dev_eui
    profiles: dict[str, api.DeviceProfile] = field(default_factory=dict)
    enqueued: list[Enqueued] = field(default_factory=list)
    keys: dict[str, api.DeviceKeys] = field(default_factory=dict)  # by dev_eui
    lose_replies: int = 0  # writes that succeed but whose answer is lost (UNAVAILABLE), as on a cut link
    calls: list[str] = field(default_factory=list)
    hook: Hook | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_device(self, tenant_id: str, app_id: str, dev_eui: str, profile_id: str, **fields: Any) -> api.Device:
        """Add a device (and its tenant and application if new)."""
        if tenant_id not in self.tenant_ids:
            self.tenant_ids.append(tenant_id)
        apps = self.applications.setdefault(tenant_id, [])
        if all(a.id != app_id for a in apps):
            apps.append(api.ApplicationListItem(id=app_id, name=f"app-{app_id[:4]}"))
        device = api.Device(dev_eui=dev_eui, application_id=app_id, device_profile_id=profile_id,
                            name=fields.pop("name", f"dev-{dev_eui[-4:]}"), **fields)
        self.devices[dev_eui] = device
        return device


def _denied(context: grpc.ServicerContext) -> None:
    # What ChirpStack's RequestValidator answers when a valid key may not do something.
    context.abort(grpc.StatusCode.UNAUTHENTICATED, "")


def _uuid(value: str, context: grpc.ServicerContext) -> None:
    try:
        uuid.UUID(value)
    except ValueError:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"invalid character: expected a UUID, found {value!r}")


def _eui(value: str, context: grpc.ServicerContext) -> None:
    if len(value) != 16 or any(c not in "0123456789abcdef" for c in value):
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"Invalid EUI64: {value!r}")


def _key(value: str, context: grpc.ServicerContext) -> None:
    if len(value) != 32 or any(c not in "0123456789abcdef" for c in value.lower()):
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Invalid AES128 key")


def _page(items: list[Any], limit: int, offset: int) -> list[Any]:
    # ChirpStack: limit=0 returns no items, only total_count.
    return items[offset:offset + limit] if limit else []


class _Base:
    def __init__(self, state: State) -> None:
        self.state = state

    def _enter(self, method: str, request: Any, context: grpc.ServicerContext) -> None:
        with self.state.lock:
            self.state.calls.append(method)
        if self.state.hook is not None:
            self.state.hook(method, request, context)
        auth = dict(context.invocation_metadata()).get("authorization")
        if auth is None:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "no authorization provided")
        if auth != f"Bearer {self.state.token}":
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "InvalidToken")  # the JWT does not decode
        if self.state.revoked:
            _denied(context)

    def _tenant(self, tenant_id: str, context: grpc.ServicerContext) -> None:
        allowed = self.state.allowed_tenants
        if allowed is not None and tenant_id not in allowed:
            _denied(context)

    def _tenant_of_app(self, app_id: str) -> str:
        return next((t for t, apps in self.state.applications.items() if any(a.id == app_id for a in apps)), "")


class TenantService(_Base, api.TenantServiceServicer):
    def List(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._enter("TenantService.List", request, context)
        if not self.state.admin:
            _denied(context)  # only admin keys may list tenants
        items = [api.TenantListItem(id=t, name=f"tenant-{t[:4]}") for t in self.state.tenant_ids]
        return api.ListTenantsResponse(total_count=len(items), result=_page(items, request.limit, request.offset))

    def Get(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._enter("TenantService.Get", request, context)
        _uuid(request.id, context)
        if not self.state.admin:
            self._tenant(request.id, context)  # the access check comes before the existence check
        if request.id not in self.state.tenant_ids:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Object does not exist (id: {request.id})")
        return api.GetTenantResponse(tenant=api.Tenant(id=request.id, name=f"tenant-{request.id[:4]}"))


class ApplicationService(_Base, api.ApplicationServiceServicer):
    def List(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._enter("ApplicationService.List", request, context)
        if not request.tenant_id:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "tenant_id is required")
        _uuid(request.tenant_id, context)
        self._tenant(request.tenant_id, context)
        items = self.state.applications.get(request.tenant_id, [])
        return api.ListApplicationsResponse(total_count=len(items),
                                            result=_page(items, request.limit, request.offset))


class DeviceService(_Base, api.DeviceServiceServicer):
    def List(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._enter("DeviceService.List", request, context)
        if not request.application_id:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "application_id is required")
        self._tenant(self._tenant_of_app(request.application_id), context)
        devices = sorted((d for d in self.state.devices.values() if d.application_id == request.application_id),
                         key=lambda d: d.dev_eui)
        items = [api.DeviceListItem(dev_eui=d.dev_eui, name=d.name, description=d.description,
                                    device_profile_id=d.device_profile_id, tags=dict(d.tags)) for d in devices]
        return api.ListDevicesResponse(total_count=len(items), result=_page(items, request.limit, request.offset))

    def Get(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._enter("DeviceService.Get", request, context)
        device = self.state.devices.get(request.dev_eui)
        if device is not None:
            self._tenant(self._tenant_of_app(device.application_id), context)
        if device is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Object does not exist (id: {request.dev_eui})")
        return api.GetDeviceResponse(device=device)

    def _written(self, context: grpc.ServicerContext) -> None:
        """After a write: lose the answer when asked to (the write stays done)."""
        with self.state.lock:
            lose = self.state.lose_replies > 0
            self.state.lose_replies -= lose
        if lose:
            context.abort(grpc.StatusCode.UNAVAILABLE, "connection reset by peer")

    def _writable(self, device: Any, context: grpc.ServicerContext) -> None:
        if self.state.read_only:
            _denied(context)
        _eui(device.dev_eui, context)
        tenant = self._tenant_of_app(device.application_id)
        if not tenant:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Object does not exist (id: {device.application_id})")
        self._tenant(tenant, context)
        if device.device_profile_id not in self.state.profiles:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Object does not exist (id: {device.device_profile_id})")

    def Create(self, request: Any, context: grpc.ServicerContext) -> Any:
        from google.protobuf import empty_pb2

        self._enter("DeviceService.Create", request, context)
        self._writable(request.device, context)
        with self.state.lock:
            if request.device.dev_eui in self.state.devices:
                context.abort(grpc.StatusCode.ALREADY_EXISTS, "Object already exists")
            device = api.Device()
            device.CopyFrom(request.device)
            self.state.devices[device.dev_eui] = device
        self._written(context)
        return empty_pb2.Empty()

    def Update(self, request: Any, context: grpc.ServicerContext) -> Any:
        from google.protobuf import empty_pb2

        self._enter("DeviceService.Update", request, context)
        self._writable(request.device, context)
        with self.state.lock:
            if request.device.dev_eui not in self.state.devices:
                context.abort(grpc.StatusCode.NOT_FOUND, f"Object does not exist (id: {request.device.dev_eui})")
            device = api.Device()
            device.CopyFrom(request.device)
            self.state.devices[device.dev_eui] = device
        self._written(context)
        return empty_pb2.Empty()

    def _keys(self, method: str, request: Any, context: grpc.ServicerContext, *, exists: bool) -> Any:
        from google.protobuf import empty_pb2

        self._enter(method, request, context)
        if self.state.read_only:
            _denied(context)
        keys = request.device_keys
        device = self.state.devices.get(keys.dev_eui)
        if device is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Object does not exist (id: {keys.dev_eui})")
        self._tenant(self._tenant_of_app(device.application_id), context)
        _key(keys.nwk_key, context)
        if keys.app_key:
            _key(keys.app_key, context)
        with self.state.lock:
            if exists and keys.dev_eui not in self.state.keys:
                context.abort(grpc.StatusCode.NOT_FOUND, f"Object does not exist (id: {keys.dev_eui})")
            if not exists and keys.dev_eui in self.state.keys:
                context.abort(grpc.StatusCode.ALREADY_EXISTS, "Object already exists")
            stored = api.DeviceKeys()
            stored.CopyFrom(keys)
            self.state.keys[keys.dev_eui] = stored
        self._written(context)
        return empty_pb2.Empty()

    def CreateKeys(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._keys("DeviceService.CreateKeys", request, context, exists=False)

    def UpdateKeys(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._keys("DeviceService.UpdateKeys", request, context, exists=True)

    def GetKeys(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._enter("DeviceService.GetKeys", request, context)
        device = self.state.devices.get(request.dev_eui)
        if device is not None:
            self._tenant(self._tenant_of_app(device.application_id), context)
        keys = self.state.keys.get(request.dev_eui)
        if keys is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Object does not exist (id: {request.dev_eui})")
        return api.GetDeviceKeysResponse(device_keys=keys)

    def Enqueue(self, request: Any, context: grpc.ServicerContext) -> Any:
        from google.protobuf import json_format

        self._enter("DeviceService.Enqueue", request, context)
        if self.state.read_only:
            _denied(context)
        item = request.queue_item
        device = self.state.devices.get(item.dev_eui)
        if device is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Object does not exist (id: {item.dev_eui})")
        self._tenant(self._tenant_of_app(device.application_id), context)
        queue_id = str(uuid.uuid4())
        obj = json_format.MessageToDict(item.object) if item.HasField("object") else {}
        with self.state.lock:
            self.state.enqueued.append(Enqueued(queue_id, item.dev_eui, item.f_port, item.confirmed, item.data, obj))
        return api.EnqueueDeviceQueueItemResponse(id=queue_id)


class DeviceProfileService(_Base, api.DeviceProfileServiceServicer):
    def List(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._enter("DeviceProfileService.List", request, context)
        if not request.tenant_id:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "tenant_id is required")
        self._tenant(request.tenant_id, context)
        items = [api.DeviceProfileListItem(id=p.id, name=p.name) for p in self.state.profiles.values()
                 if p.tenant_id == request.tenant_id]
        return api.ListDeviceProfilesResponse(total_count=len(items),
                                              result=_page(items, request.limit, request.offset))

    def Get(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._enter("DeviceProfileService.Get", request, context)
        profile = self.state.profiles.get(request.id)
        if profile is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Object does not exist (id: {request.id})")
        return api.GetDeviceProfileResponse(device_profile=profile)


class FakeChirpStack:
    """The four services on 127.0.0.1 and a free port; `url` is what the client takes."""

    def __init__(self, state: State | None = None, tls: tuple[bytes, bytes] | None = None) -> None:
        self.state = state or State()
        self.tls = tls  # (certificate chain PEM, private key PEM): serve TLS instead of plaintext
        self._server: grpc.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        """host:port of the running server."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> FakeChirpStack:
        """Start serving (again, on the same port when restarted)."""
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        api.add_TenantServiceServicer_to_server(TenantService(self.state), server)
        api.add_ApplicationServiceServicer_to_server(ApplicationService(self.state), server)
        api.add_DeviceServiceServicer_to_server(DeviceService(self.state), server)
        api.add_DeviceProfileServiceServicer_to_server(DeviceProfileService(self.state), server)
        if self.tls is None:
            self.port = server.add_insecure_port(f"127.0.0.1:{self.port}")
        else:
            creds = grpc.ssl_server_credentials([(self.tls[1], self.tls[0])])
            self.port = server.add_secure_port(f"127.0.0.1:{self.port}", creds)
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        """Stop at once; in-flight calls are cancelled, new ones find no listener."""
        if self._server is not None:
            self._server.stop(grace=None).wait()
            self._server = None
