"""systemd glue: sd_notify READY/STATUS/WATCHDOG, drain on SIGTERM, reload on SIGHUP.

A source thread stalled inside a decoder also gets that uplink quarantined (edge/quarantine.py)
before the watchdog restart, so the redelivered uplink is stored raw instead of hanging us again.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from edge.config import load_config
from edge.decoders import build_registry
from edge.errors import ConfigError
from edge.pipeline import Pipeline
from edge.web import WebServer

log = logging.getLogger(__name__)

# The shortest time without progress that counts as a hung pipeline thread (see Service.stall_limit).
STALL_FLOOR_S = 120.0


def notify(message: str) -> bool:
    """Send one sd_notify message; False when not started by systemd (no NOTIFY_SOCKET)."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace socket
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(address)
            sock.sendall(message.encode())
        except OSError:
            return False
    return True


def watchdog_interval() -> float | None:
    """Seconds between watchdog pings (half of WatchdogSec), or None when no watchdog is set."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6


class Service:
    """Runs a Pipeline as a systemd service."""

    def __init__(self, pipeline: Pipeline, config_path: Path,
                 on_reload: Callable[[Pipeline], None] | None = None, stall_limit_s: float | None = None) -> None:
        self.pipeline = pipeline
        self._stall_limit_s = stall_limit_s  # None: derived from the config (stall_limit)
        self.config_path = config_path
        self.stop = threading.Event()
        self._reload = threading.Event()
        self._on_reload = on_reload

    def install_signals(self) -> None:
        """SIGTERM/SIGINT drain and stop; SIGHUP reloads what can change safely."""
        signal.signal(signal.SIGTERM, lambda *_: self.stop.set())
        signal.signal(signal.SIGINT, lambda *_: self.stop.set())
        signal.signal(signal.SIGHUP, lambda *_: self._reload.set())

    def stall_limit(self, interval: float | None) -> float:
        """Seconds without progress after which a pipeline thread counts as hung.

        Longer than anything a healthy thread waits without a heartbeat: a reconnect backoff
        (reconnect_max_s), a refused-message backoff, a connect or request timeout; and at least two
        watchdog periods, so one slow SD-card commit never costs a restart.
        """
        if self._stall_limit_s is not None:
            return self._stall_limit_s
        cfg = self.pipeline.cfg
        waits = [cfg.chirpstack.mqtt.reconnect_max_s, *(u.mqtt.reconnect_max_s for u in cfg.upstreams),
                 *(3 * u.timeout_s for u in cfg.http_upstreams)]
        return max(STALL_FLOOR_S, 4 * (interval or 0), 2 * max(waits) + 30)

    def stalled(self, now: float, limit: float) -> list[str]:
        """The pipeline threads that made no progress for `limit` seconds, with how long, e.g. 'source (130 s)'."""
        beats = [("source", self.pipeline.source.heartbeat),
                 *((f"upstream {s.name}", s.heartbeat) for s in self.pipeline.sinks)]
        return [f"{name} ({now - beat:.0f} s)" for name, beat in beats if now - beat >= limit]

    def status_line(self, stalled: list[str] | None = None) -> str:
        """The one-line STATUS shown by `systemctl status`."""
        p = self.pipeline
        if stalled:
            return f"HUNG, no progress from {', '.join(stalled)}; waiting for the watchdog to restart it"
        ups = ", ".join(f"{s.name} {'up' if s.stats.connected else 'down'}" for s in p.sinks)
        source = "connected" if p.source.connected.is_set() else "disconnected"
        return f"ChirpStack {source}; {p.commits} commits; upstreams: {ups}"

    def quarantine_hung(self) -> None:
        """Quarantine the uplink the stalled source thread is decoding, so the restart gets past it."""
        try:
            entry = self.pipeline.quarantine_hung()
        except OSError as exc:
            log.error("The source thread hangs in a decoder, but its uplink could not be quarantined (%s): after"
                      " the restart it may hang again. Block the decoder in the config.", exc)
            return
        if entry is None:
            return
        log.error("Decoder %s hangs on uplink %s of device %s: the uplink is quarantined (%s) and will be stored"
                  " raw, not decoded, after the restart. Fix the decoder, or block it (decoding.plugins_block or a"
                  " decoding rule), then run `edge redecode --decoder %s`.", entry.decoder, entry.uplink_id,
                  entry.dev_eui, self.pipeline.quarantine_path, entry.decoder,
                  extra={"dev_eui": entry.dev_eui, "decoder": entry.decoder})

    def reload(self) -> None:
        """Apply the parts of a changed config that are safe to change live: log level, decoder rules.

        Anything else (brokers, buffer, upstreams) needs a restart; that is logged, not applied.
        """
        try:
            cfg = load_config(self.config_path)
        except ConfigError as exc:
            log.error("Reload refused, the configuration is invalid: %s", "; ".join(exc.problems))
            return
        old = self.pipeline.cfg
        logging.getLogger().setLevel(cfg.log_level.upper())
        self.pipeline.registry = build_registry(cfg)
        changed = [name for name in ("chirpstack", "buffer", "upstreams", "http_upstreams", "web")
                   if getattr(cfg, name) != getattr(old, name)]
        if changed:
            log.warning("Reloaded log level and decoder rules; changes to %s need a restart.", ", ".join(changed))
        else:
            log.info("Reloaded log level and decoder rules.")

    def start_web(self, stalled: Callable[[], list[str]] | None = None) -> WebServer | None:
        """Start the status server ([web]); None when it is off or cannot start.

        Not fatal: uplinks keep flowing without metrics, and under Restart=on-failure a busy port
        would otherwise become a restart loop that stops them.
        """
        cfg = self.pipeline.cfg.web
        if not cfg.port:
            return None
        try:
            web = WebServer(self.pipeline, bind=cfg.bind, port=cfg.port, token=cfg.token(),
                            stuck_after_s=cfg.stuck_after_s, stalled=stalled)
            web.start()
        except (OSError, ValueError) as exc:
            log.error("The status server is not running (no metrics, health or status page): %s", exc)
            return None
        log.info("Status page, metrics and health on %s.", web.url)
        return web

    def run(self) -> None:
        """Run until stopped, keeping systemd informed.

        WATCHDOG=1 is sent only while the source and every upstream thread show progress (their
        heartbeats), not merely while this process lives: a hung thread stops the pings, systemd
        (WatchdogSec=) kills and restarts the service, and what was not acknowledged is redelivered.
        A source thread hung inside a decoder first gets its uplink quarantined (quarantine_hung).
        """
        interval = watchdog_interval()
        limit = self.stall_limit(interval)
        runner = threading.Thread(target=self.pipeline.run, args=(self.stop,), name="pipeline")
        web = self.start_web(lambda: self.stalled(time.monotonic(), limit))
        runner.start()
        notify("READY=1")
        next_status = 0.0
        reported: list[str] = []
        quarantined = False
        while runner.is_alive() and not self.stop.wait(min(interval or 1.0, 1.0)):
            now = time.monotonic()
            if self._reload.is_set():
                self._reload.clear()
                notify("RELOADING=1")
                self.reload()
                notify("READY=1")
            stalled = self.stalled(now, limit)
            source_hung = now - self.pipeline.source.heartbeat >= limit
            if source_hung and not quarantined:
                quarantined = True  # once per stall
                self.quarantine_hung()
            elif not source_hung:
                quarantined = False
            if not stalled:
                if interval is not None:
                    notify("WATCHDOG=1")
                if reported:
                    log.warning("The pipeline makes progress again after a stall of %s.", ", ".join(reported))
                    reported = []
            elif not reported:
                reported = stalled
                # Said once, before systemd's SIGABRT, so the journal explains the restart.
                log.error("No progress from %s (limit %.0f s): %s. Unacknowledged uplinks stay at the"
                          " ChirpStack broker and are redelivered after the restart.", ", ".join(stalled), limit,
                          "watchdog pings stopped, systemd will restart lorawan-edge" if interval is not None
                          else "no systemd watchdog is set, restart lorawan-edge", extra={"count": len(stalled)})
                next_status = 0.0
            if now >= next_status:
                notify(f"STATUS={self.status_line(stalled)}")
                next_status = now + 5
        notify("STOPPING=1")
        self.stop.set()
        runner.join()
        if web is not None:
            web.stop()
