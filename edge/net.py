"""Network address rules shared by config checks, the HTTP sink and the status server (stdlib only)."""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    """True for `localhost` and loopback addresses (127.0.0.0/8, ::1): what is sent there stays on this host.

    A host name other than `localhost` is False: it may resolve to any interface, so it counts as exposed.
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
