"""Network probes for health checks: DNS, TCP, TLS with certificate expiry, and a short MQTT session."""

from __future__ import annotations

import queue
import socket
import ssl
import threading
import time
from dataclasses import dataclass, replace
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.checks import Report
from edge.config import MqttEndpoint
from edge.mqtt import make_client

NET_TIMEOUT = 3.0  # DNS, TCP, TLS, SUBACK: a dead host must not keep a technician waiting
MQTT_TIMEOUT = 5.0  # CONNACK and PUBACK; brokers on a busy uplink can be slower than a handshake


def resolve(host: str) -> list[str]:
    """The addresses of `host`, sorted; OSError (TimeoutError after NET_TIMEOUT) when it does not resolve."""
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


def why(exc: BaseException) -> str:
    """An exception as a finding's detail: its message, or its type when it has none."""
    return str(exc) or type(exc).__name__


@dataclass(frozen=True)
class Endpoint:
    """Where an HTTP upstream (or its proxy) is reached, in the shape check_network reads."""

    host: str
    port: int
    tls: bool
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""


def check_network(r: Report, label: str, section: str, ep: MqttEndpoint | Endpoint, url_key: str = "") -> bool:
    """DNS, TCP and (for mqtts/https) TLS with certificate expiry; False at the first step that fails."""
    url_key = url_key or f"{section}.{'mqtt_url' if section == 'chirpstack' else 'url'}"
    try:
        addresses = resolve(ep.host)
    except OSError as exc:
        r.add(f"{label} dns", "FAIL", f"cannot resolve {ep.host}: {why(exc)}",
              f"check the host name in {url_key} and the DNS servers in /etc/resolv.conf")
        return False
    r.add(f"{label} dns", "OK", f"{ep.host} is {', '.join(addresses[:3])}")
    started = time.monotonic()
    try:
        sock = socket.create_connection((ep.host, ep.port), timeout=NET_TIMEOUT)
    except OSError as exc:
        r.add(f"{label} tcp", "FAIL", f"cannot connect to {ep.host}:{ep.port}: {why(exc)}",
              f"make sure the {'server' if isinstance(ep, Endpoint) else 'broker'} runs and port {ep.port} is"
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
            r.add(f"{label} tls", "FAIL", f"cannot load the CA or client certificate: {why(exc)}",
                  f"check ca_file, cert_file and key_file in [{section}]")
            return False
        try:
            with context.wrap_socket(sock, server_hostname=ep.host) as tls:
                cert, version = tls.getpeercert() or {}, tls.version()
        except ssl.SSLCertVerificationError as exc:
            reason = exc.verify_message or why(exc)
            fix = (f"renew the certificate of {ep.host}" if "expired" in reason
                   else f"set ca_file in [{section}] to the CA that signed {ep.host}'s certificate")
            r.add(f"{label} tls", "FAIL", f"certificate of {ep.host} not accepted: {reason}", fix)
            return False
        except (ssl.SSLError, OSError) as exc:
            r.add(f"{label} tls", "FAIL", f"TLS handshake with {ep.host}:{ep.port} failed: {why(exc)}",
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


class Session:
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
                props = expiry_property(PacketTypes.CONNECT, self.expiry) if self.expiry else None
                self.client.connect(self.ep.host, self.ep.port, self.ep.keepalive_s, clean_start=True,
                                    properties=props)
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
        self.client.disconnect(properties=expiry_property(PacketTypes.DISCONNECT, 0) if self.expiry else None)
        if self.expiry and self.client.is_connected():
            self.gone.wait(MQTT_TIMEOUT)  # the DISCONNECT must go out, or our session would stay that long
        self.client.loop_stop()


def expiry_property(packet_type: int, seconds: int) -> Any:
    """MQTT 5 properties of a CONNECT or DISCONNECT asking for this session expiry."""
    props = Properties(packet_type)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = seconds
    return props


def check_mqtt(r: Report, label: str, section: str, ep: MqttEndpoint, expiry: int = 0) -> Session | None:
    """Connect as doctor (`<client id>-doctor`); the open session when the broker accepts, else None."""
    try:
        session = Session(ep, expiry)
    except (OSError, ssl.SSLError) as exc:
        # Typically a technician running doctor as a user who cannot read the service's 0600 secrets.
        r.add(f"{label} mqtt", "FAIL", f"cannot read the password or TLS files: {why(exc)}",
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
