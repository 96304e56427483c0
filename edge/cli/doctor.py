"""`edge doctor`: checks an installation end to end and says, per problem, what to fix."""

from __future__ import annotations

import json
import os
import queue
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Callable, Generator, Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import click

from edge import probe
from edge.cli import CONFIG_OPTION
from edge.cli.text import echo
from edge.config import Config, MqttEndpoint, load_config, secret_file_warnings, secret_files
from edge.errors import ConfigError
from edge.model import Check
from edge.probe import NET_TIMEOUT
from edge.probe import why as _why

_T = TypeVar("_T")
MB = 1 << 20
FIX_CORRUPT = ("stop the service, move the buffer file aside (keep it for analysis) and start the service again;"
               " it creates an empty buffer")


@dataclass(frozen=True)
class Finding:
    """The outcome of one check; `fix` is one line, given for WARN and FAIL only."""

    check: str
    status: str  # OK, WARN or FAIL
    detail: str
    fix: str = ""

    def line(self) -> str:
        """The human form: `STATUS  check: detail — fix: ...`."""
        text = f"{self.status:<4}  {self.check}: {self.detail}"
        return f"{text} — fix: {self.fix}" if self.fix else text


class _Report:
    """Collects findings and hands each to `on_finding` at once, so progress shows on a slow network."""

    def __init__(self, on_finding: Callable[[Finding], None] | None) -> None:
        self.findings: list[Finding] = []
        self.on_finding = on_finding

    def add(self, check: str, status: str, detail: str, fix: str = "") -> None:
        finding = Finding(check, status, detail, fix if status != "OK" else "")
        self.findings.append(finding)
        if self.on_finding is not None:
            self.on_finding(finding)

    def run(self, checks: Iterable[Check]) -> None:
        """Add every finding a component's own health check yields, each as it comes."""
        for check in checks:
            self.add(check.name, check.status, check.detail, check.fix)

    def probe(self, checks: Generator[Check, None, _T]) -> _T:
        """Like `run`, for a probe (edge.probe); returns what the probe returns."""
        while True:
            try:
                check = next(checks)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            self.add(check.name, check.status, check.detail, check.fix)


