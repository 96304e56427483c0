"""Shared bench helpers: child processes with line output, Mosquitto brokers (optionally in a netns), /proc stats."""

from __future__ import annotations

import os
import platform
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PYTHON = sys.executable


def child_env(root: Path = ROOT) -> dict[str, str]:
    """Environment for children: the package importable from `root` (the work tree), no stray buffering."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(root) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def netns_prefix(netns: str | None) -> list[str]:
    """Command prefix that runs a program inside `netns` (none for the current namespace)."""
    return ["ip", "netns", "exec", netns] if netns else []


class Child:
    """A child process whose stdout lines are collected by a reader thread; registered for cleanup."""

    registry: list[Child] = []  # noqa: RUF012 - process-wide registry, cleaned up by stop_all()

    def __init__(self, name: str, argv: Sequence[str], *, netns: str | None = None, stdin: bool = False,
                 stderr_path: Path | None = None, cwd: Path = ROOT, root: Path = ROOT) -> None:
        self.name = name
        self._stderr = stderr_path.open("ab") if stderr_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            [*netns_prefix(netns), *argv], stdout=subprocess.PIPE, stderr=self._stderr,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL, cwd=cwd, env=child_env(root),
        )
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, name=f"read-{name}", daemon=True)
        self._reader.start()
        Child.registry.append(self)

    @property
    def pid(self) -> int:
        """Process id (ip netns exec execs in place, so this is the program's own pid)."""
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._cond:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_line(self, prefix: str, timeout: float) -> str:
        """The first output line starting with `prefix`; raises on timeout or exit."""
        end = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for line in self.lines[seen:]:
                    if line.startswith(prefix):
                        return line
                seen = len(self.lines)
                left = end - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{self.name}: no '{prefix}' line within {timeout:.0f} s")
                if self.proc.poll() is not None and not self._reader.is_alive():
                    raise RuntimeError(f"{self.name} exited with {self.proc.returncode} before '{prefix}'")
                self._cond.wait(min(left, 0.2))

    def send(self, text: str) -> None:
        """Write a line to the child's stdin."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode() + b"\n")
        self.proc.stdin.flush()

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL after `timeout` seconds."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._stderr is not subprocess.DEVNULL:
            self._stderr.close()  # type: ignore[union-attr]
        if self in Child.registry:
            Child.registry.remove(self)

    @classmethod
    def stop_all_named(cls, name: str) -> None:
        """Stop the running children called `name`."""
        for child in [c for c in cls.registry if c.name == name]:
            child.stop()

    @classmethod
    def stop_all(cls) -> None:
        """Stop every child still running, newest first."""
        for child in reversed(list(cls.registry)):
            try:
                child.stop(timeout=5.0)
            except (OSError, subprocess.SubprocessError) as exc:  # keep stopping the others
                print(f"warning: could not stop {child.name}: {exc}", file=sys.stderr)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Broker:
    """A throwaway Mosquitto 2 with the project's broker settings, optionally inside a network namespace.

    Unlike edge.broker.Mosquitto it sets `user root` (as root, Mosquitto otherwise drops to the
    mosquitto user and can neither write its log nor save persistence in a root-owned temp dir) and
    `autosave_interval 0` (persistence is written at shutdown only, not as a full snapshot every second
    while a backlog is queued), and it can run inside a namespace.
    """

    def __init__(self, name: str, workdir: Path, *, port: int | None = None, host: str = "127.0.0.1",
                 bind: str | None = None, netns: str | None = None, persistence: bool = False) -> None:
        self.name = name
        self.host = host
        self.port = port or free_port()
        self.netns = netns
        self.dir = workdir / f"broker-{name}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = self.dir / "mosquitto.log"
        self.conf = self.dir / "mosquitto.conf"
        listen = bind if bind is not None else host
        user = "user root\n" if os.geteuid() == 0 else ""
        self.conf.write_text(
            f"listener {self.port} {listen}\nallow_anonymous true\n{user}"
            f"persistence {'true' if persistence else 'false'}\npersistence_location {self.dir}/\n"
            "autosave_interval 0\nmax_queued_messages 0\nmax_inflight_messages 0\n"
            f"log_dest file {self.log}\n"
        )
        self.binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.child: Child | None = None

    def start(self, timeout: float = 10.0) -> None:
        """Start and wait until the broker logs that it is running."""
        mark = self.log.stat().st_size if self.log.exists() else 0
        self.child = Child(f"mosquitto-{self.name}", [self.binary, "-c", str(self.conf)], netns=self.netns)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.child.proc.poll() is not None:
                raise RuntimeError(f"mosquitto {self.name} exited; see {self.log}")
            if self.log.exists():
                with self.log.open("rb") as f:
                    f.seek(mark)
                    if b" running" in f.read():
                        if self.netns is None:
                            _wait_tcp(self.host, self.port, end - time.monotonic())
                        return
            time.sleep(0.02)
        raise RuntimeError(f"mosquitto {self.name} did not start within {timeout} s; see {self.log}")

    def stop(self) -> None:
        """SIGTERM (Mosquitto saves persistence on the way out)."""
        if self.child is not None:
            self.child.stop()
            self.child = None

    @property
    def pid(self) -> int:
        """The broker's pid."""
        assert self.child is not None
        return self.child.pid


def _wait_tcp(host: str, port: int, timeout: float) -> None:
    end = time.monotonic() + max(timeout, 0.5)
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > end:
                raise
            time.sleep(0.02)


# -- /proc ------------------------------------------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcSample:
    """CPU seconds and bytes written of one process at one moment."""

    cpu_s: float
    write_bytes: int


def proc_sample(pid: int) -> ProcSample:
    """utime+stime (s) from /proc/<pid>/stat and write_bytes from /proc/<pid>/io."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of stat(5)
    write = 0
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            write = int(line.split()[1])
    return ProcSample(cpu, write)


def vm_hwm_mb(pid: int) -> float:
    """Peak resident set size (VmHWM) of a process in MiB (as /proc reports it, kB / 1024)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# -- facts and buffer -------------------------------------------------------------------------------

def machine_facts() -> str:
    """cpu, python, paho, sqlite and mosquitto versions, kernel and current load on one line."""
    import paho.mqtt

    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mosq = "?"
    try:
        out = subprocess.run([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-h"], capture_output=True,
                             timeout=5, check=False).stdout.decode()
        mosq = out.split("version", 1)[1].split()[0] if "version" in out else "?"
    except (OSError, subprocess.TimeoutExpired):
        pass
    return (f"cpu={cpu.replace(' ', '_')}x{os.cpu_count()} python={platform.python_version()}"
            f" paho={paho.mqtt.__version__} sqlite={sqlite3.sqlite_version} mosquitto={mosq}"
            f" kernel={platform.release()} load1={os.getloadavg()[0]:.2f}")


def buffer_count(path: Path) -> int:
    """Uplinks ever stored in a buffer file (read-only; 0 if not there yet)."""
    if not path.exists():
        return 0
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            # The AUTOINCREMENT high-water mark: O(1), and equal to the row count while nothing is dropped.
            row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'uplinks'").fetchone()
            return int(row[0]) if row else 0
        finally:
            db.close()
    except sqlite3.Error:
        return 0


def make_workdir() -> Path:
    """A fresh scratch directory on disk (not tmpfs, so write_bytes is real)."""
    base = Path(os.environ.get("EDGE_BENCH_DIR", tempfile.gettempdir()))
    return Path(tempfile.mkdtemp(prefix="edge-bench-", dir=base))
