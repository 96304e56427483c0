"""Starts a throwaway local Mosquitto on a free loopback port (demo, tests, benchmarks)."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Mosquitto:
    """A Mosquitto process with its own config and persistence directory; a context manager.

    `stop()` and `start()` keep the port and the persistence file, so a test can take the broker
    away and bring it back with its queued messages, as a real broker restart does.
    """

    def __init__(self, port: int | None = None, *, host: str = "127.0.0.1", persistence: bool = True,
                 extra: str = "", head: str = "") -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(binary).exists():
            raise RuntimeError("mosquitto is not installed (Debian: apt-get install mosquitto)")
        self.binary = binary
        self.host = host
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="edge-mosquitto-"))
        self._give_to_broker_user()
        self.conf = self.dir / "mosquitto.conf"
        # max_queued_messages 0 = unlimited: Mosquitto's default of 1000 queued messages per
        # offline persistent session would drop events while the gateway is down.
        # `head` holds global options (e.g. per_listener_settings), `extra` further listeners.
        self.conf.write_text(
            f"{head}\nlistener {self.port} {host}\nallow_anonymous true\n"
            f"persistence {'true' if persistence else 'false'}\npersistence_location {self.dir}/\n"
            "autosave_interval 1\nmax_queued_messages 0\nmax_inflight_messages 0\n"
            f"log_dest file {self.dir}/mosquitto.log\n{extra}\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def _give_to_broker_user(self) -> None:
        # Started as root, Mosquitto drops to the `mosquitto` user; without this it could not
        # write its persistence file or log here, and a restart would lose queued sessions.
        if os.geteuid() != 0:
            return
        try:
            user = pwd.getpwnam("mosquitto")
        except KeyError:
            return
        os.chown(self.dir, user.pw_uid, user.pw_gid)

    @property
    def url(self) -> str:
        """mqtt://host:port of this broker."""
        return f"mqtt://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        """Start the broker and wait until it accepts connections."""
        self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}; see {self.dir}/mosquitto.log")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on {self.port} within {timeout} s")

    def stop(self) -> None:
        """Stop the broker (SIGTERM, so it saves its persistence file)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def close(self) -> None:
        """Stop and remove the broker's files."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Mosquitto:
        self.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
