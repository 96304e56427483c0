"""What a technician should check when ChirpStack's gRPC API cannot be reached, read from gRPC's failure details."""

from __future__ import annotations


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
