"""`edge devices import|verify|export`: a floor of sensors into ChirpStack from a sheet, then proof that each works."""

from __future__ import annotations

import csv
import json
import sys
import time
from pathlib import Path
from typing import Any

import click
import orjson

from edge import present
from edge.cli import CONFIG_OPTION, _load, _timestamp
from edge.cli.api import _client, _fail, _registry, _setting, api_options
from edge.cli.devices import devices
from edge.cli.text import echo
from edge.config import Config
from edge.errors import EdgeError, SheetError
from edge.onboarding import export_rows, open_private, parse_columns, read_rows
from edge.onboarding_apply import apply
from edge.onboarding_plan import Directory, Step, plan
from edge.sources.chirpstack_grpc import ChirpStackApi
from edge.sources.chirpstack_records import DeviceKeys, DeviceRecord
from edge.sources.chirpstack_sync import sync as sync_devices


def log_path(cfg: Config) -> Path:
    """Where imports are recorded for `verify`: beside the buffer, like its quarantine file."""
    return Path(f"{cfg.buffer.path}.imports.jsonl")


def _directory(api: ChirpStackApi, tenant_id: str | None) -> tuple[Directory, list[str]]:
    tenants = [tenant_id] if tenant_id else api.list_tenants()
    if tenant_id:
        api.get_tenant(tenant_id)
    applications = {a.id: a.name for t in tenants for a in api.list_applications(t)}
    profiles = {pid: name for t in tenants for pid, name in api.list_device_profiles(t)}
    device_app = {d.dev_eui: app for app in applications for d in api.list_devices(app)}
    return Directory(applications, profiles, device_app), tenants


def _describe(step: Step, directory: Directory) -> str:
    what = {"create": "create", "update": "update", "unchanged": "same  "}[step.device]
    changed = f" ({', '.join(step.changes)})" if step.changes else ""
    keys = {"create": "keys: set", "update": "keys: replace", "unchanged": "keys: same", "none": "keys: -"}[step.keys]
    profile = directory.profiles.get(step.record.profile_id, step.record.profile_id)
    return (f"row {step.row.line:<5} {what} {step.record.dev_eui}  {step.record.name[:28]!r:<30}"
            f" profile {profile[:24]!r}  {keys}{changed}")


@devices.command("import")
@CONFIG_OPTION
@api_options(tenant=True)
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--application", default="", help="Application (id or name) for rows without one.")
@click.option("--profile", default="", help="Device profile (id or name) for rows without one.")
@click.option("--columns", default="", help="Map other layouts: FIELD=HEADER[,...], fields: dev_eui, join_eui,"
              " app_key, nwk_key, name, description, application, device_profile, tags, variables, codec.")
@click.option("--no-keys", is_flag=True, help="Import devices without OTAA keys (set later, or ABP).")
@click.option("--dry-run", is_flag=True, help="Check every row and show what would change; change nothing.")
@click.option("--batch", type=click.IntRange(1, 500), default=20, show_default=True,
              help="Rows written per batch before a pause (ChirpStack's database serves live traffic too).")
@click.option("--pause", type=click.FloatRange(0, 60), default=0.5, show_default=True,
              help="Seconds between batches.")
def import_(config_path: Path, api_url: str | None, token_file: Path | None, ca_file: Path | None,
            timeout: float | None, tenant_id: str | None, file: Path, application: str, profile: str, columns: str,
            no_keys: bool, dry_run: bool, batch: int, pause: float) -> None:
    """Create or update the devices of a vendor's sheet (CSV or XLSX) with their OTAA keys.

    Every row is checked first (hex lengths, duplicates in the file and in ChirpStack, unknown
    applications and profiles); any problem is listed with its row number and nothing changes.
    A re-run after an interruption finishes the job without duplicates. Keys are never shown.
    Then `edge devices verify --wait` shows each sensor's join and first uplink.
    """
    cfg = _load(config_path)
    try:
        rows, problems = read_rows(file, parse_columns(columns))
    except SheetError as exc:
        rows, problems = [], exc.problems
    if not rows and problems:
        _problems(problems)
    if not rows:
        click.echo(f"error: {file} has no device rows", err=True)
        raise SystemExit(1)
    tenant = _setting(cfg, tenant_id, "tenant_id")
    try:
        with _client(cfg, api_url, token_file, ca_file, timeout) as api:
            directory, tenants = _directory(api, tenant)
            try:
                steps = plan(rows, directory, api, application=application, profile=profile, need_keys=not no_keys,
                             earlier=problems)
            except SheetError as exc:
                _problems(exc.problems)
            for step in steps:
                echo(_describe(step, directory))
            counts = {kind: sum(s.device == kind for s in steps) for kind in ("create", "update", "unchanged")}
            summary = (f"{counts['create']} to create, {counts['update']} to update, {counts['unchanged']} unchanged;"
                       f" keys for {sum(s.keys in ('create', 'update') for s in steps)}")
            if dry_run:
                click.echo(f"dry run: {summary}; nothing was changed")
                return
            record = _recorder(cfg, file)
            try:
                totals = apply(steps, api, batch=batch, pause_s=pause, on_done=record)
            except EdgeError as exc:
                click.echo(f"error: {exc}", err=True)
                click.echo("Stopped part-way; run the same command again to finish (done rows are not repeated).",
                           err=True)
                raise SystemExit(1) from None
            click.echo(f"created {totals['created']}, updated {totals['updated']}, unchanged {totals['unchanged']};"
                       f" keys set for {totals['keys']}")
            _refresh_cache(cfg, api, tenant if len(tenants) == 1 and tenant else None)
    except EdgeError as exc:
        _fail(exc)
    click.echo(f"Next: `edge devices verify --wait -c {config_path}` shows each sensor's join and first uplink.")


