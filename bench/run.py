"""lorawan-edge benchmark: throughput, backlog drain (loopback, 50 ms WAN), RSS, CPU and disk vs. a bare paho relay."""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from common import (
    BENCH,
    PYTHON,
    ROOT,
    Broker,
    Child,
    buffer_count,
    free_port,
    machine_facts,
    make_workdir,
    proc_sample,
    vm_hwm_mb,
)
from netns import UPSTREAM_ADDR, Wan

import decoders
from edge.config import UpstreamConfig

PHASES = ("relay", "e2e", "drain", "wan", "rss", "ingest", "source", "decoders")


@dataclass(frozen=True)
class Sizes:
    """How much each phase moves."""

    stream: int  # uplinks fed through the relay and through the pipeline
    drain: int  # uplinks in the loopback drain backlog
    wan: int  # uplinks in the WAN drain backlog (5 readings each)
    big: int  # uplinks in the large backlog for rss_mb_peak (0: skipped)
    wan_timeout: float  # give up on the WAN drain after this many seconds
    repeat: int  # relay and e2e runs, alternating; the best of each is reported
    source: int  # uplinks queued for each subscriber in the source phase
    devices: int = 1000
    ingest: tuple[int, ...] = (20_000, 100_000)  # backlogs queued at A for rss_mb_ingest_backlog
    ingest_devices: int = 500


FULL = Sizes(stream=100_000, drain=200_000, wan=200_000, big=1_000_000, wan_timeout=90.0, repeat=2, source=50_000)
QUICK = Sizes(stream=20_000, drain=40_000, wan=10_000, big=100_000, wan_timeout=40.0, repeat=1, source=20_000)

# The upstream settings used for every pipeline phase (reported on the `config:` line).
# The project's own defaults, so the bench measures what ships.
UPSTREAM = {"max_inflight": UpstreamConfig.max_inflight, "read_batch": UpstreamConfig.read_batch,
            "max_message_bytes": UpstreamConfig.max_message_bytes}
BUFFER = {"max_size_mb": 4096, "batch_max": 500, "batch_ms": 30}

EDGE_CONFIG = """\
[edge]
id = "bench"
log_level = "info"

[chirpstack]
mqtt_url = "{a_url}"
client_id = "lorawan-edge-bench"
reconnect_min_s = 0.05
reconnect_max_s = 0.1

[buffer]
path = "{buffer}"
max_size_mb = {max_size_mb}
batch_max = {batch_max}
batch_ms = {batch_ms}

[[upstream]]
name = "city"
url = "{b_url}"
format = "senml+json"
topic = "lorawan/{{dev_eui}}"
link_topic = "lorawan/{{dev_eui}}/link"
max_inflight = {max_inflight}
read_batch = {read_batch}
max_message_bytes = {max_message_bytes}
reconnect_min_s = 0.05
reconnect_max_s = 0.1
"""


def emit(name: str, value: object) -> None:
    """Print one `name: value` result line at once."""
    print(f"{name}: {value}", flush=True)


def note(text: str) -> None:
    """Progress for the operator, on stderr (stdout carries only results)."""
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


