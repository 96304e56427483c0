"""Starts a throwaway RabbitMQ with its MQTT plugin on free loopback ports, like edge.broker.Mosquitto (tests only).

RabbitMQ 3.10 (Debian 12) speaks MQTT 3.1.1 only. Its node gets its own name, ports, data folder,
cookie (HOME) and enabled-plugins file, so tests never touch a system RabbitMQ; `stop()` and
`start()` keep the data folder, so durable session queues survive a restart as they would in the field.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from edge.broker import free_port

SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")


def available() -> bool:
    """True when Debian's rabbitmq-server is installed (scripts/setup --test installs it)."""
    return SERVER.exists()


class RabbitMq:
    """A RabbitMQ node with the MQTT plugin; a context manager."""

    def __init__(self) -> None:
        self.host = "127.0.0.1"
        self.port = free_port()  # MQTT
        self.amqp_port = free_port()
        self.dist_port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="edge-rabbitmq-"))
        self.node = f"edge{self.port}@localhost"
        (self.dir / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
        # Anonymous MQTT clients act as guest; guest may connect from loopback only (the default).
        (self.dir / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{self.amqp_port}\n"
            f"mqtt.listeners.tcp.1 = 127.0.0.1:{self.port}\n"
            "mqtt.allow_anonymous = true\n"
            "mqtt.default_user = guest\nmqtt.default_pass = guest\n"
            "log.file.level = warning\n")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """mqtt://host:port of this broker."""
        return f"mqtt://{self.host}:{self.port}"

    def _env(self) -> dict[str, str]:
        return {**os.environ, "HOME": str(self.dir), "RABBITMQ_NODENAME": self.node,
                "RABBITMQ_NODE_PORT": str(self.amqp_port), "RABBITMQ_DIST_PORT": str(self.dist_port),
                "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq"),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
                "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"), "RABBITMQ_LOG_BASE": str(self.dir / "log"),
                "RABBITMQ_PID_FILE": str(self.dir / "rabbit.pid")}

    def start(self, timeout: float = 60.0) -> None:
        """Start the node and wait until its MQTT listener accepts connections."""
        # stdin closed: with input allowed, the Erlang VM stops at end of input.
        self.proc = subprocess.Popen([str(SERVER)], env=self._env(), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rabbitmq-server exited with {self.proc.returncode}; see {self.dir}/log")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"RabbitMQ's MQTT listener did not open within {timeout:g} s; see {self.dir}/log")

    def stop(self) -> None:
        """Stop the node as a service stop would (SIGTERM, then its whole process group)."""
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def close(self) -> None:
        """Stop and remove the data folder (epmd, shared by nodes, is left running)."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RabbitMq:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
