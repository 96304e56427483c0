"""`edge doctor`: checks an installation end to end and says, per problem, what to fix."""

from __future__ import annotations

import json
import os
import queue
import shutil
import socket
import sqlite3
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.cli import CONFIG_OPTION
from edge.cli.text import echo
from edge.config import Config, MqttEndpoint, load_config, secret_file_warnings, secret_files
from edge.errors import ConfigError
from edge.mqtt import make_client
from edge.sinks.base import Backlog

NET_TIMEOUT = 3.0  # DNS, TCP, TLS, SUBACK: a dead host must not keep a technician waiting
MQTT_TIMEOUT = 5.0  # CONNACK and PUBACK; brokers on a busy uplink can be slower than a handshake
MB = 1 << 20
FIX_CORRUPT = ("stop the service, move the buffer file aside (keep it for analysis) and start the service again;"
               " it creates an empty buffer")


@dataclass(frozen=True)
class Finding:
    """The outcome of one check; `fix` is one line, given for WARN and FAIL only."""

    check: str
    status: str  # OK, WARN or FAIL
    detail: str
    fix: str = ""

    def line(self) -> str:
        """The human form: `STATUS  check: detail — fix: ...`."""
        text = f"{self.status:<4}  {self.check}: {self.detail}"
        return f"{text} — fix: {self.fix}" if self.fix else text


class _Report:
    """Collects findings and hands each to `on_finding` at once, so progress shows on a slow network."""

    def __init__(self, on_finding: Callable[[Finding], None] | None) -> None:
        self.findings: list[Finding] = []
        self.on_finding = on_finding

    def add(self, check: str, status: str, detail: str, fix: str = "") -> None:
        finding = Finding(check, status, detail, fix if status != "OK" else "")
        self.findings.append(finding)
        if self.on_finding is not None:
            self.on_finding(finding)


def _resolve(host: str) -> list[str]:
    # getaddrinfo has no timeout of its own; a daemon thread lets us give up on a hanging resolver.
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(socket.getaddrinfo(host, None, type=socket.SOCK_STREAM))
        except OSError as exc:
            out.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(NET_TIMEOUT)
    if not out:
        raise TimeoutError(f"no answer within {NET_TIMEOUT:.0f} s")
    if isinstance(out[0], OSError):
        raise out[0]
    return sorted({str(info[4][0]) for info in out[0]})