def _age(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min" if seconds < 7200 else \
        f"{seconds / 3600:.1f} h"


def _check_network(r: _Report, label: str, section: str, ep: MqttEndpoint) -> bool:
    """DNS, TCP and (for mqtts) TLS to the ChirpStack broker; False at the first step that fails."""
    return r.probe(probe.network(label, section, ep, f"{section}.mqtt_url"))


def _check_mqtt(r: _Report, label: str, section: str, ep: MqttEndpoint, expiry: int = 0) -> probe.MqttProbe | None:
    """Log in to the ChirpStack broker; the open session, or None when that failed."""
    return r.probe(probe.mqtt_session(label, section, ep, expiry))


def _newest_uplink(cfg: Config) -> float | None:
    """ChirpStack time of the newest uplink any device sent, from the buffer (None when unknown)."""
    try:
        db = sqlite3.connect(f"file:{cfg.buffer.path}?mode=ro", uri=True)
        try:
            row = db.execute("SELECT max(last_time) FROM devices").fetchone()
        finally:
            db.close()
    except sqlite3.Error:
        return None  # the buffer checks report why
    return float(row[0]) if row and row[0] is not None else None


def _check_chirpstack(r: _Report, cfg: Config, listen: float) -> float | None:
    """Every ChirpStack broker check; returns how late a live uplink arrived by its own time stamp, if one came."""
    from edge.model import Malformed, Uplink
    from edge.sources.chirpstack_events import parse

    ep, topic = cfg.chirpstack.mqtt, cfg.chirpstack.topic
    want = cfg.chirpstack.session_expiry_s
    session = _check_mqtt(r, "chirpstack", "chirpstack", ep, want) \
        if _check_network(r, "chirpstack", "chirpstack", ep) else None
    if session is not None and session.granted_expiry is not None and session.granted_expiry < want:
        r.add("chirpstack session", "WARN", f"the broker grants a session expiry of {session.granted_expiry} s,"
              f" shorter than the {want} s configured: events queued during a longer outage are lost",
              "raise the broker's session expiry limit, or set chirpstack.session_expiry_s to what it grants")
    message, started = None, time.monotonic()
    if session is not None:
        # QoS 0 on a clean session: the broker queues nothing for us and nothing is acknowledged
        # on the service's behalf.
        _, mid = session.client.subscribe(topic, qos=0)
        codes = session.wait(session.subacks, mid or 0, NET_TIMEOUT)
        if codes is None or any(c.is_failure for c in codes):
            r.add("chirpstack subscribe", "FAIL", f"subscription to {topic} {'refused' if codes else 'not answered'}",
                  f"allow user {ep.username or '(anonymous)'} to read {topic} in the broker's ACL")
        else:
            r.add("chirpstack subscribe", "OK", f"subscribed to {topic}")
            try:
                message = session.messages.get(timeout=listen) if listen > 0 else None
            except queue.Empty:
                pass
        session.close()
    if message is not None:
        event = parse(*message)
        if isinstance(event, Malformed):
            r.add("chirpstack events", "WARN", f"a message on {event.topic} cannot be parsed: {event.error}",
                  "set ChirpStack's MQTT integration to send v4 JSON or protobuf events")
            return None
        r.add("chirpstack events", "OK", f"live {message[0].rsplit('/', 1)[-1]} event after"
              f" {time.monotonic() - started:.1f} s")
        return message[2] - event.time if isinstance(event, Uplink) else None
    newest = _newest_uplink(cfg)
    if newest is not None and time.time() - newest < 3600:
        r.add("chirpstack events", "OK", f"last uplink {max(0.0, time.time() - newest):.0f} s ago (buffer)")
    else:
        last = "never" if newest is None else datetime.fromtimestamp(newest, UTC).strftime("%Y-%m-%d %H:%M UTC")
        heard = f"; none in {listen:g} s of listening" if session is not None and listen > 0 else ""
        r.add("chirpstack events", "WARN", f"no uplink in the last hour (last: {last}){heard}",
              "check that sensors and gateways are online and ChirpStack's MQTT integration publishes to"
              f" {ep.host}; `edge doctor --listen 120` waits for a live event")
    return None


def _check_chirpstack_api(r: _Report, cfg: Config) -> None:
    """The gRPC API with the configured token and tenant, then how fresh the device registry cache is."""
    from edge.buffer.registry import DeviceRegistry
    from edge.errors import EdgeError
    from edge.sources.chirpstack_grpc import (
        ApiAuthError,
        ApiNotFound,
        ApiPermissionError,
        ApiUnavailable,
        ChirpStackApi,
    )

    cs = cfg.chirpstack
    if not cs.api_url:
        return  # no API configured: decoding uses MQTT metadata only, which is a valid setup
    fixes: list[tuple[type[EdgeError], str]] = [
        (ApiAuthError, f"put an API key of this ChirpStack in {cs.api_token_file}"),
        (ApiPermissionError, "set chirpstack.tenant_id to the tenant of the key, or use an admin API key"),
        (ApiNotFound, "set chirpstack.tenant_id to the id ChirpStack shows for the tenant"),
        (ApiUnavailable, "start ChirpStack, or correct chirpstack.api_url (ChirpStack's [api] bind)"),
    ]
    try:
        token = Path(cs.api_token_file).read_text().strip()
        # One attempt with a short deadline: a dead host must not keep a technician waiting.
        with ChirpStackApi(cs.api_url, token, ca_file=cs.api_ca_file or None, timeout_s=NET_TIMEOUT, attempts=1,
                           token_file=cs.api_token_file) as api:
            if cs.tenant_id:
                detail = f"token accepted at {cs.api_url}, tenant {api.get_tenant(cs.tenant_id)!r}"
            else:
                detail = f"admin token accepted at {cs.api_url}, {len(api.list_tenants())} tenant(s)"
        r.add("chirpstack api", "OK", detail)
    except OSError as exc:
        r.add("chirpstack api", "FAIL", f"cannot read {cs.api_token_file}: {_why(exc)}",
              "make the token file readable by the service user")
    except EdgeError as exc:
        fix = next((text for kind, text in fixes if isinstance(exc, kind)), "see the message")
        r.add("chirpstack api", "FAIL", str(exc), fix)
    if not Path(cfg.buffer.path).exists():
        return  # the buffer checks say so
    try:
        registry = DeviceRegistry(cfg.buffer.path, readonly=True)
        try:
            synced = [d.synced_at for d in registry.list_devices()]
        finally:
            registry.close()
    except (EdgeError, sqlite3.Error) as exc:
        r.add("device cache", "WARN", f"cannot read it: {exc}", "run `edge devices sync`")
        return
    if not synced:
        r.add("device cache", "WARN", "empty: device variables and profile codecs are not known yet",
              "run `edge devices sync` (`edge run` syncs at start once the API answers)")
        return
    age = time.time() - max(synced)
    stale = cs.api_sync_interval_s > 0 and age > 2 * cs.api_sync_interval_s + 60
    r.add("device cache", "WARN" if stale else "OK", f"{len(synced)} devices, last synced {_age(age)} ago",
          "check the service's log for 'Device registry sync failed', or run `edge devices sync`")


def _check_secret_files(r: _Report, cfg: Config) -> None:
    warnings = secret_file_warnings(cfg)
    for warning in warnings:
        r.add("secret files", "WARN", warning, "only the service's user should read a password, token or key")
    if not warnings and secret_files(cfg):
        r.add("secret files", "OK", "password, token and key files are readable by their owner only")


def _check_disk(r: _Report, cfg: Config) -> None:
    directory = Path(cfg.buffer.path).parent
    while not directory.exists() and directory != directory.parent:
        directory = directory.parent  # before the first run the buffer's own directory may not exist yet
    usage = shutil.disk_usage(directory)
    percent = 100 * usage.free / usage.total if usage.total else 0.0
    detail = f"{usage.free / MB:.0f} MB free ({percent:.0f} %) on the filesystem of {directory}"
    if usage.free < 50 * MB:
        r.add("disk", "FAIL", detail, "free space on this filesystem or move buffer.path; new uplinks cannot be stored")
    elif usage.free < 500 * MB or percent < 10:
        r.add("disk", "WARN", detail, f"free space; the buffer may grow to {cfg.buffer.max_size_mb:g} MB (max_size_mb)")
    else:
        r.add("disk", "OK", detail)


def _check_buffer(r: _Report, cfg: Config) -> None:
    from edge.buffer.location import problem
    from edge.buffer.migrations import MIGRATIONS
    from edge.buffer.store import Buffer, connect

    path = Path(cfg.buffer.path)
    blocked = problem(path)
    if blocked:
        r.add("buffer file", "FAIL", blocked, "run doctor as the service's user; `edge run` cannot store anything")
        return
    if not path.exists():
        r.add("buffer file", "WARN", f"{path} does not exist yet", "start the service; `edge run` creates it")
        return
    if not os.access(path, os.R_OK):
        r.add("buffer file", "FAIL", f"{path} is not readable by this user",
              "run doctor as the service's user or root (sudo); the buffer is created owner-only")
        return
    r.add("buffer file", "OK", f"{path}, {path.stat().st_size / MB:.1f} MB")
    try:
        db = connect(path, readonly=True)
        try:
            result = [str(row[0]) for row in db.execute("PRAGMA quick_check")]
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
        finally:
            db.close()
    except sqlite3.Error as exc:
        r.add("buffer integrity", "FAIL", f"{path} cannot be read: {exc}", FIX_CORRUPT)
        return
    if result != ["ok"]:
        # One row may hold several problems, one per line, under a "*** in database main ***" heading.
        problems = [p for row in result for p in row.splitlines() if p and not p.startswith("***")]
        r.add("buffer integrity", "FAIL", f"quick_check found {len(problems)} problem(s): {'; '.join(problems[:2])}",
              FIX_CORRUPT)
        return
    r.add("buffer integrity", "OK", "quick_check ok")
    if version > len(MIGRATIONS):
        r.add("buffer schema", "FAIL", f"version {version} is newer than this lorawan-edge ({len(MIGRATIONS)})",
              "install the lorawan-edge version that wrote this buffer")
        return
    r.add("buffer schema", "OK" if version == len(MIGRATIONS) else "WARN", f"version {version} of {len(MIGRATIONS)}",
          "none needed: `edge run` upgrades the schema when it starts")
    buffer = Buffer(path, readonly=True)
    try:
        sinks = {s["name"]: s for s in buffer.sinks()}
    finally:
        buffer.close()
    for name in [u.name for u in cfg.upstreams] + [u.name for u in cfg.http_upstreams]:
        sink = sinks.get(name)
        if sink is None:
            r.add(f"upstream {name} backlog", "WARN", "no delivery progress recorded",
                  "restart the service so that it picks up this upstream")
            continue
        age = sink["oldest_undelivered_age_s"]
        detail = f"{sink['backlog']} uplinks waiting" + (f", the oldest for {_age(age)}" if age else "")
        status = "FAIL" if age and age > 86400 else "WARN" if age and age > 3600 else "OK"
        r.add(f"upstream {name} backlog", status, detail,
              f"see the upstream {name} checks above; the backlog is sent by itself once it accepts data")


def _ntp_synchronized() -> bool | None:
    if shutil.which("timedatectl") is None:
        return None
    try:
        done = subprocess.run(["timedatectl", "show", "-p", "NTPSynchronized", "--value"], capture_output=True,
                              text=True, timeout=NET_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    answer = done.stdout.strip()
    # Without systemd as init (containers) timedatectl exists but cannot answer.
    return {"yes": True, "no": False}.get(answer) if done.returncode == 0 else None


def _check_clock(r: _Report, cfg: Config, skew: float | None) -> None:
    synced = _ntp_synchronized()
    if synced:
        r.add("clock", "OK", "NTP synchronized (timedatectl)")
    elif synced is False:
        r.add("clock", "WARN", "the system clock is not NTP-synchronized",
              "run `timedatectl set-ntp true` and make sure an NTP server is reachable (UDP 123)")
    elif skew is not None and abs(skew) < 30:
        r.add("clock", "OK", f"agrees with ChirpStack's clock: a live uplink arrived {skew:.1f} s after its time")
    else:
        seen = "" if skew is None else f"; a live uplink arrived {skew:.0f} s after its ChirpStack time"
        r.add("clock", "WARN", f"cannot tell whether the clock is synchronized (no timedatectl answer){seen}",
              "check time sync (chrony, ntpd) by hand; `edge doctor --listen 60` compares with ChirpStack's clock")
    newest = _newest_uplink(cfg)
    if newest is not None and newest - time.time() > 300:
        r.add("clock vs buffer", "WARN", f"the newest uplink is {newest - time.time():.0f} s ahead of the local clock",
              "the local clock is behind or ChirpStack's is ahead: fix time sync on both hosts")


def _check_decoders(r: _Report, cfg: Config) -> None:
    from edge.plugins import BUILTIN, load_decoders

    loaded = load_decoders(cfg.decoding.plugins_allow, cfg.decoding.plugins_block)
    for problem in loaded.problems:
        r.add("decoders", "WARN", problem, "reinstall or upgrade that package, or list it in decoding.plugins_block")
    ids = loaded.by_id()
    for i, rule in enumerate(cfg.decoding.rules):
        if rule.decoder not in ids:
            r.add("decoders", "WARN", f"decoding.rule[{i}] names {rule.decoder!r}, which is not installed",
                  "use an id from `edge decoders list` or install the plugin that provides it")
    builtin = sum(1 for info in loaded.decoders if info.source == BUILTIN)
    r.add("decoders", "OK", f"{len(loaded.decoders)} loaded ({builtin} built-in, {len(loaded.decoders) - builtin}"
          " from plugins)")
    _check_field_maps(r, cfg)


def _check_field_maps(r: _Report, cfg: Config) -> None:
    """Every field map loads (docs/field-maps.md); a broken one leaves its codec's fields unit-less."""
    from edge.decoding.fieldmap import default_index

    index = default_index(Path(p) for p in cfg.decoding.map_paths)
    index.load_all()
    for problem in index.problems[:10]:
        r.add("field maps", "WARN", problem, "fix the map (`edge decoders test` checks it with the codec's examples)")
    if len(index.problems) > 10:
        r.add("field maps", "WARN", f"{len(index.problems) - 10} more map problems", "run `edge decoders test`")
    r.add("field maps", "OK", f"{len(index.maps)} maps for {len(index.keys)} codecs")


def _check_health(r: _Report, cfg: Config) -> None:
    """How many sensors are silent or unwell, with the worst ones (docs/health.md)."""
    from edge.cli.health import report

    if not cfg.health.enabled or not Path(cfg.buffer.path).exists():
        return
    rows = report(cfg)
    if not rows:
        return
    silent = [x for x in rows if x["state"] == "silent"]
    never = [x for x in rows if x["state"] == "never-seen"]
    unwell = [x for x in rows if x["problems"]]
    detail = (f"{len(rows)} sensors: {len(silent)} silent, {len(never)} never seen, {len(unwell)} with problems")
    if silent or never or unwell:
        worst = ", ".join(f"{x['dev_eui']} ({x['state']}{': ' + ','.join(x['problems']) if x['problems'] else ''})"
                          for x in (silent + never + unwell)[:5])
        r.add("sensor health", "WARN", f"{detail}; worst: {worst}",
              "`edge devices health --unwell` lists them; check batteries and coverage, or the device's interval")
    else:
        r.add("sensor health", "OK", detail)


def _check_codecs(r: _Report, cfg: Config) -> None:
    """The codec catalogue index: devices whose `codec` tag names a codec it lacks; Buffer for codecs."""
    from edge.buffer.registry import DeviceRegistry
    from edge.decoding.catalogue import CODEC_TAG, CatalogueIndex, index_path, is_key
    from edge.errors import EdgeError

    index = CatalogueIndex.open_for(cfg.buffer.path)
    missing: list[str] = []
    if Path(cfg.buffer.path).exists():
        try:
            cache = DeviceRegistry(cfg.buffer.path, readonly=True)
        except EdgeError:
            cache = None
        if cache is not None:
            try:
                profiles = {p.id: p for p in cache.list_profiles()}
                for device in cache.list_devices():
                    profile = profiles.get(device.profile_id)
                    for tags in (device.tags, profile.tags if profile else {}):
                        key = tags.get(CODEC_TAG, "").strip()
                        if is_key(key) and (index is None or index.codec(key) is None):
                            missing.append(f"{device.dev_eui} ({key})")
                            break
            finally:
                cache.close()
    try:
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            r.add("codecs", "WARN", f"{len(missing)} device(s) name a catalogue codec the index"
                  f" {index_path(cfg.buffer.path)} does not hold: {shown}; their uplinks fail to decode",
                  "import the catalogue that has it (`edge codecs import PATH`) or correct the device's or its"
                  " profile's `codec` tag")
        if index is not None:
            held = {i["catalogue"]: i["codecs"] for i in index.imports()}
            r.add("codecs", "OK", "codec index: " + (", ".join(f"{k} {v} codecs" for k, v in held.items()) or "empty"))
    finally:
        if index is not None:
            index.close()


def _check_quarantine(r: _Report, cfg: Config) -> None:
    """Uplinks a decoder hung on (edge/quarantine.py); said only when there are some."""
    from edge import quarantine

    held = quarantine.load(quarantine.path_for(cfg.buffer.path))
    if held:
        r.add("quarantine", "WARN", quarantine.summary(held.values()), quarantine.FIX)


def _check_service(r: _Report, cfg: Config) -> None:
    """Whether lorawan-edge itself runs and calls itself healthy (its /health on the status server)."""
    from edge.cli import service_health

    state = service_health(cfg)
    logs = "`journalctl -u lorawan-edge -n 50`"
    if not state["url"]:
        r.add("service", "WARN", f"cannot ask the running service: {state['error']}",
              "set [web] port (default 9108), or look at `systemctl status lorawan-edge`")
    elif not state["reachable"]:
        r.add("service", "FAIL", f"lorawan-edge does not answer at {state['url']}: {state['error']}",
              f"start it: `systemctl start lorawan-edge`; if it keeps stopping, read {logs}")
    elif state["healthy"]:
        r.add("service", "OK", f"running and healthy ({state['url']})")
    else:
        problems = "; ".join(state["problems"]) or state.get("error", "unknown")
        r.add("service", "FAIL", f"running but unhealthy: {problems}",
              f"see the checks above for the cause, and {logs}")


def run_checks(config_path: Path, *, publish_test: bool = False, listen: float = 0.0,
               on_finding: Callable[[Finding], None] | None = None) -> list[Finding]:
    """Run every check against the installation described by a config file.

    Args:
        config_path: the edge.toml to check; when it is invalid, only the config findings are returned.
        publish_test: also publish a QoS 1 `doctor-test` message to every upstream's notice topic.
        listen: seconds to wait for a live ChirpStack event (0: judge by the buffer's newest uplink).
        on_finding: called with each finding as soon as it is made.

    Returns:
        Every finding, in the order the checks ran.
    """
    from edge.sinks.checks import health_checks

    r = _Report(on_finding)
    try:
        cfg = load_config(config_path)
    except ConfigError as exc:
        for problem in exc.problems:
            r.add("config", "FAIL", problem, f"edit {config_path}, then run `edge validate --config {config_path}`")
        return r.findings
    r.add("config", "OK", f"{config_path} is valid ({len(cfg.upstreams) + len(cfg.http_upstreams)} upstream(s))")
    _check_secret_files(r, cfg)
    skew = _check_chirpstack(r, cfg, listen)
    _check_chirpstack_api(r, cfg)
    for checks in health_checks(cfg, publish_test=publish_test):
        r.run(checks)
    _check_disk(r, cfg)
    _check_buffer(r, cfg)
    _check_clock(r, cfg, skew)
    _check_decoders(r, cfg)
    _check_codecs(r, cfg)
    _check_quarantine(r, cfg)
    _check_health(r, cfg)
    _check_service(r, cfg)
    return r.findings


@click.command()
@CONFIG_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the findings as a JSON list.")
@click.option("--publish-test", is_flag=True,
              help="Publish a QoS 1 test message to each upstream's notice topic (HTTP: POST to notice_endpoint).")
@click.option("--listen", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Seconds to wait for a live ChirpStack event (0: use the buffer's newest uplink).")
def doctor(config_path: Path, as_json: bool, publish_test: bool, listen: float) -> None:
    """Check config, brokers, certificates, ChirpStack's API, disk, buffer, clock, decoders and the service."""
    findings = run_checks(config_path, publish_test=publish_test, listen=listen,
                          on_finding=None if as_json else lambda f: echo(f.line()))
    counts = {status: sum(1 for f in findings if f.status == status) for status in ("OK", "WARN", "FAIL")}
    if as_json:
        click.echo(json.dumps([asdict(f) for f in findings], indent=2))
    else:
        verdict = "problems found" if counts["FAIL"] else "no failures"
        click.echo(f"{len(findings)} checks: {counts['OK']} OK, {counts['WARN']} WARN, {counts['FAIL']} FAIL"
                   f" — {verdict}")
    if counts["FAIL"]:
        raise SystemExit(1)
