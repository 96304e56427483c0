"""A two-namespace WAN for the bench: veth pair on a private /30, 25 ms each way (netem, else a delay proxy)."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field

EDGE_ADDR = "10.250.50.1"
UPSTREAM_ADDR = "10.250.50.2"
PREFIX = 30


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=20, check=False)


@dataclass
class Wan:
    """Namespaces `edge` and `upstream` joined by a veth pair; only these namespaces hold the /30."""

    one_way_ms: float = 25.0
    tag: str = field(default_factory=lambda: str(os.getpid()))
    netem: bool = False
    created: list[str] = field(default_factory=list)
    reason: str = ""

    @property
    def edge_ns(self) -> str:
        """Namespace the edge process runs in."""
        return f"edgebench-e{self.tag}"

    @property
    def upstream_ns(self) -> str:
        """Namespace the upstream broker runs in."""
        return f"edgebench-u{self.tag}"

    def setup(self) -> bool:
        """Create everything; False (with `reason`) if namespaces cannot be made here."""
        for ns in (self.edge_ns, self.upstream_ns):
            r = _ip("ip", "netns", "add", ns)
            if r.returncode != 0:
                self.reason = f"ip netns add failed: {r.stderr.strip() or r.returncode}"
                self.teardown()
                return False
            self.created.append(ns)
        ve, vu = f"ebe{self.tag}"[:15], f"ebu{self.tag}"[:15]
        steps = [
            ("ip", "link", "add", ve, "netns", self.edge_ns, "type", "veth", "peer", "name", vu,
             "netns", self.upstream_ns),
            ("ip", "-n", self.edge_ns, "addr", "add", f"{EDGE_ADDR}/{PREFIX}", "dev", ve),
            ("ip", "-n", self.upstream_ns, "addr", "add", f"{UPSTREAM_ADDR}/{PREFIX}", "dev", vu),
            ("ip", "-n", self.edge_ns, "link", "set", "lo", "up"),
            ("ip", "-n", self.upstream_ns, "link", "set", "lo", "up"),
            ("ip", "-n", self.edge_ns, "link", "set", ve, "up"),
            ("ip", "-n", self.upstream_ns, "link", "set", vu, "up"),
        ]
        for step in steps:
            r = _ip(*step)
            if r.returncode != 0:
                self.reason = f"{' '.join(step[:4])} failed: {r.stderr.strip()}"
                self.teardown()
                return False
        # netem on each side; a large queue limit so the qdisc never drops at these rates.
        ok = True
        for ns, dev in ((self.edge_ns, ve), (self.upstream_ns, vu)):
            r = _ip("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "netem", "delay",
                    f"{self.one_way_ms:g}ms", "limit", "100000")
            if r.returncode != 0:
                ok = False
                self.reason = f"tc netem: {r.stderr.strip()}"
                break
        self.netem = ok
        if not ok:
            for ns, dev in ((self.edge_ns, ve), (self.upstream_ns, vu)):
                _ip("ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", dev, "root")
        return True

    def teardown(self) -> None:
        """Delete the namespaces this instance created (the veth pair goes with them)."""
        for ns in reversed(self.created):
            _ip("ip", "netns", "del", ns)
        self.created.clear()


def probe_rtt(host: str, port: int, count: int = 5) -> float:
    """Median MQTT PINGREQ→PINGRESP time in ms over a fresh MQTT 3.1.1 connection."""
    client_id = b"edgebench-probe"
    var = b"\x00\x04MQTT\x04\x02\x00\x1e"
    payload = struct.pack("!H", len(client_id)) + client_id
    body = var + payload
    with socket.create_connection((host, port), timeout=5) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(bytes([0x10, len(body)]) + body)
        if s.recv(4)[:1] != b"\x20":
            raise RuntimeError("no CONNACK")
        times = []
        for _ in range(count):
            t = time.perf_counter()
            s.sendall(b"\xc0\x00")
            if s.recv(2) != b"\xd0\x00":
                raise RuntimeError("no PINGRESP")
            times.append((time.perf_counter() - t) * 1000)
        s.sendall(b"\xe0\x00")
    times.sort()
    return times[len(times) // 2]


if __name__ == "__main__":
    # `python bench/netns.py probe HOST PORT` (run inside the edge namespace by run.py).
    if len(sys.argv) == 4 and sys.argv[1] == "probe":
        print(f"rtt {probe_rtt(sys.argv[2], int(sys.argv[3])):.1f}", flush=True)
        sys.exit(0)
    print("usage: netns.py probe HOST PORT", file=sys.stderr)
    sys.exit(2)
