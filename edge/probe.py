"""Network probes that components' health checks build on: DNS, TCP, TLS with certificate expiry, a short MQTT session.

Each probe is a generator: it yields every Check as soon as it is made (so `edge doctor` shows
progress on a slow network) and returns what the caller needs next; `ok = yield from network(...)`.
"""

from __future__ import annotations

import queue
import socket
import ssl
import threading
import time
from collections.abc import Generator
from dataclasses import dataclass, replace
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.config import MqttEndpoint
from edge.model import Check
from edge.mqtt import make_client

NET_TIMEOUT = 3.0  # DNS, TCP, TLS, SUBACK: a dead host must not keep a technician waiting
MQTT_TIMEOUT = 5.0  # CONNACK and PUBACK; brokers on a busy uplink can be slower than a handshake


def why(exc: BaseException) -> str:
    """An exception's message, or its type's name when it has none."""
    return str(exc) or type(exc).__name__


def resolve(host: str) -> list[str]:
    """The addresses of `host`, or OSError (TimeoutError after NET_TIMEOUT)."""
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


@dataclass(frozen=True)
class Endpoint:
    """Where an HTTP upstream (or its proxy) is reached, in the shape `network` reads."""

    host: str
    port: int
    tls: bool
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""


def network(label: str, section: str, ep: MqttEndpoint | Endpoint, url_key: str) -> Generator[Check, None, bool]:
    """DNS, TCP and (for mqtts/https) TLS with certificate expiry; returns False at the first step that fails.

    Args:
        label: what the checks are named after, e.g. "upstream cloud".
        section: the config section of `ep`, named in fixes, e.g. "upstream[0]".
        ep: the broker or server to reach.
        url_key: the config key that sets its address, named in fixes.
    """
    try:
        addresses = resolve(ep.host)
    except OSError as exc:
        yield Check(f"{label} dns", "FAIL", f"cannot resolve {ep.host}: {why(exc)}",
                    f"check the host name in {url_key} and the DNS servers in /etc/resolv.conf")
        return False
    yield Check(f"{label} dns", "OK", f"{ep.host} is {', '.join(addresses[:3])}")
    started = time.monotonic()
    try:
        sock = socket.create_connection((ep.host, ep.port), timeout=NET_TIMEOUT)
    except OSError as exc:
        yield Check(f"{label} tcp", "FAIL", f"cannot connect to {ep.host}:{ep.port}: {why(exc)}",
                    f"make sure the {'server' if isinstance(ep, Endpoint) else 'broker'} runs and port {ep.port} is"
                    f" reachable from here (firewall, {url_key})")
        return False
    with sock:
        yield Check(f"{label} tcp", "OK",
                    f"connected to {ep.host}:{ep.port} in {(time.monotonic() - started) * 1000:.0f} ms")
        if not ep.tls:
            return True
        try:
            context = ssl.create_default_context(cafile=ep.ca_file or None)
            if ep.cert_file:
                context.load_cert_chain(ep.cert_file, ep.key_file)
        except (OSError, ssl.SSLError) as exc:
            yield Check(f"{label} tls", "FAIL", f"cannot load the CA or client certificate: {why(exc)}",
                        f"check ca_file, cert_file and key_file in [{section}]")
            return False
        try:
            with context.wrap_socket(sock, server_hostname=ep.host) as tls:
                cert, version = tls.getpeercert() or {}, tls.version()
        except ssl.SSLCertVerificationError as exc:
            reason = exc.verify_message or why(exc)
            fix = (f"renew the certificate of {ep.host}" if "expired" in reason
                   else f"set ca_file in [{section}] to the CA that signed {ep.host}'s certificate")
            yield Check(f"{label} tls", "FAIL", f"certificate of {ep.host} not accepted: {reason}", fix)
            return False
        except (ssl.SSLError, OSError) as exc:
            yield Check(f"{label} tls", "FAIL", f"TLS handshake with {ep.host}:{ep.port} failed: {why(exc)}",
                        f"check that port {ep.port} is a TLS listener, and cert_file/key_file if it asks for a client"
                        " certificate")
            return False
    not_after = str(cert.get("notAfter", ""))
    days = (ssl.cert_time_to_seconds(not_after) - time.time()) / 86400 if not_after else None
    if days is not None and days < 30:
        yield Check(f"{label} tls", "WARN", f"{version}; the certificate of {ep.host} expires in {days:.0f} days"
                    f" ({not_after})", f"renew the certificate of {ep.host} before {not_after}")
    else:
        yield Check(f"{label} tls", "OK",
                    f"{version}; certificate valid" + (f" for {days:.0f} more days" if days else ""))
    return True


class MqttProbe:
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
            return f"cannot connect: {why(exc)}"
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


def mqtt_session(label: str, section: str, ep: MqttEndpoint,
                 expiry: int = 0) -> Generator[Check, None, MqttProbe | None]:
    """Log in to the broker; returns the open session (close it), or None when it failed.

    Args:
        label: what the check is named after; section: the config section of `ep`, named in fixes.
        ep: the broker.
        expiry: the session expiry (MQTT 5) to ask for, to learn what the broker grants.
    """
    try:
        session = MqttProbe(ep, expiry)
    except (OSError, ssl.SSLError) as exc:
        # Typically a technician running doctor as a user who cannot read the service's 0600 secrets.
        yield Check(f"{label} mqtt", "FAIL", f"cannot read the password or TLS files: {why(exc)}",
                    "run doctor as the service's user or root (sudo), or fix the files' permissions")
        return None
    problem = session.open()
    if not problem:
        yield Check(f"{label} mqtt", "OK", f"connected as {session.ep.client_id} (MQTT {ep.protocol})")
        return session
    session.close()
    auth = "authori" in problem or "password" in problem
    fix = (f"check username and password_file in [{section}] against the broker's accounts" if auth
           else f"check that {ep.host}:{ep.port} is an MQTT broker and protocol = \"{ep.protocol}\" suits it")
    yield Check(f"{label} mqtt", "FAIL", problem, fix)
    return None
