"""`edge devices health`: which sensors are unwell (silent, never seen, lossy, low battery, stuck), from the buffer."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from edge import present
from edge.cli import CONFIG_OPTION, _existing_buffer, _load
from edge.cli.devices import devices
from edge.cli.text import echo
from edge.config import Config
from edge.errors import EdgeError, StorageError


def report(cfg: Config, now: float | None = None) -> list[dict[str, Any]]:
    """Every device's health summary as the running service last stored it, the unwell first."""
    from edge.buffer import Buffer
    from edge.health import HealthTracker
    from edge.health_state import DeviceHealth

    try:
        buffer = Buffer(cfg.buffer.path, readonly=True)
    except EdgeError:
        return []  # unreadable: the buffer checks say why
    try:
        stored = {d["dev_eui"]: DeviceHealth.from_dict(d) for d in buffer.health_states()}
    except StorageError:  # a buffer from before sensor health (no table yet), or damaged
        stored = {}
    finally:
        buffer.close()
    return HealthTracker(cfg.health, stored).report(time.time() if now is None else now)


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def line(r: dict[str, Any]) -> str:
    """One device as `edge status`, doctor and this command print it."""
    loss = "-" if r["loss_ratio"] is None else f"{100 * r['loss_ratio']:.0f} %"
    battery = (f"{present.number(r['battery'])} %" if r["battery"] is not None
               else f"{present.number(r['battery_voltage'])} V" if r["battery_voltage"] is not None else "-")
    problems = ",".join(r["problems"]) or "-"
    return (f"{r['dev_eui']}  {r['state']:<10} {problems[:32]:<32} seen {_ago(r['silent_for_s']):>8} ago"
            f"  every {_ago(r['expected_interval_s']):>8}  loss {loss:>5}  {present.rssi(r['rssi_dbm']):>9}"
            f"  {present.snr(r['snr_db']):>8}  battery {battery}")


@devices.command("health")
@CONFIG_OPTION
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--state", type=click.Choice(["ok", "silent", "never-seen"]), default=None, help="Only this state.")
@click.option("--unwell", is_flag=True, help="Only devices that are silent, never seen or have a problem.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most this many devices.")
def health(config_path: Path, as_json: bool, state: str | None, unwell: bool, limit: int | None) -> None:
    """Show which sensors are unwell: silent, never seen, lossy, low battery, stuck or impossible values."""
    cfg = _load(config_path)
    _existing_buffer(cfg.buffer.path)
    rows = [r for r in report(cfg) if (state is None or r["state"] == state)
            and (not unwell or r["state"] != "ok" or r["problems"])][:limit]
    if as_json:
        click.echo(json.dumps({"devices": rows}, indent=2))
        return
    for r in rows:
        echo(line(r))
    counts = {s: sum(r["state"] == s for r in rows) for s in ("ok", "silent", "never-seen")}
    with_problems = sum(bool(r["problems"]) for r in rows)
    echo(f"{len(rows)} devices: {counts['ok']} ok, {counts['silent']} silent, {counts['never-seen']} never seen;"
               f" {with_problems} with problems (docs/health.md explains each)")
