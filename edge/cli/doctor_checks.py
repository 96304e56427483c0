"""`edge doctor`'s checks of this installation: secret files, disk, buffer, clock, decoders, codecs and the service."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from edge.checks import Report, duration
from edge.config import Config, secret_file_warnings, secret_files
from edge.errors import StorageError
from edge.probe import NET_TIMEOUT

MB = 1 << 20
FIX_CORRUPT = ("stop the service, move the buffer file aside (keep it for analysis) and start the service again;"
               " it creates an empty buffer")


def newest_uplink(cfg: Config) -> float | None:
    """ChirpStack time of the newest uplink any device sent, from the buffer (None when unknown)."""
    from edge.buffer import Inspector

    try:
        with Inspector(cfg.buffer.path) as look:
            return look.newest_device_time()
    except StorageError:
        return None  # the buffer checks report why


def device_syncs(cfg: Config) -> list[float] | None:
    """When each device in the buffer's registry cache was last synced; None while there is no buffer.

    Raises:
        EdgeError: the cache cannot be read.
    """
    from edge.buffer.registry import DeviceRegistry

    if not Path(cfg.buffer.path).exists():
        return None
    registry = DeviceRegistry(cfg.buffer.path, readonly=True)  # read-only: its reads raise StorageError
    try:
        return [d.synced_at for d in registry.list_devices()]
    finally:
        registry.close()


def check_secret_files(r: Report, cfg: Config) -> None:
    """Password, token and key files readable by their owner only."""
    warnings = secret_file_warnings(cfg)
    for warning in warnings:
        r.add("secret files", "WARN", warning, "only the service's user should read a password, token or key")
    if not warnings and secret_files(cfg):
        r.add("secret files", "OK", "password, token and key files are readable by their owner only")


def check_disk(r: Report, cfg: Config) -> None:
    """Free space on the buffer's filesystem."""
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


def check_buffer(r: Report, cfg: Config) -> None:
    """The buffer file, its integrity and schema version, then each upstream's backlog (edge.status)."""
    from edge.buffer import Buffer, Inspector
    from edge.buffer.location import problem
    from edge.buffer.migrations import MIGRATIONS
    from edge.status import read_buffer, upstream_names

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
        with Inspector(path) as look:
            result = look.quick_check()
            version = look.schema_version()
    except StorageError as exc:
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
        # The backlogs every other view shows (edge.status), read the same way.
        progress = read_buffer(buffer, upstream_names(cfg), time.time()).progress
    finally:
        buffer.close()
    for p in progress:
        name = p.name
        if p.cursor is None:
            r.add(f"upstream {name} backlog", "WARN", "no delivery progress recorded",
                  "restart the service so that it picks up this upstream")
            continue
        age = p.oldest_undelivered_age_s
        detail = f"{p.backlog} uplinks waiting" + (f", the oldest for {duration(age)}" if age else "")
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


def check_clock(r: Report, cfg: Config, skew: float | None) -> None:
    """NTP sync, else ChirpStack's clock by a live uplink's delay (`skew`); then the buffer's newest uplink."""
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
    newest = newest_uplink(cfg)
    if newest is not None and newest - time.time() > 300:
        r.add("clock vs buffer", "WARN", f"the newest uplink is {newest - time.time():.0f} s ahead of the local clock",
              "the local clock is behind or ChirpStack's is ahead: fix time sync on both hosts")


def check_decoders(r: Report, cfg: Config) -> None:
    """Decoder plugins load and every decoding rule names an installed decoder; then the field maps."""
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


def _check_field_maps(r: Report, cfg: Config) -> None:
    """Every field map loads (docs/field-maps.md); a broken one leaves its codec's fields unit-less."""
    from edge.decoding.fieldmap import default_index

    index = default_index(Path(p) for p in cfg.decoding.map_paths)
    index.load_all()
    for problem in index.problems[:10]:
        r.add("field maps", "WARN", problem, "fix the map (`edge decoders test` checks it with the codec's examples)")
    if len(index.problems) > 10:
        r.add("field maps", "WARN", f"{len(index.problems) - 10} more map problems", "run `edge decoders test`")
    r.add("field maps", "OK", f"{len(index.maps)} maps for {len(index.keys)} codecs")


def check_health(r: Report, cfg: Config) -> None:
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


def check_codecs(r: Report, cfg: Config) -> None:
    """The codec catalogue index: devices whose `codec` tag names a codec it lacks; Buffer for codecs."""
    from edge.buffer.registry import DeviceRegistry
    from edge.decoders import open_catalogue
    from edge.decoding.catalogue import CODEC_TAG, index_path, is_key
    from edge.errors import EdgeError

    index = open_catalogue(cfg.buffer.path)
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


def check_quarantine(r: Report, cfg: Config) -> None:
    """Uplinks a decoder hung on (edge/quarantine.py); said only when there are some."""
    from edge import quarantine

    held = quarantine.load(quarantine.path_for(cfg.buffer.path))
    if held:
        r.add("quarantine", "WARN", quarantine.summary(held.values()), quarantine.FIX)


def check_service(r: Report, cfg: Config) -> None:
    """Whether lorawan-edge itself runs and calls itself healthy (its /health on the status server)."""
    from edge.cli.status import service_health

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