def _why(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _age(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min" if seconds < 7200 else \
        f"{seconds / 3600:.1f} h"


@dataclass(frozen=True)
class _Endpoint:
    """Where an HTTP upstream (or its proxy) is reached, in the shape _check_network reads."""

    host: str
    port: int
    tls: bool
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""


def _check_network(r: _Report, label: str, section: str, ep: MqttEndpoint | _Endpoint, url_key: str = "") -> bool:
    """DNS, TCP and (for mqtts/https) TLS with certificate expiry; False at the first step that fails."""
    url_key = url_key or f"{section}.{'mqtt_url' if section == 'chirpstack' else 'url'}"
    try:
        addresses = _resolve(ep.host)
    except OSError as exc:
        r.add(f"{label} dns", "FAIL", f"cannot resolve {ep.host}: {_why(exc)}",
              f"check the host name in {url_key} and the DNS servers in /etc/resolv.conf")
        return False
    r.add(f"{label} dns", "OK", f"{ep.host} is {', '.join(addresses[:3])}")
    started = time.monotonic()
    try:
        sock = socket.create_connection((ep.host, ep.port), timeout=NET_TIMEOUT)
    except OSError as exc:
        r.add(f"{label} tcp", "FAIL", f"cannot connect to {ep.host}:{ep.port}: {_why(exc)}",
              f"make sure the {'server' if isinstance(ep, _Endpoint) else 'broker'} runs and port {ep.port} is"
              f" reachable from here (firewall, {url_key})")
        return False
    with sock:
        r.add(f"{label} tcp", "OK", f"connected to {ep.host}:{ep.port} in {(time.monotonic() - started) * 1000:.0f} ms")
        if not ep.tls:
            return True
        try:
            context = ssl.create_default_context(cafile=ep.ca_file or None)
            if ep.cert_file:
                context.load_cert_chain(ep.cert_file, ep.key_file)
        except (OSError, ssl.SSLError) as exc:
            r.add(f"{label} tls", "FAIL", f"cannot load the CA or client certificate: {_why(exc)}",
                  f"check ca_file, cert_file and key_file in [{section}]")
            return False
        try:
            with context.wrap_socket(sock, server_hostname=ep.host) as tls:
                cert, version = tls.getpeercert() or {}, tls.version()
        except ssl.SSLCertVerificationError as exc:
            reason = exc.verify_message or _why(exc)
            fix = (f"renew the certificate of {ep.host}" if "expired" in reason
                   else f"set ca_file in [{section}] to the CA that signed {ep.host}'s certificate")
            r.add(f"{label} tls", "FAIL", f"certificate of {ep.host} not accepted: {reason}", fix)
            return False
        except (ssl.SSLError, OSError) as exc:
            r.add(f"{label} tls", "FAIL", f"TLS handshake with {ep.host}:{ep.port} failed: {_why(exc)}",
                  f"check that port {ep.port} is a TLS listener, and cert_file/key_file if it asks for a client"
                  " certificate")
            return False
    not_after = str(cert.get("notAfter", ""))
    days = (ssl.cert_time_to_seconds(not_after) - time.time()) / 86400 if not_after else None
    if days is not None and days < 30:
        r.add(f"{label} tls", "WARN", f"{version}; the certificate of {ep.host} expires in {days:.0f} days"
              f" ({not_after})", f"renew the certificate of {ep.host} before {not_after}")
    else:
        r.add(f"{label} tls", "OK", f"{version}; certificate valid" + (f" for {days:.0f} more days" if days else ""))
    return True


class _Session:
    """A short MQTT connection under a throwaway client id, so the service's own session is never taken over."""

    def __init__(self, ep: MqttEndpoint, session_expiry_s: int = 0) -> None:
        self.ep = replace(ep, client_id=f"{ep.client_id}-doctor")
        # MQTT 5: ask for the service's session expiry to learn what the broker grants (dropped again at close).
        self.expiry = session_expiry_s if ep.protocol == "5" else 0
        self.granted_expiry: int | None = None
        self.client = make_client(self.ep, clean=True)
        self.client.connect_timeout = NET_TIMEOUT
        self.connack = threading.Event()
        self.reason: Any = None
        self.subacks: dict[int, list[Any]] = {}
        self.pubacks: dict[int, Any] = {}
        self.messages: queue.Queue[tuple[str, bytes, float]] = queue.Queue()
        self.client.on_connect = self._on_connect
        self.gone = threading.Event()
        self.client.on_disconnect = lambda *args: self.gone.set()
        self.client.on_subscribe = lambda c, u, mid, codes, p: self.subacks.__setitem__(mid, list(codes))
        self.client.on_publish = lambda c, u, mid, code, p: self.pubacks.__setitem__(mid, code)
        self.client.on_message = lambda c, u, m: self.messages.put((m.topic, bytes(m.payload), time.time()))

    def _on_connect(self, client: paho.Client, userdata: object, flags: object, reason: Any, props: object) -> None:
        self.reason = reason
        self.granted_expiry = getattr(props, "SessionExpiryInterval", None)
        self.connack.set()

    def open(self) -> str:
        """Connect and wait for CONNACK; returns '' when accepted, else what went wrong."""
        try:
            if self.ep.protocol == "5":
                self.client.connect(self.ep.host, self.ep.port, self.ep.keepalive_s, clean_start=True,
                                    properties=_expiry(PacketTypes.CONNECT, self.expiry) if self.expiry else None)
            else:
                self.client.connect(self.ep.host, self.ep.port, self.ep.keepalive_s)
        except (OSError, ValueError) as exc:
            return f"cannot connect: {_why(exc)}"
        self.client.loop_start()
        if not self.connack.wait(MQTT_TIMEOUT):
            return f"no CONNACK within {MQTT_TIMEOUT:.0f} s"
        return f"the broker refused the connection: {self.reason}" if self.reason.is_failure else ""

    def wait(self, acks: dict[int, Any], mid: int, timeout: float) -> Any:
        """The acknowledgement of `mid`, or None after `timeout` seconds."""
        end = time.monotonic() + timeout
        while mid not in acks and time.monotonic() < end:
            time.sleep(0.02)
        return acks.get(mid)

    def close(self) -> None:
        """Disconnect; the clean session leaves nothing behind at the broker."""
        self.client.disconnect(properties=_expiry(PacketTypes.DISCONNECT, 0) if self.expiry else None)
        if self.expiry and self.client.is_connected():
            self.gone.wait(MQTT_TIMEOUT)  # the DISCONNECT must go out, or our session would stay that long
        self.client.loop_stop()


def _expiry(packet_type: int, seconds: int) -> Any:
    props = Properties(packet_type)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = seconds
    return props


def _check_mqtt(r: _Report, label: str, section: str, ep: MqttEndpoint, expiry: int = 0) -> _Session | None:
    try:
        session = _Session(ep, expiry)
    except (OSError, ssl.SSLError) as exc:
        # Typically a technician running doctor as a user who cannot read the service's 0600 secrets.
        r.add(f"{label} mqtt", "FAIL", f"cannot read the password or TLS files: {_why(exc)}",
              "run doctor as the service's user or root (sudo), or fix the files' permissions")
        return None
    problem = session.open()
    if not problem:
        r.add(f"{label} mqtt", "OK", f"connected as {session.ep.client_id} (MQTT {ep.protocol})")
        return session
    session.close()
    auth = "authori" in problem or "password" in problem
    fix = (f"check username and password_file in [{section}] against the broker's accounts" if auth
           else f"check that {ep.host}:{ep.port} is an MQTT broker and protocol = \"{ep.protocol}\" suits it")
    r.add(f"{label} mqtt", "FAIL", problem, fix)
    return None


def _newest_uplink(cfg: Config) -> float | None:
    """ChirpStack time of the newest uplink any device sent, from the buffer (None when unknown)."""
    try:
        db = sqlite3.connect(f"file:{cfg.buffer.path}?mode=ro", uri=True)
        try:
            row = db.execute("SELECT max(last_time) FROM devices").fetchone()
        finally:
            db.close()
    except sqlite3.Error:
        return None  # the buffer checks report why
    return float(row[0]) if row and row[0] is not None else None


def _check_chirpstack(r: _Report, cfg: Config, listen: float) -> float | None:
    """Every ChirpStack broker check; returns how late a live uplink arrived by its own time stamp, if one came."""
    from edge.model import Malformed, Uplink
    from edge.sources.chirpstack_events import parse

    ep, topic = cfg.chirpstack.mqtt, cfg.chirpstack.topic
    want = cfg.chirpstack.session_expiry_s
    session = _check_mqtt(r, "chirpstack", "chirpstack", ep, want) \
        if _check_network(r, "chirpstack", "chirpstack", ep) else None
    if session is not None and session.granted_expiry is not None and session.granted_expiry < want:
        r.add("chirpstack session", "WARN", f"the broker grants a session expiry of {session.granted_expiry} s,"
              f" shorter than the {want} s configured: events queued during a longer outage are lost",
              "raise the broker's session expiry limit, or set chirpstack.session_expiry_s to what it grants")
    message, started = None, time.monotonic()
    if session is not None:
        # QoS 0 on a clean session: the broker queues nothing for us and nothing is acknowledged
        # on the service's behalf.
        _, mid = session.client.subscribe(topic, qos=0)
        codes = session.wait(session.subacks, mid or 0, NET_TIMEOUT)
        if codes is None or any(c.is_failure for c in codes):
            r.add("chirpstack subscribe", "FAIL", f"subscription to {topic} {'refused' if codes else 'not answered'}",
                  f"allow user {ep.username or '(anonymous)'} to read {topic} in the broker's ACL")
        else:
            r.add("chirpstack subscribe", "OK", f"subscribed to {topic}")
            try:
                message = session.messages.get(timeout=listen) if listen > 0 else None
            except queue.Empty:
                pass
        session.close()
    if message is not None:
        event = parse(*message)
        if isinstance(event, Malformed):
            r.add("chirpstack events", "WARN", f"a message on {event.topic} cannot be parsed: {event.error}",
                  "set ChirpStack's MQTT integration to send v4 JSON or protobuf events")
            return None
        r.add("chirpstack events", "OK", f"live {message[0].rsplit('/', 1)[-1]} event after"
              f" {time.monotonic() - started:.1f} s")
        return message[2] - event.time if isinstance(event, Uplink) else None
    newest = _newest_uplink(cfg)
    if newest is not None and time.time() - newest < 3600:
        r.add("chirpstack events", "OK", f"last uplink {max(0.0, time.time() - newest):.0f} s ago (buffer)")
    else:
        last = "never" if newest is None else datetime.fromtimestamp(newest, UTC).strftime("%Y-%m-%d %H:%M UTC")
        heard = f"; none in {listen:g} s of listening" if session is not None and listen > 0 else ""
        r.add("chirpstack events", "WARN", f"no uplink in the last hour (last: {last}){heard}",
              "check that sensors and gateways are online and ChirpStack's MQTT integration publishes to"
              f" {ep.host}; `edge doctor --listen 120` waits for a live event")
    return None


def _check_chirpstack_api(r: _Report, cfg: Config) -> None:
    """The gRPC API with the configured token and tenant, then how fresh the device registry cache is."""
    from edge.buffer.registry import DeviceRegistry
    from edge.errors import EdgeError
    from edge.sources.chirpstack_grpc import (
        ApiAuthError,
        ApiNotFound,
        ApiPermissionError,
        ApiUnavailable,
        ChirpStackApi,
    )

    cs = cfg.chirpstack
    if not cs.api_url:
        return  # no API configured: decoding uses MQTT metadata only, which is a valid setup
    fixes: list[tuple[type[EdgeError], str]] = [
        (ApiAuthError, f"put an API key of this ChirpStack in {cs.api_token_file}"),
        (ApiPermissionError, "set chirpstack.tenant_id to the tenant of the key, or use an admin API key"),
        (ApiNotFound, "set chirpstack.tenant_id to the id ChirpStack shows for the tenant"),
        (ApiUnavailable, "start ChirpStack, or correct chirpstack.api_url (ChirpStack's [api] bind)"),
    ]
    try:
        token = Path(cs.api_token_file).read_text().strip()
        # One attempt with a short deadline: a dead host must not keep a technician waiting.
        with ChirpStackApi(cs.api_url, token, ca_file=cs.api_ca_file or None, timeout_s=NET_TIMEOUT, attempts=1,
                           token_file=cs.api_token_file) as api:
            if cs.tenant_id:
                detail = f"token accepted at {cs.api_url}, tenant {api.get_tenant(cs.tenant_id)!r}"
            else:
                detail = f"admin token accepted at {cs.api_url}, {len(api.list_tenants())} tenant(s)"
        r.add("chirpstack api", "OK", detail)
    except OSError as exc:
        r.add("chirpstack api", "FAIL", f"cannot read {cs.api_token_file}: {_why(exc)}",
              "make the token file readable by the service user")
    except EdgeError as exc:
        fix = next((text for kind, text in fixes if isinstance(exc, kind)), "see the message")
        r.add("chirpstack api", "FAIL", str(exc), fix)
    if not Path(cfg.buffer.path).exists():
        return  # the buffer checks say so
    try:
        registry = DeviceRegistry(cfg.buffer.path, readonly=True)
        try:
            synced = [d.synced_at for d in registry.list_devices()]
        finally:
            registry.close()
    except (EdgeError, sqlite3.Error) as exc:
        r.add("device cache", "WARN", f"cannot read it: {exc}", "run `edge devices sync`")
        return
    if not synced:
        r.add("device cache", "WARN", "empty: device variables and profile codecs are not known yet",
              "run `edge devices sync` (`edge run` syncs at start once the API answers)")
        return
    age = time.time() - max(synced)
    stale = cs.api_sync_interval_s > 0 and age > 2 * cs.api_sync_interval_s + 60
    r.add("device cache", "WARN" if stale else "OK", f"{len(synced)} devices, last synced {_age(age)} ago",
          "check the service's log for 'Device registry sync failed', or run `edge devices sync`")


def _check_upstream(r: _Report, cfg: Config, index: int, publish_test: bool) -> None:
    up = cfg.upstreams[index]
    label, section = f"upstream {up.name}", f"upstream[{index}]"
    if not _check_network(r, label, section, up.mqtt):
        return
    session = _check_mqtt(r, label, section, up.mqtt)
    if session is None or not publish_test:
        if session is not None:
            session.close()
        return
    # Formatted the way the pipeline formats gap notices, so the test lands where they do.
    topic = up.notice_topic.format(edge_id=cfg.edge_id, dev_eui="", application="", application_id="", gateway_id="")
    body = json.dumps({"type": "doctor-test", "edge_id": cfg.edge_id, "upstream": up.name,
                       "time": datetime.now(UTC).isoformat(), "note": "test message from `edge doctor`; ignore it"})
    info = session.client.publish(topic, body, qos=1)
    code = session.wait(session.pubacks, info.mid, MQTT_TIMEOUT)
    session.close()
    if code is None:
        r.add(f"{label} publish", "FAIL", f"no PUBACK for the test message on {topic} within {MQTT_TIMEOUT:.0f} s",
              f"check the broker's ACL for user {up.mqtt.username or '(anonymous)'} and its logs")
    elif code.is_failure:
        r.add(f"{label} publish", "FAIL", f"test message on {topic} refused: {code}",
              f"allow user {up.mqtt.username or '(anonymous)'} to publish to {topic} in the broker's ACL")
    else:
        r.add(f"{label} publish", "OK", f"test message on {topic} acknowledged (QoS 1)")


def _probe_url(endpoint: str, fmt: str) -> str:
    """What doctor GETs to see whether an HTTP upstream accepts our credentials, without writing.

    For NGSI-LD the broker's type list (`/ngsi-ld/v1/types`), which every broker serves and guards
    like its writes; otherwise the endpoint itself, where any answer but 401/403 means the
    credentials passed.
    """
    if fmt == "ngsi-ld" and "/ngsi-ld/v1/" in endpoint:
        return endpoint.split("/ngsi-ld/v1/", 1)[0] + "/ngsi-ld/v1/types"
    return endpoint


def _no_backlog() -> Backlog:
    raise AssertionError("doctor only borrows an HTTP sink's client; it never runs the sink")


def _check_http_upstream(r: _Report, cfg: Config, index: int, publish_test: bool) -> None:
    import httpx

    from edge.sinks.http import HttpSink
    from edge.sinks.http_request import redact

    up = cfg.http_upstreams[index]
    label, section = f"upstream {up.name}", f"http_upstream[{index}]"
    parts = httpx.URL(up.endpoint)
    if up.proxy:
        proxy = httpx.URL(up.proxy)
        ep = _Endpoint(proxy.host, proxy.port or (443 if proxy.scheme == "https" else 80), False)
        if not _check_network(r, f"{label} proxy", section, ep, f"{section}.proxy"):
            return
    else:
        ep = _Endpoint(parts.host, parts.port or (443 if parts.scheme == "https" else 80), parts.scheme == "https",
                       up.ca_file, up.cert_file, up.key_file)
        if not _check_network(r, label, section, ep, f"{section}.endpoint"):
            return
    try:
        # The sink itself builds the client: the same token, headers, TLS context and proxy as `edge run`.
        sink = HttpSink(up, _no_backlog, lambda entries: [], threading.Event())
    except ValueError as exc:
        r.add(f"{label} auth", "FAIL", str(exc), "run doctor as the service's user or root (sudo), or fix the"
              f" files named in [{section}]")
        return
    probe = _probe_url(up.endpoint, up.format)
    token_fix = (f"put a valid token in {up.bearer_token_file}" if up.bearer_token_file
                 else f"the server wants credentials: set bearer_token_file (or headers) in [{section}]")
    try:
        with sink.client() as client:
            client.timeout = httpx.Timeout(MQTT_TIMEOUT)
            answer = client.get(probe, headers={"Accept": "application/json"})
            if answer.status_code in (401, 403):
                r.add(f"{label} auth", "FAIL", f"GET {redact(probe)} answered HTTP {answer.status_code}", token_fix)
                return
            if answer.status_code >= 500:
                r.add(f"{label} auth", "WARN", f"GET {redact(probe)} answered HTTP {answer.status_code}",
                      f"the server at {parts.host} has a problem of its own; see its logs")
            elif probe != up.endpoint and answer.status_code == 404:
                r.add(f"{label} auth", "FAIL", f"GET {redact(probe)} answered 404: no NGSI-LD broker there",
                      f"check the path of {section}.endpoint (…/ngsi-ld/v1/entityOperations/upsert)")
                return
            else:
                r.add(f"{label} auth", "OK", f"GET {redact(probe)} answered HTTP {answer.status_code}"
                      " (credentials not refused)")
            if not publish_test:
                return
            if not up.notice_endpoint:
                r.add(f"{label} publish", "OK", "skipped: no notice_endpoint (doctor never posts test data to the"
                      " data endpoint)")
                return
            body = {"type": "doctor-test", "edge_id": cfg.edge_id, "upstream": up.name,
                    "time": datetime.now(UTC).isoformat(), "note": "test message from `edge doctor`; ignore it"}
            posted = client.post(up.notice_endpoint, json=body)
    except httpx.HTTPError as exc:
        r.add(f"{label} auth", "FAIL", f"request to {redact(probe)} failed: {_why(exc)}",
              f"check {section}.endpoint, the proxy and that the server speaks HTTP{'S' if ep.tls else ''}")
        return
    if posted.is_success:
        r.add(f"{label} publish", "OK",
              f"test notice POSTed to {redact(up.notice_endpoint)}: HTTP {posted.status_code}")
    else:
        r.add(f"{label} publish", "FAIL", f"test notice POSTed to {redact(up.notice_endpoint)}: HTTP"
              f" {posted.status_code}", token_fix if posted.status_code in (401, 403)
              else f"check {section}.notice_endpoint and the server's logs")


def _check_secret_files(r: _Report, cfg: Config) -> None:
    warnings = secret_file_warnings(cfg)
    for warning in warnings:
        r.add("secret files", "WARN", warning, "only the service's user should read a password, token or key")
    if not warnings and secret_files(cfg):
        r.add("secret files", "OK", "password, token and key files are readable by their owner only")


def _check_disk(r: _Report, cfg: Config) -> None:
    directory = Path(cfg.buffer.path).parent
    while not directory.exists() and directory != directory.parent:
        directory = directory.parent  # before the first run the buffer's own directory may not exist yet
    usage = shutil.disk_usage(directory)
    percent = 100 * usage.free / usage.total if usage.total else 0.0
    detail = f"{usage.free / MB:.0f} MB free ({percent:.0f} %) on the filesystem of {directory}"
    if usage.free < 50 * MB:
        r.add("disk", "FAIL", detail, "free space on this filesystem or move buffer.path; new uplinks cannot be stored")
    elif usage.free < 500 * MB or percent < 10:
        r.add("disk", "WARN", detail, f"free space; the buffer may grow to {cfg.buffer.max_size_mb:g} MB (max_size_mb)")
    else:
        r.add("disk", "OK", detail)


def _check_buffer(r: _Report, cfg: Config) -> None:
    from edge.buffer.location import problem
    from edge.buffer.migrations import MIGRATIONS
    from edge.buffer.store import Buffer, connect

    path = Path(cfg.buffer.path)
    blocked = problem(path)
    if blocked:
        r.add("buffer file", "FAIL", blocked, "run doctor as the service's user; `edge run` cannot store anything")
        return
    if not path.exists():
        r.add("buffer file", "WARN", f"{path} does not exist yet", "start the service; `edge run` creates it")
        return
    if not os.access(path, os.R_OK):
        r.add("buffer file", "FAIL", f"{path} is not readable by this user",
              "run doctor as the service's user or root (sudo); the buffer is created owner-only")
        return
    r.add("buffer file", "OK", f"{path}, {path.stat().st_size / MB:.1f} MB")
    try:
        db = connect(path, readonly=True)
        try:
            result = [str(row[0]) for row in db.execute("PRAGMA quick_check")]
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
        finally:
            db.close()
    except sqlite3.Error as exc:
        r.add("buffer integrity", "FAIL", f"{path} cannot be read: {exc}", FIX_CORRUPT)
        return
    if result != ["ok"]:
        # One row may hold several problems, one per line, under a "*** in database main ***" heading.
        problems = [p for row in result for p in row.splitlines() if p and not p.startswith("***")]
        r.add("buffer integrity", "FAIL", f"quick_check found {len(problems)} problem(s): {'; '.join(problems[:2])}",
              FIX_CORRUPT)
        return
    r.add("buffer integrity", "OK", "quick_check ok")
    if version > len(MIGRATIONS):
        r.add("buffer schema", "FAIL", f"version {version} is newer than this lorawan-edge ({len(MIGRATIONS)})",
              "install the lorawan-edge version that wrote this buffer")
        return
    r.add("buffer schema", "OK" if version == len(MIGRATIONS) else "WARN", f"version {version} of {len(MIGRATIONS)}",
          "none needed: `edge run` upgrades the schema when it starts")
    buffer = Buffer(path, readonly=True)
    try:
        sinks = {s["name"]: s for s in buffer.sinks()}
    finally:
        buffer.close()
    for name in [u.name for u in cfg.upstreams] + [u.name for u in cfg.http_upstreams]:
        sink = sinks.get(name)
        if sink is None:
            r.add(f"upstream {name} backlog", "WARN", "no delivery progress recorded",
                  "restart the service so that it picks up this upstream")
            continue
        age = sink["oldest_undelivered_age_s"]
        detail = f"{sink['backlog']} uplinks waiting" + (f", the oldest for {_age(age)}" if age else "")
        status = "FAIL" if age and age > 86400 else "WARN" if age and age > 3600 else "OK"
        r.add(f"upstream {name} backlog", status, detail,
              f"see the upstream {name} checks above; the backlog is sent by itself once it accepts data")


def _ntp_synchronized() -> bool | None:
    if shutil.which("timedatectl") is None:
        return None
    try:
        done = subprocess.run(["timedatectl", "show", "-p", "NTPSynchronized", "--value"], capture_output=True,
                              text=True, timeout=NET_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    answer = done.stdout.strip()
    # Without systemd as init (containers) timedatectl exists but cannot answer.
    return {"yes": True, "no": False}.get(answer) if done.returncode == 0 else None


def _check_clock(r: _Report, cfg: Config, skew: float | None) -> None:
    synced = _ntp_synchronized()
    if synced:
        r.add("clock", "OK", "NTP synchronized (timedatectl)")
    elif synced is False:
        r.add("clock", "WARN", "the system clock is not NTP-synchronized",
              "run `timedatectl set-ntp true` and make sure an NTP server is reachable (UDP 123)")
    elif skew is not None and abs(skew) < 30:
        r.add("clock", "OK", f"agrees with ChirpStack's clock: a live uplink arrived {skew:.1f} s after its time")
    else:
        seen = "" if skew is None else f"; a live uplink arrived {skew:.0f} s after its ChirpStack time"
        r.add("clock", "WARN", f"cannot tell whether the clock is synchronized (no timedatectl answer){seen}",
              "check time sync (chrony, ntpd) by hand; `edge doctor --listen 60` compares with ChirpStack's clock")
    newest = _newest_uplink(cfg)
    if newest is not None and newest - time.time() > 300:
        r.add("clock vs buffer", "WARN", f"the newest uplink is {newest - time.time():.0f} s ahead of the local clock",
              "the local clock is behind or ChirpStack's is ahead: fix time sync on both hosts")


def _check_decoders(r: _Report, cfg: Config) -> None:
    from edge.plugins import BUILTIN, load_decoders

    loaded = load_decoders(cfg.decoding.plugins_allow, cfg.decoding.plugins_block)
    for problem in loaded.problems:
        r.add("decoders", "WARN", problem, "reinstall or upgrade that package, or list it in decoding.plugins_block")
    ids = loaded.by_id()
    for i, rule in enumerate(cfg.decoding.rules):
        if rule.decoder not in ids:
            r.add("decoders", "WARN", f"decoding.rule[{i}] names {rule.decoder!r}, which is not installed",
                  "use an id from `edge decoders list` or install the plugin that provides it")
    builtin = sum(1 for info in loaded.decoders if info.source == BUILTIN)
    r.add("decoders", "OK", f"{len(loaded.decoders)} loaded ({builtin} built-in, {len(loaded.decoders) - builtin}"
          " from plugins)")
    _check_field_maps(r, cfg)


def _check_field_maps(r: _Report, cfg: Config) -> None:
    """Every field map loads (docs/field-maps.md); a broken one leaves its codec's fields unit-less."""
    from edge.decoding.fieldmap import default_index

    index = default_index(Path(p) for p in cfg.decoding.map_paths)
    index.load_all()
    for problem in index.problems[:10]:
        r.add("field maps", "WARN", problem, "fix the map (`edge decoders test` checks it with the codec's examples)")
    if len(index.problems) > 10:
        r.add("field maps", "WARN", f"{len(index.problems) - 10} more map problems", "run `edge decoders test`")
    r.add("field maps", "OK", f"{len(index.maps)} maps for {len(index.keys)} codecs")


def _check_health(r: _Report, cfg: Config) -> None:
    """How many sensors are silent or unwell, with the worst ones (docs/health.md)."""
    from edge.cli.health import report

    if not cfg.health.enabled or not Path(cfg.buffer.path).exists():
        return
    rows = report(cfg)
    if not rows:
        return
    silent = [x for x in rows if x["state"] == "silent"]
    never = [x for x in rows if x["state"] == "never-seen"]
    unwell = [x for x in rows if x["problems"]]
    detail = (f"{len(rows)} sensors: {len(silent)} silent, {len(never)} never seen, {len(unwell)} with problems")
    if silent or never or unwell:
        worst = ", ".join(f"{x['dev_eui']} ({x['state']}{': ' + ','.join(x['problems']) if x['problems'] else ''})"
                          for x in (silent + never + unwell)[:5])
        r.add("sensor health", "WARN", f"{detail}; worst: {worst}",
              "`edge devices health --unwell` lists them; check batteries and coverage, or the device's interval")
    else:
        r.add("sensor health", "OK", detail)


def _check_codecs(r: _Report, cfg: Config) -> None:
    """The codec catalogue index: devices whose `codec` tag names a codec it lacks; Buffer for codecs."""
    from edge.buffer.registry import DeviceRegistry
    from edge.decoding.catalogue import CODEC_TAG, CatalogueIndex, index_path, is_key
    from edge.errors import EdgeError

    index = CatalogueIndex.open_for(cfg.buffer.path)
    missing: list[str] = []
    if Path(cfg.buffer.path).exists():
        try:
            cache = DeviceRegistry(cfg.buffer.path, readonly=True)
        except EdgeError:
            cache = None
        if cache is not None:
            try:
                profiles = {p.id: p for p in cache.list_profiles()}
                for device in cache.list_devices():
                    profile = profiles.get(device.profile_id)
                    for tags in (device.tags, profile.tags if profile else {}):
                        key = tags.get(CODEC_TAG, "").strip()
                        if is_key(key) and (index is None or index.codec(key) is None):
                            missing.append(f"{device.dev_eui} ({key})")
                            break
            finally:
                cache.close()
    try:
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            r.add("codecs", "WARN", f"{len(missing)} device(s) name a catalogue codec the index"
                  f" {index_path(cfg.buffer.path)} does not hold: {shown}; their uplinks fail to decode",
                  "import the catalogue that has it (`edge codecs import PATH`) or correct the device's or its"
                  " profile's `codec` tag")
        if index is not None:
            held = {i["catalogue"]: i["codecs"] for i in index.imports()}
            r.add("codecs", "OK", "codec index: " + (", ".join(f"{k} {v} codecs" for k, v in held.items()) or "empty"))
    finally:
        if index is not None:
            index.close()


def _check_quarantine(r: _Report, cfg: Config) -> None:
    """Uplinks a decoder hung on (edge/quarantine.py); said only when there are some."""
    from edge import quarantine

    held = quarantine.load(quarantine.path_for(cfg.buffer.path))
    if held:
        r.add("quarantine", "WARN", quarantine.summary(held.values()), quarantine.FIX)


def _check_service(r: _Report, cfg: Config) -> None:
    """Whether lorawan-edge itself runs and calls itself healthy (its /health on the status server)."""
    from edge.cli import service_health

    state = service_health(cfg)
    logs = "`journalctl -u lorawan-edge -n 50`"
    if not state["url"]:
        r.add("service", "WARN", f"cannot ask the running service: {state['error']}",
              "set [web] port (default 9108), or look at `systemctl status lorawan-edge`")
    elif not state["reachable"]:
        r.add("service", "FAIL", f"lorawan-edge does not answer at {state['url']}: {state['error']}",
              f"start it: `systemctl start lorawan-edge`; if it keeps stopping, read {logs}")
    elif state["healthy"]:
        r.add("service", "OK", f"running and healthy ({state['url']})")
    else:
        problems = "; ".join(state["problems"]) or state.get("error", "unknown")
        r.add("service", "FAIL", f"running but unhealthy: {problems}",
              f"see the checks above for the cause, and {logs}")


def run_checks(config_path: Path, *, publish_test: bool = False, listen: float = 0.0,
               on_finding: Callable[[Finding], None] | None = None) -> list[Finding]:
    """Run every check against the installation described by a config file.

    Args:
        config_path: the edge.toml to check; when it is invalid, only the config findings are returned.
        publish_test: also publish a QoS 1 `doctor-test` message to every upstream's notice topic.
        listen: seconds to wait for a live ChirpStack event (0: judge by the buffer's newest uplink).
        on_finding: called with each finding as soon as it is made.

    Returns:
        Every finding, in the order the checks ran.
    """
    r = _Report(on_finding)
    try:
        cfg = load_config(config_path)
    except ConfigError as exc:
        for problem in exc.problems:
            r.add("config", "FAIL", problem, f"edit {config_path}, then run `edge validate --config {config_path}`")
        return r.findings
    r.add("config", "OK", f"{config_path} is valid ({len(cfg.upstreams) + len(cfg.http_upstreams)} upstream(s))")
    _check_secret_files(r, cfg)
    skew = _check_chirpstack(r, cfg, listen)
    _check_chirpstack_api(r, cfg)
    for index in range(len(cfg.upstreams)):
        _check_upstream(r, cfg, index, publish_test)
    for index in range(len(cfg.http_upstreams)):
        _check_http_upstream(r, cfg, index, publish_test)
    _check_disk(r, cfg)
    _check_buffer(r, cfg)
    _check_clock(r, cfg, skew)
    _check_decoders(r, cfg)
    _check_codecs(r, cfg)
    _check_quarantine(r, cfg)
    _check_health(r, cfg)
    _check_service(r, cfg)
    return r.findings


@click.command()
@CONFIG_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the findings as a JSON list.")
@click.option("--publish-test", is_flag=True,
              help="Publish a QoS 1 test message to each upstream's notice topic (HTTP: POST to notice_endpoint).")
@click.option("--listen", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Seconds to wait for a live ChirpStack event (0: use the buffer's newest uplink).")
def doctor(config_path: Path, as_json: bool, publish_test: bool, listen: float) -> None:
    """Check config, brokers, certificates, ChirpStack's API, disk, buffer, clock, decoders and the service."""
    findings = run_checks(config_path, publish_test=publish_test, listen=listen,
                          on_finding=None if as_json else lambda f: echo(f.line()))
    counts = {status: sum(1 for f in findings if f.status == status) for status in ("OK", "WARN", "FAIL")}
    if as_json:
        click.echo(json.dumps([asdict(f) for f in findings], indent=2))
    else:
        verdict = "problems found" if counts["FAIL"] else "no failures"
        click.echo(f"{len(findings)} checks: {counts['OK']} OK, {counts['WARN']} WARN, {counts['FAIL']} FAIL"
                   f" — {verdict}")
    if counts["FAIL"]:
        raise SystemExit(1)