class Bench:
    """One benchmark run: a scratch directory, the sizes, and results shared between phases."""

    def __init__(self, sizes: Sizes, workdir: Path, baseline: str = "") -> None:
        self.sizes = sizes
        self.wd = workdir
        self.baseline_rev = baseline
        self._baseline: Path | None = None
        self.relay_rate: float | None = None
        self.backlog_copy: Path | None = None
        self.seed = 100

    def next_seed(self) -> int:
        """A fresh simulator seed, so no two feeds share uplink ids."""
        self.seed += 1
        return self.seed

    # -- building blocks --------------------------------------------------------------------------

    def edge_config(self, name: str, *, a_url: str, b_url: str, buffer: Path) -> Path:
        path = self.wd / f"{name}.toml"
        path.write_text(EDGE_CONFIG.format(a_url=a_url, b_url=b_url, buffer=buffer, **BUFFER, **UPSTREAM))
        return path

    def start_edge(self, name: str, config: Path, netns: str | None = None,
                   root: Path = ROOT) -> tuple[Child, Path]:
        log = self.wd / f"{name}.log"
        edge = Child(name, [PYTHON, "-m", "edge", "run", "--config", str(config)], netns=netns, stderr_path=log,
                     cwd=root, root=root)
        wait_log(edge, log, "Connected to ChirpStack broker", 30)
        return edge, log

    def baseline(self) -> Path:
        """The `edge` package of the --baseline revision, extracted once (git archive) into the scratch dir."""
        if self._baseline is None:
            rev = self.baseline_rev
            if rev == "auto":
                rev = subprocess.run(["git", "-C", str(ROOT), "merge-base", "HEAD", "main"], check=True,
                                     capture_output=True, text=True).stdout.strip()
            tree = self.wd / "baseline"
            tree.mkdir()
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "edge"], check=True,
                                     capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
            note(f"baseline: edge/ of {rev[:12]} in {tree}")
            self._baseline = tree
        return self._baseline

    def feed(self, name: str, port: int, count: int, seed: int, devices: int = 0) -> Child:
        """Start a publisher and wait until its events are generated (it publishes on `go`)."""
        feed = Child(name, [PYTHON, str(BENCH / "feed.py"), "--port", str(port), "--count", str(count),
                            "--devices", str(devices or self.sizes.devices), "--seed", str(seed)], stdin=True)
        feed.wait_line("ready", 60 + count / 10_000)
        return feed

    def counter(self, name: str, port: int, expect: int, *, mode: str, netns: str | None = None,
                persistent: str = "", prime: bool = False, linger: float = 0.0) -> Child:
        argv = [PYTHON, str(BENCH / "counter.py"), "--port", str(port), "--mode", mode, "--expect", str(expect),
                "--step", str(max(1, expect // 100)), "--linger", str(linger)]
        if persistent:
            argv += ["--persistent", "--client-id", persistent]
        if prime:
            argv.append("--prime")
        counter = Child(name, argv, netns=netns)
        counter.wait_line("ready", 20)
        return counter

    # -- phases -------------------------------------------------------------------------------------

    def stream(self, kind: str, seed: int, root: Path = ROOT) -> dict[str, float]:
        """relay or e2e: feed `stream` uplinks into A, count what arrives at B, rate over 10 %..90 %."""
        n = self.sizes.stream
        a, b = Broker(f"a-{kind}", self.wd), Broker(f"b-{kind}", self.wd)
        a.start()
        b.start()
        try:
            counter = self.counter(f"counter-{kind}", b.port, n, mode="messages" if kind == "relay" else "senml",
                                   linger=0.5)
            if kind == "relay":
                proc = Child("relay", [PYTHON, str(BENCH / "relay.py"), "--a-port", str(a.port),
                                       "--b-port", str(b.port)])
                proc.wait_line("ready", 20)
            else:
                buffer = self.wd / f"e2e-{seed}" / "buffer.sqlite"
                cfg = self.edge_config("e2e", a_url=f"mqtt://127.0.0.1:{a.port}", b_url=f"mqtt://127.0.0.1:{b.port}",
                                       buffer=buffer)
                proc, log = self.start_edge(f"edge-e2e-{seed}", cfg, root=root)
                wait_log(proc, log, "Connected to upstream", 20)
            feed = self.feed(f"feed-{kind}", a.port, n, seed)
            before = proc_sample(proc.pid)
            feed.send("go")
            done = counter.wait_line("done", 60 + n / 1000)
            after = proc_sample(proc.pid)
            fed = feed.wait_line("done", 60).split()
            got = int(done.split()[2])
            messages = int(counter.wait_line("final", 15).split()[2])
            if got < n:
                raise RuntimeError(f"{kind}: only {got} of {n} arrived at B")
            rate = window_rate(progress(counter), n)
            note(f"{kind}: {rate:.0f}/s (publisher {fed[4]}/s), {messages} messages at B,"
                 f" cpu {(after.cpu_s - before.cpu_s) / n * 1e6:.0f} us per uplink")
            proc.stop()
            feed.stop()
            counter.stop()
            if kind == "e2e":
                shutil.rmtree(buffer.parent, ignore_errors=True)
        finally:
            a.stop()
            b.stop()
        return {"rate": rate, "messages": messages, "cpu_us": (after.cpu_s - before.cpu_s) / n * 1e6,
                "disk": (after.write_bytes - before.write_bytes) / n}

    def run_stream(self, e2e: bool) -> None:
        """Relay (and e2e) `repeat` times, alternating, on the same feed; the best run of each counts."""
        relays: list[dict[str, float]] = []
        e2es: list[dict[str, float]] = []
        olds: list[dict[str, float]] = []
        seed = self.next_seed()
        for _ in range(self.sizes.repeat):
            relays.append(self.stream("relay", seed))
            if e2e:
                e2es.append(self.stream("e2e", seed))
                if self.baseline_rev:
                    olds.append(self.stream("e2e", seed, root=self.baseline()))
        relay = max(relays, key=lambda r: r["rate"])
        self.relay_rate = relay["rate"]
        emit("relay_uplinks_per_s", f"{relay['rate']:.0f}")
        emit("relay_cpu_us_per_msg", f"{relay['cpu_us']:.0f}")
        if e2e:
            best = max(e2es, key=lambda r: r["rate"])
            emit("e2e_uplinks_per_s", f"{best['rate']:.0f}")
            emit("e2e_ratio_vs_relay", f"{best['rate'] / relay['rate']:.2f}")
            emit("e2e_messages", f"{best['messages']:.0f}")
            emit("cpu_us_per_uplink", f"{best['cpu_us']:.0f}")
            if olds:
                old = max(olds, key=lambda r: r["rate"])
                emit("cpu_us_per_uplink_baseline", f"{old['cpu_us']:.0f} (e2e {old['rate']:.0f}/s, ratio"
                     f" {old['rate'] / relay['rate']:.2f}, {old['messages']:.0f} messages;"
                     f" edge/ of --baseline {self.baseline_rev})")
            emit("disk_bytes_written_per_uplink", f"{best['disk']:.0f}")

    def build_backlog(self, name: str, n: int) -> Path:
        """`edge run` with upstream B down while n uplinks flow in through broker A."""
        buffer = self.wd / name / "buffer.sqlite"
        a = Broker(f"a-{name}", self.wd)
        a.start()
        try:
            cfg = self.edge_config(name, a_url=f"mqtt://127.0.0.1:{a.port}", b_url=f"mqtt://127.0.0.1:{free_port()}",
                                   buffer=buffer)
            edge, _ = self.start_edge(f"edge-{name}", cfg)
            feed = self.feed(f"feed-{name}", a.port, n, self.next_seed())
            note(f"{name}: filling a backlog of {n} uplinks through `edge run` (upstream down)")
            t0 = time.monotonic()
            feed.send("go")
            end = t0 + 60 + n / 1000
            while buffer_count(buffer) < n and time.monotonic() < end:
                if edge.proc.poll() is not None:
                    raise RuntimeError(f"edge exited with {edge.proc.returncode}; see {self.wd}/edge-{name}.log")
                time.sleep(0.2)
            stored = buffer_count(buffer)
            if stored < n:
                raise RuntimeError(f"{name}: only {stored} of {n} uplinks stored")
            note(f"{name}: stored {n} in {time.monotonic() - t0:.1f} s")
            feed.stop()
            edge.stop()
        finally:
            a.stop()
        return buffer

    def prefill(self, name: str, n: int) -> Path:
        """Pipeline.handle in a helper process (no MQTT): for the large backlog only."""
        buffer = self.wd / name / "buffer.sqlite"
        cfg = self.edge_config(name, a_url="mqtt://127.0.0.1:1", b_url="mqtt://127.0.0.1:1", buffer=buffer)
        note(f"{name}: filling a backlog of {n} uplinks through Pipeline.handle")
        t0 = time.monotonic()
        filler = Child(f"prefill-{name}", [PYTHON, str(BENCH / "prefill.py"), "--config", str(cfg), "--count",
                                           str(n), "--devices", str(self.sizes.devices),
                                           "--seed", str(self.next_seed())],
                       stderr_path=self.wd / f"prefill-{name}.log")
        filler.wait_line("done", 120 + n / 2000)
        filler.stop()
        note(f"{name}: stored {buffer_count(buffer)} in {time.monotonic() - t0:.1f} s")
        return buffer

    def drain(self, name: str, buffer: Path, n: int, wan: Wan | None = None,
              timeout: float = 300.0) -> dict[str, float]:
        """Start a fresh `edge run` on a full buffer with B down, then start B and time until all n arrived."""
        edge_ns = wan.edge_ns if wan else None
        up_ns = wan.upstream_ns if wan else None
        proxy = wan is not None and not wan.netem
        if wan:
            a = Broker(f"a-{name}", self.wd, port=1883, netns=edge_ns)
            b = Broker(f"b-{name}", self.wd, port=1884 if proxy else 1883, host="127.0.0.1",
                       bind="127.0.0.1" if proxy else "0.0.0.0", netns=up_ns, persistence=True)
            b_url = f"mqtt://{UPSTREAM_ADDR}:1883"
        else:
            a = Broker(f"a-{name}", self.wd)
            b = Broker(f"b-{name}", self.wd, persistence=True)
            b_url = f"mqtt://127.0.0.1:{b.port}"
        result: dict[str, float] = {}
        a.start()
        b.start()
        try:
            if proxy:
                assert wan is not None
                delay = Child("delayproxy", [PYTHON, str(BENCH / "delayproxy.py"), "--listen-host", UPSTREAM_ADDR,
                                             "--listen-port", "1883", "--target-port", str(b.port),
                                             "--rtt-ms", str(2 * wan.one_way_ms)], netns=up_ns)
                delay.wait_line("ready", 20)
            if wan:
                probe = Child("probe", [PYTHON, str(BENCH / "netns.py"), "probe", UPSTREAM_ADDR, "1883"],
                              netns=edge_ns)
                result["rtt_ms"] = float(probe.wait_line("rtt", 30).split()[1])
                probe.stop()
            # Create the counter's persistent subscription, then take B away: while B is down the edge
            # starts on the backlog; once B is back, B queues for the counter whatever arrives first.
            client_id = f"bench-{name}-counter"
            prime = self.counter(f"prime-{name}", b.port, n, mode="senml", netns=up_ns, persistent=client_id,
                                 prime=True)
            prime.wait_line("done", 20)
            prime.stop()
            b.stop()
            cfg = self.edge_config(name, a_url=f"mqtt://127.0.0.1:{a.port}", b_url=b_url, buffer=buffer)
            edge, _ = self.start_edge(f"edge-{name}", cfg, netns=edge_ns)
            note(f"{name}: draining {n} uplinks{' over the WAN' if wan else ''}")
            before = proc_sample(edge.pid)
            t0 = time.monotonic()
            b.start()
            counter = self.counter(f"counter-{name}", b.port, n, mode="senml", netns=up_ns, persistent=client_id,
                                   linger=1.0)
            deadline = t0 + timeout
            done = ""
            while not done and time.monotonic() < deadline:
                try:
                    done = counter.wait_line("done", 1.0)
                except TimeoutError:
                    result["rss_mb"] = vm_hwm_mb(edge.pid)
            t_stop = time.monotonic()
            result["rss_mb"] = vm_hwm_mb(edge.pid)
            after = proc_sample(edge.pid)
            if done:
                final = counter.wait_line("final", 15).split()  # trailing link packs counted too
            else:
                counter.stop()
                final = counter.wait_line("done", 5).split()[1:]  # printed on SIGTERM too
            edge.stop()
            counter.stop()
            (self.wd / f"counter-{name}.txt").write_text("\n".join(counter.lines) + "\n")
            got, messages, size, packs = int(final[1]), int(final[2]), int(final[3]), int(final[4])
            t_end = float(done.split()[1]) if done else t_stop
            result.update(seconds=t_end - t0, arrived=got, messages=messages, packs=packs, mbytes=size / 1e6,
                          cpu_s=after.cpu_s - before.cpu_s)
            note(f"{name}: {got} of {n} in {t_end - t0:.1f} s, {messages} messages, edge cpu {result['cpu_s']:.1f} s")
        finally:
            b.stop()
            a.stop()
            Child.stop_all_named("delayproxy")
        return result

    def run_drain(self) -> None:
        n = self.sizes.drain
        buffer = self.build_backlog("backlog", n)
        if self.sizes.wan == n:
            # The WAN phase drains a copy of the same backlog (copied before this drain moves the cursor).
            copy = self.wd / "backlog-copy"
            copy.mkdir(exist_ok=True)
            for suffix in ("", "-wal"):
                src = Path(f"{buffer}{suffix}")
                if src.exists():
                    shutil.copyfile(src, copy / f"buffer.sqlite{suffix}")
            self.backlog_copy = copy / "buffer.sqlite"
        r = self.drain("drain", buffer, n)
        if r["arrived"] < n:
            emit("drain_records_per_s", f"failed ({r['arrived']:.0f} of {n} arrived)")
            return
        rate = n / r["seconds"]
        emit("drain_records_per_s", f"{rate:.0f}")
        if self.relay_rate:
            emit("drain_ratio_vs_relay", f"{rate / self.relay_rate:.2f}")
        emit("drain_messages", f"{r['messages']:.0f} ({r['packs']:.0f} measurement packs, {n / r['packs']:.1f} uplinks"
             f" per pack, {r['mbytes']:.0f} MB)")
        emit("drain_cpu_us_per_uplink", f"{r['cpu_s'] / n * 1e6:.0f}")
        emit("rss_mb_peak_200k" if n == 200_000 else f"rss_mb_peak_{n // 1000}k", f"{r['rss_mb']:.1f}")

    def run_wan(self) -> None:
        n = self.sizes.wan
        wan = Wan()
        if not wan.setup():
            emit("drain_wan_s", f"skipped ({wan.reason})")
            return
        try:
            buffer = self.backlog_copy if self.backlog_copy and self.sizes.drain == n else None
            if buffer is None:
                buffer = self.build_backlog("backlog-wan", n)
            r = self.drain("wan", buffer, n, wan=wan, timeout=self.sizes.wan_timeout)
        finally:
            wan.teardown()
        how = "tc netem 25 ms each way" if wan.netem else f"delay proxy 25 ms each way ({wan.reason})"
        emit("wan_rtt_ms", f"{r['rtt_ms']:.1f} ({how})")
        readings = n * 5
        if r["arrived"] < n:
            rate = r["arrived"] / r["seconds"]
            projected = f"~{n / rate:.0f} s for all at that rate" if rate else "nothing arrived"
            emit("drain_wan_s", f">{r['seconds']:.0f} (time limit: {r['arrived']:.0f} of {n} uplinks arrived,"
                 f" {r['messages']:.0f} messages; {projected})")
        else:
            emit("drain_wan_s", f"{r['seconds']:.1f} ({n} uplinks = {readings} readings, {r['messages']:.0f} messages)")
        emit("rss_mb_peak_wan", f"{r['rss_mb']:.1f}")

    def run_rss(self) -> None:
        n = self.sizes.big
        buffer = self.prefill("big", n)
        r = self.drain("big", buffer, n, timeout=120 + n / 2000)
        if r["arrived"] < n:
            emit("rss_mb_peak", f"failed ({r['arrived']:.0f} of {n} arrived); peak {r['rss_mb']:.1f}")
            return
        emit("rss_mb_peak", f"{r['rss_mb']:.1f} ({n} uplinks backlog)")
        emit(f"drain_{n // 1000}k_records_per_s", f"{n / r['seconds']:.0f}")

    def run_ingest(self) -> None:
        """rss_mb_ingest_backlog: a backlog queued at A for the edge's persistent session, then `edge run`."""
        emit("rss_mb_ingest_backlog", self.ingest(ROOT))
        if self.baseline_rev:
            emit("rss_mb_ingest_backlog_baseline", self.ingest(self.baseline()) + f"; --baseline {self.baseline_rev}")

    def ingest(self, root: Path) -> str:
        figures = []
        for n in self.sizes.ingest:
            name = f"ingest-{n // 1000}k-{'base' if root != ROOT else 'tree'}"
            buffer = self.wd / name / "buffer.sqlite"
            a = Broker(f"a-{name}", self.wd)
            a.start()
            try:
                # Upstream B stays down: the figure is the ingest's alone (the drain has its own lines).
                cfg = self.edge_config(name, a_url=f"mqtt://127.0.0.1:{a.port}",
                                       b_url=f"mqtt://127.0.0.1:{free_port()}", buffer=buffer)
                edge, _ = self.start_edge(f"edge-{name}-session", cfg, root=root)  # the persistent session
                edge.stop()
                feed = self.feed(f"feed-{name}", a.port, n, self.next_seed(), devices=self.sizes.ingest_devices)
                note(f"{name}: queueing {n} uplinks from {self.sizes.ingest_devices} devices at A (edge stopped)")
                feed.send("go")
                feed.wait_line("done", 120 + n / 500)
                feed.stop()
                edge, log = self.start_edge(f"edge-{name}", cfg, root=root)
                before = proc_sample(edge.pid)
                t0 = time.monotonic()
                end = t0 + 120 + n / 500
                while buffer_count(buffer) < n and time.monotonic() < end:
                    if edge.proc.poll() is not None:
                        raise RuntimeError(f"edge exited with {edge.proc.returncode}; see {log}")
                    time.sleep(0.1)
                seconds = time.monotonic() - t0
                stored = buffer_count(buffer)
                hwm = vm_hwm_mb(edge.pid)
                cpu_us = (proc_sample(edge.pid).cpu_s - before.cpu_s) / n * 1e6
                edge.stop()
                if stored < n:
                    raise RuntimeError(f"{name}: only {stored} of {n} queued uplinks stored; peak {hwm:.1f} MiB")
                note(f"{name}: stored {n} in {seconds:.1f} s, VmHWM {hwm:.1f} MiB, {cpu_us:.0f} us CPU per uplink")
                figures.append(f"{n // 1000}k {hwm:.1f} MiB ({n / seconds:.0f}/s, {cpu_us:.0f} us CPU each)")
            finally:
                a.stop()
            shutil.rmtree(buffer.parent, ignore_errors=True)
        return ", ".join(figures) + f"; {self.sizes.ingest_devices} devices, upstream down"

    def run_source(self) -> None:
        """source_cpu_us_per_msg_*: the subscriber candidates drain the same queued backlog, each in its own process."""
        n = self.sizes.source
        impls = [("legacy", "5"), ("paho", "5"), ("ours", "5"), ("legacy", "3.1.1"), ("paho", "3.1.1"),
                 ("ours", "3.1.1")]
        if not self.baseline_rev:
            impls = [i for i in impls if i[0] != "legacy"]
        a = Broker("a-source", self.wd)
        a.start()
        try:
            def probe(impl: str, protocol: str, *extra: str) -> Child:
                tree = ["--tree", str(self.baseline())] if impl == "legacy" else []
                return Child(f"probe-{impl}-{protocol}", [PYTHON, str(BENCH / "source_probe.py"), "--impl", impl,
                                                          "--port", str(a.port), "--protocol", protocol,
                                                          "--count", str(n), *tree, *extra],
                             stderr_path=self.wd / f"probe-{impl}-{protocol}.log")

            for impl, protocol in impls:  # every session exists before anything is queued
                p = probe(impl, protocol, "--prime")
                p.wait_line("primed", 20)
                p.stop()
            feed = self.feed("feed-source", a.port, n, self.next_seed())
            note(f"source: queueing {n} uplinks for {len(impls)} subscriber sessions")
            feed.send("go")
            feed.wait_line("done", 120 + n / 500)
            feed.stop()
            results: dict[str, list[str]] = {"5": [], "3.1.1": []}
            for impl, protocol in impls:
                p = probe(impl, protocol)
                _, got, us, rate, rss = p.wait_line("done", 120 + n / 500).split()
                p.stop()
                note(f"source {impl} MQTT {protocol}: {got} messages, {us} us CPU each, {rate}/s, maxrss {rss} MiB")
                results[protocol].append(f"{impl} {float(us):.1f}")
            for protocol, line in results.items():
                emit(f"source_cpu_us_per_msg_{protocol.replace('.', '')}",
                     ", ".join(line) + f" ({n} queued, batches of 500)")
        finally:
            a.stop()


def wait_log(child: Child, log: Path, needle: str, timeout: float) -> None:
    """Wait until `needle` appears in a child's log file."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if child.proc.poll() is not None:
            raise RuntimeError(f"{child.name} exited with {child.proc.returncode}; see {log}")
        if log.exists() and needle in log.read_text(errors="replace"):
            return
        time.sleep(0.05)
    raise TimeoutError(f"{child.name}: '{needle}' not logged within {timeout} s; see {log}")


def progress(counter: Child) -> list[tuple[float, int, int]]:
    """(time, count, messages) from a counter's progress lines."""
    out = []
    for line in list(counter.lines):
        if line.startswith("p "):
            _, t, count, messages = line.split()
            out.append((float(t), int(count), int(messages)))
    return out


def window_rate(points: list[tuple[float, int, int]], total: int, lo: float = 0.1, hi: float = 0.9) -> float:
    """Arrivals per second between the first progress points at lo and hi of the total (warm-up and tail cut)."""
    start = next(p for p in points if p[1] >= lo * total)
    end = next(p for p in points if p[1] >= hi * total)
    return (end[1] - start[1]) / (end[0] - start[0])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="smaller counts (about 2 minutes)")
    ap.add_argument("--only", choices=PHASES, help="run one phase (e2e and drain also run the relay baseline)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory (logs, buffers)")
    ap.add_argument("--max-inflight", type=int, default=UPSTREAM["max_inflight"], help="upstream max_inflight")
    ap.add_argument("--read-batch", type=int, default=UPSTREAM["read_batch"], help="upstream read_batch")
    ap.add_argument("--baseline", default="", metavar="REV",
                    help="also measure edge/ of this git revision ('auto': where HEAD left main) in e2e and source")
    args = ap.parse_args()
    UPSTREAM.update(max_inflight=args.max_inflight, read_batch=args.read_batch)

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    atexit.register(Child.stop_all)
    sizes = QUICK if args.quick else FULL
    wd = make_workdir()
    bench = Bench(sizes, wd, args.baseline)
    started = time.monotonic()
    emit("machine", machine_facts())
    emit("config", " ".join(f"{k}={v}" for k, v in {**UPSTREAM, **BUFFER}.items())
         + f" devices={sizes.devices} format=senml+json protocol=5")
    wanted = set(PHASES) if args.only is None else {args.only}
    if wanted & {"e2e", "drain"}:
        wanted.add("relay")
    phases: list[tuple[str, Callable[[], None]]] = [
        ("relay", lambda: bench.run_stream(e2e="e2e" in wanted)),
        ("drain", bench.run_drain),
        ("wan", bench.run_wan),
        ("rss", bench.run_rss),
        ("ingest", bench.run_ingest),
        ("source", bench.run_source),
        ("decoders", lambda: decoders.run(emit, 1.0 if args.quick else 3.0)),
    ]
    failed = 0
    try:
        for name, run in phases:
            if name not in wanted or (name == "rss" and not sizes.big):
                continue
            try:
                run()
            except (RuntimeError, TimeoutError, OSError) as exc:
                # One phase failing (e.g. records missing upstream) must not hide the others.
                failed += 1
                emit(f"{name}_error", str(exc))
                Child.stop_all()
    except KeyboardInterrupt:
        note("interrupted; stopping everything")
        return 130
    finally:
        Child.stop_all()
        if args.keep:
            note(f"scratch directory kept: {wd}")
        else:
            shutil.rmtree(wd, ignore_errors=True)
    emit("runtime_s", f"{time.monotonic() - started:.0f} (load1 at end {os.getloadavg()[0]:.2f})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