def _problems(problems: list[str]) -> None:
    for problem in problems:
        click.echo(f"error: {problem}", err=True)
    click.echo(f"{len(problems)} problem(s); nothing was changed in ChirpStack.", err=True)
    raise SystemExit(1)


def _recorder(cfg: Config, file: Path) -> Any:
    """Appends each applied row to the import log (without keys) for `edge devices verify`."""
    path = log_path(cfg)
    started = time.time()
    warned: list[bool] = []

    def record(step: Step) -> None:
        line = {"time": time.time(), "run": started, "file": str(file), "row": step.row.line,
                "dev_eui": step.record.dev_eui, "name": step.record.name, "action": step.device}
        try:
            with path.open("ab") as out:
                out.write(orjson.dumps(line) + b"\n")
        except OSError as exc:
            if not warned:
                warned.append(True)
                click.echo(f"warning: cannot record the import in {path} ({exc.strerror}); `edge devices verify`"
                           " will not know these devices", err=True)

    return record


def _refresh_cache(cfg: Config, api: ChirpStackApi, tenant: str | None) -> None:
    if not Path(cfg.buffer.path).exists():
        click.echo("The device cache is refreshed by `edge run` (no buffer here yet).")
        return
    registry = _registry(cfg, readonly=False)
    try:
        result = sync_devices(api, registry, tenant_id=tenant)
        click.echo(f"device cache refreshed: {result.devices} devices")
    finally:
        registry.close()


def _imported(cfg: Config, since: float | None) -> dict[str, dict[str, Any]]:
    """The devices of the import log (latest entry each), imported at or after `since`."""
    path = log_path(cfg)
    found: dict[str, dict[str, Any]] = {}
    try:
        with path.open("rb") as lines:
            for raw in lines:
                try:
                    entry = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    continue  # a line cut by a crash
                if since is None or entry.get("time", 0) >= since:
                    found[str(entry["dev_eui"])] = entry
    except OSError:
        pass
    return found


def _state(item: dict[str, Any] | None) -> str:
    if not item:
        return "waiting"
    if "last_time" not in item:
        return "joined" if item.get("joined") else "waiting"
    return {0: "ok", 1: "ok", 2: "no-decoder", 3: "decode-failed"}.get(item.get("status", 0), "ok")


def _hhmm(ts: float | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts)) if ts else "-"


def _readings(item: dict[str, Any]) -> str:
    parts = []
    for r in item.get("readings", [])[:6]:
        value = r.get("v", r.get("vs", r.get("vb")))
        parts.append(f"{r.get('n')} {present.reading(str(r.get('n')), value, r.get('u'))}")
    return ", ".join(parts)


@devices.command("verify")
@CONFIG_OPTION
@click.option("--since", default=None, help="Only devices imported at or after this time (ISO 8601, or ago: 2h, 7d).")
@click.option("--wait", is_flag=True, help="Keep watching until every device sent an uplink (or --timeout).")
@click.option("--timeout", type=click.FloatRange(min=1), default=900, show_default=True,
              help="Seconds --wait watches at most.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document for scripts.")
