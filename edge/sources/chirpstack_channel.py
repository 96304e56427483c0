"""Reaching ChirpStack's gRPC API: the target a configured URL names, and what to check when it cannot be reached."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

from edge.errors import ApiError


def grpc_module() -> Any:
    """The grpc package, imported on first use and told to keep its own log lines to errors."""
    # gRPC's C core prints its own INFO lines (TLS handshake details) to stderr unless told not
    # to; our messages say the same in words a technician can act on.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    # grpcio ships no type information (no py.typed, grpc-stubs not installed): treat it as Any.
    import grpc  # type: ignore[import-untyped]

    return grpc


def grpc_target(api_url: str, ca_file: str | None) -> tuple[str, bool]:
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


def unreachable_hint(code: str, details: str, *, timeout_s: float, tls: bool) -> str:
    """A hint for an UNAVAILABLE or DEADLINE_EXCEEDED call.

    Args:
        code: the gRPC status code's name.
        details: gRPC's (rather technical) failure details.
        timeout_s: the call's deadline.
        tls: whether the channel uses TLS.
    """
    text = details.lower()
    if code == "DEADLINE_EXCEEDED":
        return (f"no answer within {timeout_s:g} s; the host is down, or a firewall drops the traffic,"
                " or ChirpStack is overloaded")
    if "connection refused" in text:
        return ("nothing listens on that port; is ChirpStack running, and is the port that of its"
                " [api] bind (8080 by default)?")
    if "resolv" in text or "domain name" in text or "dns" in text:
        return "the host name does not resolve; check the name or use an IP address"
    if "handshake" in text or "ssl" in text or "certificate" in text:
        if tls:
            return ("the TLS handshake failed; if ChirpStack serves plain gRPC (its default) write host:port"
                    " or http://host:port, otherwise api_ca_file must be the CA that signed its certificate")
        return "the TLS handshake failed"
    if "http/2" in text or "http2" in text or "settings frame" in text:
        return ("something answers on that port, but not gRPC; is it ChirpStack's API port ([api] bind,"
                " 8080 by default)?" + ("" if tls else " If it serves TLS, use https://host:port."))
    return "no connection; is ChirpStack running and reachable from here?"
