"""ChirpStack gRPC client against a real gRPC server on loopback: paging, auth errors, retries, sync, enqueue."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
from chirpstack_api import api

from edge.buffer.registry import DeviceRegistry
from edge.errors import ApiAuthError, ApiError, ApiNotFound, ApiPermissionError, ApiUnavailable
from edge.sources.chirpstack_channel import grpc_target
from edge.sources.chirpstack_grpc import ChirpStackApi
from edge.sources.chirpstack_records import ApplicationRecord, DeviceRecord, ProfileRecord
from edge.sources.chirpstack_sync import sync
from tests.grpc_server import FakeChirpStack, State
from tests.pki import make_pki

TENANT = "52f14cd4-c6f1-4fbd-8f87-4025e1d49242"
OTHER_TENANT = "0f0e0d0c-0000-4000-8000-000000000000"
APP = "a1a1a1a1-0000-4000-8000-000000000001"
APP2 = "a2a2a2a2-0000-4000-8000-000000000002"
JS_PROFILE = "b1b1b1b1-0000-4000-8000-000000000001"
PLAIN_PROFILE = "b2b2b2b2-0000-4000-8000-000000000002"
SCRIPT = "function decodeUplink(input) { return {data: {b: input.bytes[0]}}; }"


def eui(i: int) -> str:
    return f"70b3d5{i:010x}"


def fleet(n_devices: int = 250) -> State:
    """One tenant, two applications, n devices over two profiles."""
    state = State()
    state.profiles[JS_PROFILE] = api.DeviceProfile(
        id=JS_PROFILE, name="Elsys ERS", payload_codec_runtime=api.CodecRuntime.JS, payload_codec_script=SCRIPT,
        tags={"decoder": "elsys/ers"})
    state.profiles[PLAIN_PROFILE] = api.DeviceProfile(id=PLAIN_PROFILE, name="Plain")
    for i in range(n_devices):
        state.add_device(TENANT, APP if i % 5 else APP2, eui(i), JS_PROFILE if i % 2 else PLAIN_PROFILE,
                         variables={"serial": str(i)}, tags={"floor": str(i % 3)}, is_disabled=i == 7)
    return state


@pytest.fixture
def server() -> Iterator[FakeChirpStack]:
    fake = FakeChirpStack(fleet()).start()
    yield fake
    fake.stop()


def client(fake: FakeChirpStack, token: str = "secret-token", **kw: Any) -> ChirpStackApi:
    kw.setdefault("backoff_s", 0.01)
    kw.setdefault("timeout_s", 5.0)
    return ChirpStackApi(fake.url, token, **kw)


# -- reads and paging --------------------------------------------------------------------------


def test_list_devices_pages_until_total_count(server: FakeChirpStack) -> None:
    with client(server, page_size=100) as cs:
        devices = cs.list_devices(APP)
    expected = sorted(eui(i) for i in range(250) if i % 5)
    assert [d.dev_eui for d in devices] == expected  # 200 devices: two pages of 100
    assert server.state.calls.count("DeviceService.List") == 2
    assert devices[0] == DeviceRecord(eui(1), "dev-0001", APP, JS_PROFILE, "", {"floor": "1"}, None, None)


def test_list_devices_250_in_three_pages() -> None:
    state = State()
    for i in range(250):
        state.add_device(TENANT, APP, eui(i), PLAIN_PROFILE)
    fake = FakeChirpStack(state).start()
    try:
        with client(fake, page_size=100) as cs:
            devices = cs.list_devices(APP)
    finally:
        fake.stop()
    assert len(devices) == len({d.dev_eui for d in devices}) == 250
    assert state.calls.count("DeviceService.List") == 3


def test_list_applications_and_tenants_page(server: FakeChirpStack) -> None:
    for n in range(5):
        server.state.add_device(OTHER_TENANT, f"c{n}c{n}c{n}c{n}-0000-4000-8000-00000000000{n}", eui(1000 + n),
                                PLAIN_PROFILE)
    with client(server, page_size=2) as cs:
        assert cs.list_tenants() == [TENANT, OTHER_TENANT]
        apps = cs.list_applications(OTHER_TENANT)
    assert len(apps) == 5
    assert apps[0] == ApplicationRecord("c0c0c0c0-0000-4000-8000-000000000000", OTHER_TENANT, "app-c0c0")
    assert server.state.calls.count("ApplicationService.List") == 3


def test_get_device_has_variables_and_disabled_flag(server: FakeChirpStack) -> None:
    with client(server) as cs:
        device = cs.get_device(eui(7).upper())
    assert device == DeviceRecord(eui(7), "dev-0007", APP, JS_PROFILE, "", {"floor": "1"}, {"serial": "7"}, True)


def test_get_device_profile_codec_and_tags(server: FakeChirpStack) -> None:
    with client(server) as cs:
        assert cs.get_device_profile(JS_PROFILE) == ProfileRecord(JS_PROFILE, "Elsys ERS", "JS", SCRIPT,
                                                                  {"decoder": "elsys/ers"})
        assert cs.get_device_profile(PLAIN_PROFILE).codec_runtime == "NONE"


def test_get_device_unknown_is_not_found(server: FakeChirpStack) -> None:
    with client(server) as cs, pytest.raises(ApiNotFound, match="read device ffffffffffffffff: not found"):
        cs.get_device("ffffffffffffffff")


# -- errors ------------------------------------------------------------------------------------


def test_rejected_token_gives_clear_error(server: FakeChirpStack) -> None:
    with client(server, token="wrong-token", token_file="/etc/lorawan-edge/api.token") as cs, \
            pytest.raises(ApiAuthError) as info:
        cs.list_devices(APP)
    assert str(info.value).startswith(f"ChirpStack at {server.url} rejected the token in /etc/lorawan-edge/api.token"
                                      " (InvalidToken): it is not an API key of this ChirpStack.")
    assert "wrong-token" not in str(info.value)
    assert server.state.calls == ["DeviceService.List"]  # not retried


def test_token_not_in_repr(server: FakeChirpStack) -> None:
    with client(server) as cs:
        assert "secret-token" not in repr(cs)


def test_wrong_tenant_is_permission_error(server: FakeChirpStack) -> None:
    # ChirpStack refuses a tenant key outside its tenant with UNAUTHENTICATED and no reason.
    server.state.allowed_tenants = {TENANT}
    with client(server) as cs, pytest.raises(ApiPermissionError, match=(
            f"ChirpStack at {server.url} refused to list applications of tenant {OTHER_TENANT} with the API token:"
            " the key was deleted, or it is a tenant key and this is outside its tenant.")):
        cs.list_applications(OTHER_TENANT)


def test_deleted_key_is_refused_not_rejected(server: FakeChirpStack) -> None:
    server.state.revoked = True  # the token still decodes; ChirpStack finds no such key
    with client(server) as cs, pytest.raises(ApiPermissionError, match=r"refused to read device .* was deleted"):
        cs.get_device(eui(1))
    assert server.state.calls == ["DeviceService.Get"]  # not retried


def test_tenant_key_falls_back_to_configured_tenant(server: FakeChirpStack) -> None:
    server.state.admin = False
    with client(server) as cs:
        assert cs.list_tenants(fallback_tenant_id=TENANT) == [TENANT]
        with pytest.raises(ApiPermissionError, match=r"refused to list tenants: only an admin API key may\. A tenant"
                           r" key needs its tenant's id in \[chirpstack\] tenant_id"):
            cs.list_tenants()


def test_unreachable_after_bounded_retries(server: FakeChirpStack, caplog: pytest.LogCaptureFixture) -> None:
    server.stop()
    with client(server, attempts=3) as cs, caplog.at_level(logging.WARNING), \
            pytest.raises(ApiUnavailable, match=f"ChirpStack API {server.url} unreachable: nothing listens on that"
                          r" port; is ChirpStack running.* \(UNAVAILABLE: "):
        cs.list_devices(APP)
    retries = [r for r in caplog.records if "retry" in r.getMessage()]
    assert len(retries) == 2
    assert all("secret-token" not in r.getMessage() for r in caplog.records)


def test_transient_unavailable_is_retried(server: FakeChirpStack) -> None:
    failures = iter([True])

    def flaky(method: str, request: Any, context: grpc.ServicerContext) -> None:
        if next(failures, False):
            context.abort(grpc.StatusCode.UNAVAILABLE, "restarting")

    server.state.hook = flaky
    with client(server) as cs:
        assert cs.get_device(eui(3)).dev_eui == eui(3)
    assert server.state.calls == ["DeviceService.Get", "DeviceService.Get"]


def test_deadline_exceeded_is_retried_then_reported(server: FakeChirpStack) -> None:
    server.state.hook = lambda method, request, context: time.sleep(0.5)
    with client(server, timeout_s=0.1, attempts=2) as cs, \
            pytest.raises(ApiUnavailable, match=r"unreachable: no answer within 0\.1 s.*\(DEADLINE_EXCEEDED"):
        cs.get_device(eui(3))


def test_other_status_is_api_error(server: FakeChirpStack) -> None:
    with client(server) as cs, pytest.raises(ApiError, match="INVALID_ARGUMENT: application_id is required"):
        cs.list_devices("")


@pytest.mark.parametrize(("url", "ca", "expected"), [
    ("127.0.0.1:8080", None, ("127.0.0.1:8080", False)),
    ("chirpstack.local:8080", "ca.pem", ("chirpstack.local:8080", True)),
    ("http://chirpstack.local:8080", None, ("chirpstack.local:8080", False)),
    ("https://chirpstack.example.org", None, ("chirpstack.example.org:443", True)),
    ("https://[::1]:8443/", None, ("[::1]:8443", True)),
])
def test_target_forms(url: str, ca: str | None, expected: tuple[str, bool]) -> None:
    assert grpc_target(url, ca) == expected


@pytest.mark.parametrize("url", ["mqtt://host:1883", "https://", "http://host:8080/api"])
def test_target_rejects_other_urls(url: str) -> None:
    with pytest.raises(ApiError, match="must be host:port"):
        grpc_target(url, None)


def test_tls_with_ca_file(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    fake = FakeChirpStack(fleet(3), tls=(pki.server_cert.read_bytes(), pki.server_key.read_bytes())).start()
    try:
        with ChirpStackApi(f"https://127.0.0.1:{fake.port}", "secret-token", ca_file=str(pki.ca)) as cs:
            assert cs.get_device(eui(1)).dev_eui == eui(1)
        other = make_pki(tmp_path / "other", ca_name="someone-else")
        with ChirpStackApi(f"https://127.0.0.1:{fake.port}", "secret-token", ca_file=str(other.ca),
                           attempts=1) as cs, pytest.raises(ApiUnavailable):
            cs.get_device(eui(1))
    finally:
        fake.stop()


# -- enqueue -----------------------------------------------------------------------------------


def test_enqueue_bytes(server: FakeChirpStack) -> None:
    with client(server) as cs:
        queue_id = cs.enqueue(eui(2).upper(), 10, bytes.fromhex("01ff"), confirmed=True)
    [seen] = server.state.enqueued
    assert (seen.id, seen.dev_eui, seen.f_port, seen.confirmed, seen.data, seen.object) == (
        queue_id, eui(2), 10, True, b"\x01\xff", {})


def test_enqueue_object(server: FakeChirpStack) -> None:
    with client(server) as cs:
        queue_id = cs.enqueue(eui(2), 3, {"valve": "open", "minutes": 5, "nested": {"ok": True}})
    [seen] = server.state.enqueued
    assert (seen.id, seen.f_port, seen.confirmed, seen.data) == (queue_id, 3, False, b"")
    assert seen.object == {"valve": "open", "minutes": 5.0, "nested": {"ok": True}}


def test_enqueue_is_not_retried(server: FakeChirpStack) -> None:
    server.state.hook = lambda method, request, context: context.abort(grpc.StatusCode.UNAVAILABLE, "busy")
    with client(server, attempts=5) as cs, pytest.raises(ApiUnavailable):
        cs.enqueue(eui(2), 1, b"\x01")
    assert server.state.calls == ["DeviceService.Enqueue"]


def test_enqueue_with_read_only_key_says_so(server: FakeChirpStack) -> None:
    server.state.read_only = True
    with client(server) as cs:
        assert cs.get_device(eui(2)).dev_eui == eui(2)
        with pytest.raises(ApiPermissionError, match=f"refused to enqueue a downlink for {eui(2)} with the API token:"
                           r" the key was deleted, or a read-only key \(downlinks need one that is not\)"):
            cs.enqueue(eui(2), 1, b"\x01")
    assert server.state.enqueued == []


def test_enqueue_rejects_bad_fport(server: FakeChirpStack) -> None:
    with client(server) as cs, pytest.raises(ValueError, match="f_port"):
        cs.enqueue(eui(2), 0, b"\x01")


# -- sync --------------------------------------------------------------------------------------


def test_sync_replaces_cache_with_everything(server: FakeChirpStack, tmp_path: Path) -> None:
    registry = DeviceRegistry(tmp_path / "buffer.sqlite")
    with client(server, page_size=100) as cs:
        result = sync(cs, registry)
    assert (result.tenants, result.applications, result.devices, result.profiles) == (1, 2, 250, 2)
    cached = registry.list_devices()
    assert len(cached) == 250
    seven = registry.get_device(eui(7))
    assert seven is not None and seven.variables == {"serial": "7"} and seven.is_disabled
    profile = registry.get_profile(JS_PROFILE)
    assert profile is not None and profile.codec_script == SCRIPT
    assert {a.id for a in registry.list_applications()} == {APP, APP2}


def test_sync_with_tenant_key_uses_tenant_id(server: FakeChirpStack, tmp_path: Path) -> None:
    server.state.admin = False
    registry = DeviceRegistry(tmp_path / "buffer.sqlite")
    with client(server) as cs:
        with pytest.raises(ApiPermissionError, match="refused to list tenants"):
            sync(cs, registry)
        assert sync(cs, registry, tenant_id=TENANT).devices == 250
    assert "TenantService.List" in server.state.calls


def test_sync_server_gone_mid_sync_keeps_old_cache(server: FakeChirpStack, tmp_path: Path) -> None:
    registry = DeviceRegistry(tmp_path / "buffer.sqlite")
    with client(server, page_size=100) as cs:
        sync(cs, registry)
    before = registry.list_devices()
    for device in server.state.devices.values():
        device.name = "renamed"

    def vanish(method: str, request: Any, context: grpc.ServicerContext) -> None:
        # The first page was served; ChirpStack goes away before the second.
        if method == "DeviceService.List" and request.offset > 0:
            threading.Thread(target=server.stop).start()
            context.abort(grpc.StatusCode.UNAVAILABLE, "shutting down")

    server.state.hook = vanish
    with client(server, page_size=100, attempts=3) as cs, \
            pytest.raises(ApiUnavailable, match=f"ChirpStack API {server.url} unreachable"):
        sync(cs, registry)
    assert registry.list_devices() == before
    assert all(d.name != "renamed" for d in registry.list_devices())


def test_sync_unknown_tenant_fails_and_keeps_cache(server: FakeChirpStack, tmp_path: Path) -> None:
    # An admin key and a mistyped tenant id: ApplicationService.List alone would answer an empty
    # list, and the sync would replace every cached device with nothing.
    registry = DeviceRegistry(tmp_path / "buffer.sqlite")
    with client(server) as cs:
        sync(cs, registry)
        with pytest.raises(ApiNotFound, match=f"has no tenant {OTHER_TENANT}; check \\[chirpstack\\] tenant_id"):
            sync(cs, registry, tenant_id=OTHER_TENANT)
        with pytest.raises(ApiError, match="tenant id 'tenant-1' is not a UUID; check"):
            sync(cs, registry, tenant_id="tenant-1")
    assert len(registry.list_devices()) == 250


def test_sync_tenant_key_of_another_tenant(server: FakeChirpStack, tmp_path: Path) -> None:
    server.state.admin = False
    server.state.allowed_tenants = {TENANT}
    server.state.tenant_ids.append(OTHER_TENANT)
    registry = DeviceRegistry(tmp_path / "buffer.sqlite")
    with client(server, token_file="/etc/lorawan-edge/api.token") as cs, pytest.raises(
            ApiPermissionError, match=f"refused to read tenant {OTHER_TENANT} with the token in"
                                      " /etc/lorawan-edge/api.token: the key belongs to another tenant"):
        sync(cs, registry, tenant_id=OTHER_TENANT)
    assert registry.list_devices() == []


def test_sync_skips_a_device_deleted_during_the_sync(server: FakeChirpStack, tmp_path: Path) -> None:
    gone = eui(11)

    def delete_before_get(method: str, request: Any, context: grpc.ServicerContext) -> None:
        if method == "DeviceService.Get" and request.dev_eui == gone:
            server.state.devices.pop(gone, None)

    server.state.hook = delete_before_get
    registry = DeviceRegistry(tmp_path / "buffer.sqlite")
    with client(server) as cs:
        result = sync(cs, registry)
    assert result.devices == 249
    assert registry.get_device(gone) is None and registry.get_device(eui(12)) is not None


class _NotGrpc(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.send_error(404)

    def log_message(self, *args: Any) -> None:
        pass


def test_unreachable_messages_say_what_to_check(server: FakeChirpStack) -> None:
    """The failures a technician meets, each against a real socket, each with its own hint."""
    web = ThreadingHTTPServer(("127.0.0.1", 0), _NotGrpc)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    try:
        cases = [
            (f"127.0.0.1:{web.server_address[1]}", "something answers on that port, but not gRPC"),
            (f"https://{server.url}", "the TLS handshake failed; if ChirpStack serves plain gRPC (its default) write"
                                      " host:port"),
            ("chirpstack.invalid:8080", "the host name does not resolve"),
        ]
        for url, hint in cases:
            with ChirpStackApi(url, "secret-token", attempts=1, timeout_s=5) as cs, \
                    pytest.raises(ApiUnavailable) as info:
                cs.get_device(eui(1))
            assert str(info.value).startswith(f"ChirpStack API {url} unreachable: {hint}"), str(info.value)
    finally:
        web.shutdown()
        web.server_close()