def verify(config_path: Path, since: str | None, wait: bool, timeout: float, as_json: bool) -> None:
    """Show each imported device's join, first uplink, decoder, standard readings and RSSI/SNR.

    Exit status 0 when every device sent an uplink that decoded, 1 when some still need attention.
    """
    from edge.buffer import Buffer

    cfg = _load(config_path)
    imported = _imported(cfg, _timestamp(since, hint="--since"))
    if not imported:
        click.echo(f"No imported devices recorded in {log_path(cfg)}; run `edge devices import` first.", err=True)
        raise SystemExit(1)
    start = min(e["time"] for e in imported.values()) - 60  # a join may beat the log line by a little
    deadline = time.monotonic() + (timeout if wait else 0)
    seen: set[str] = set()
    while True:
        activity: dict[str, dict[str, Any]] = {}
        if Path(cfg.buffer.path).exists():
            buffer = Buffer(cfg.buffer.path, readonly=True)
            try:
                activity = buffer.activity(imported, start)
            finally:
                buffer.close()
        states = {dev: _state(activity.get(dev)) for dev in imported}
        if wait and not as_json:
            for dev in sorted(d for d, s in states.items() if s != "waiting" and d not in seen):
                seen.add(dev)
                echo(f"{_hhmm(time.time())} {dev} {imported[dev].get('name', '')!r}: {states[dev]}")
        if not wait or all(s == "ok" for s in states.values()) or time.monotonic() >= deadline:
            break
        time.sleep(2)
    _report(imported, activity, states, as_json)
    raise SystemExit(0 if all(s == "ok" for s in states.values()) else 1)


def _report(imported: dict[str, dict[str, Any]], activity: dict[str, dict[str, Any]], states: dict[str, str],
            as_json: bool) -> None:
    rows = []
    for dev, entry in sorted(imported.items(), key=lambda kv: (kv[1].get("file", ""), kv[1].get("row", 0))):
        item = activity.get(dev, {})
        rows.append({"dev_eui": dev, "name": entry.get("name", ""), "state": states[dev],
                     "imported": entry.get("time"), "joined": item.get("joined"),
                     "first_uplink": item.get("first_uplink"), "last_uplink": item.get("last_time"),
                     "decoder": item.get("decoder"), "rssi_dbm": item.get("rssi"), "snr_db": item.get("snr"),
                     "gateway_id": item.get("gateway_id"), "readings": item.get("readings", [])})
    if as_json:
        click.echo(json.dumps({"devices": rows}, indent=2))
        return
    echo(f"{'DEV_EUI':<16}  {'NAME':<20} {'STATE':<13} {'JOINED':<8} {'FIRST UP':<8} {'DECODER':<20}"
         f" {'RSSI':>8} {'SNR':>7}  READINGS")
    for r in rows:
        # Names come from the sheet and decoders from the buffer: echo strips terminal escapes.
        echo(f"{r['dev_eui']:<16}  {str(r['name'])[:20]:<20} {r['state']:<13} {_hhmm(r['joined']):<8}"
             f" {_hhmm(r['first_uplink']):<8} {str(r['decoder'] or '-')[:20]:<20} {present.rssi(r['rssi_dbm']):>8}"
             f" {present.snr(r['snr_db']):>7}  {_readings(activity.get(r['dev_eui'], {}))}")
    ok = sum(s == "ok" for s in states.values())
    attention = [f"{d} ({s})" for d, s in states.items() if s != "ok"]
    more = " ..." if len(attention) > 20 else ""
    echo(f"{ok} of {len(states)} devices sent a decoded uplink"
         + (f"; needing attention: {', '.join(attention[:20])}{more}" if attention else ""))


@devices.command("export")
@CONFIG_OPTION
@api_options(tenant=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="CSV file to write (default: standard output).")
@click.option("--application", default="", help="Only this application (id or name).")
@click.option("--with-keys", is_flag=True, help="Include OTAA keys; needs --output, written with mode 0600.")
def export(config_path: Path, api_url: str | None, token_file: Path | None, ca_file: Path | None,
           timeout: float | None, tenant_id: str | None, output: Path | None, application: str,
           with_keys: bool) -> None:
    """Write ChirpStack's devices in the layout `edge devices import` reads (to move them to another gateway)."""
    if with_keys and output is None:
        raise click.UsageError("--with-keys writes keys only to a file (--output), never to the terminal")
    cfg = _load(config_path)
    try:
        with _client(cfg, api_url, token_file, ca_file, timeout) as api:
            directory, _ = _directory(api, _setting(cfg, tenant_id, "tenant_id"))
            apps = [a for a, name in directory.applications.items() if not application or application in (a, name)]
            if application and not apps:
                _fail(EdgeError(f"ChirpStack has no application {application!r}"))
            records: list[DeviceRecord] = [api.get_device(d.dev_eui) for app in apps for d in api.list_devices(app)]
            keys: dict[str, DeviceKeys] = {}
            if with_keys:
                for d in records:
                    k = api.get_keys(d.dev_eui)
                    if k is not None:
                        keys[d.dev_eui] = k
            rows = list(export_rows(records, directory.applications, directory.profiles, keys if with_keys else None))
    except EdgeError as exc:
        _fail(exc)
    if output is None:
        csv.writer(sys.stdout).writerows(rows)
        return
    with (open_private(output) if with_keys else output.open("w", encoding="utf-8", newline="")) as out:
        csv.writer(out).writerows(rows)
    click.echo(f"wrote {len(rows) - 1} devices to {output}" + (" (with keys, mode 0600)" if with_keys else ""))
