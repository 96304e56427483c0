"""`edge devices` (sync, list, explain the decoder choice) and `edge downlink`, over ChirpStack's gRPC API."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from edge.buffer.registry import CachedApplication, CachedDevice, CachedProfile, DeviceRegistry
from edge.cli import CONFIG_OPTION, _load
from edge.cli.text import echo
from edge.config import Config
from edge.decoding.registry import DecoderRegistry, DeviceHints, Rule
from edge.decoding.setup import build_registry
from edge.errors import EdgeError
from edge.model import DeviceInfo, RadioInfo, Uplink
from edge.sources.chirpstack_grpc import ChirpStackApi  # cheap: it imports grpcio only inside its methods
from edge.sources.chirpstack_grpc import sync as sync_devices

# What `explain` returns when no decoder id applies.
PROFILE_JS = "profile-js"  # the device profile's own JavaScript codec, run on the gateway
CHIRPSTACK = "chirpstack"  # ChirpStack's decoded `object` (the name the buffer stores as decoder)
UNDECODED = "undecoded"

F = TypeVar("F", bound=Callable[..., Any])


def _unknown(decoder_id: str, known: Collection[str]) -> str:
    return "" if decoder_id in known else f" No decoder has the id {decoder_id!r}, so its uplinks fail to decode."


def _matched(rule: Rule, dev: DeviceInfo) -> str:
    if dev.dev_eui in rule.dev_eui:
        return f"dev_eui {dev.dev_eui}"
    for name in (dev.device_profile_name, dev.device_profile_id):
        if name in rule.device_profile:
            return f"device_profile {name!r}"
    name = dev.application_name if dev.application_name in rule.application else dev.application_id
    return f"application {name!r}"


def explain(dev_eui: str, device: CachedDevice | None, profile: CachedProfile | None,
            application: CachedApplication | None, rules: Sequence[Rule], known: Collection[str], *,
            tag: str = "decoder", uplink: DeviceInfo | None = None, uplink_had_object: bool = False,
            use_object: bool = True, native: Callable[[str, str], str] | None = None,
            catalogue: DecoderRegistry | None = None) -> tuple[str, str]:
    """Which decoder a device gets, and why; a pure function of cached data and config.

    Order: the device's tag → config rules → the device profile's tag → a `codec` tag naming a
    catalogue codec → a native decoder for a TTN profile → a catalogue codec matching the profile
    → the profile's JS codec → ChirpStack's `object` → undecoded. The device's tag comes from the cache; only for a
    device not cached yet from its last uplink, whose tags ChirpStack merges from device and
    profile (so there a profile's tag also comes before the rules).

    Args:
        dev_eui: the DevEUI in hex.
        device: the cached device, or None if not cached.
        profile: the cached device profile of the device, or None.
        application: the cached application of the device, or None.
        rules: the config rules, in config order (first match wins).
        known: every decoder id and alias that is loaded.
        tag: the tag key that names a decoder (`[decoding] tag`).
        uplink: the device info of the last stored uplink, if any.
        uplink_had_object: whether that uplink carried ChirpStack's `object`.
        use_object: `[decoding] use_chirpstack_object`.
        native: the registry's native_for_profile.
        catalogue: the registry whose codec index (`edge codecs import`) is consulted, if any.

    Returns:
        (a decoder id, PROFILE_JS, CHIRPSTACK or UNDECODED; a sentence saying why).
    """
    seen = uplink or DeviceInfo(dev_eui.lower())
    dev = DeviceInfo(
        dev_eui=dev_eui.lower(),
        application_id=device.application_id if device else seen.application_id,
        application_name=application.name if application else seen.application_name,
        device_profile_id=device.profile_id if device else seen.device_profile_id,
        device_profile_name=profile.name if profile else seen.device_profile_name,
    )
    if device is not None and device.tags.get(tag):
        chosen = device.tags[tag]
        return chosen, f"The device has the ChirpStack tag {tag}={chosen}." + _unknown(chosen, known)
    if device is None and uplink is not None and uplink.tags.get(tag):
        chosen = uplink.tags[tag]
        return chosen, (f"The device's last uplink carried the tag {tag}={chosen} (ChirpStack merges device-profile"
                        " tags into it)." + _unknown(chosen, known))
    # Rule.matches takes an uplink; a stand-in built from the cache keeps one definition of matching.
    probe = Uplink("", dev, 0.0, 0, b"", RadioInfo())
    for number, rule in enumerate(rules, start=1):
        if rule.matches(probe):
            return rule.decoder, (f"Config rule {number} matches its {_matched(rule, dev)}."
                                  + _unknown(rule.decoder, known))
    name = repr(profile.name) if profile else ""
    if profile is not None and profile.tags.get(tag):
        chosen = profile.tags[tag]
        return chosen, f"Device profile {name} has the tag {tag}={chosen}." + _unknown(chosen, known)
    profile_name = profile.name if profile is not None else (uplink.device_profile_name if uplink else "")
    hints = DeviceHints(tags=device.tags if device else (uplink.tags if uplink else {}),
                        profile_id=dev.device_profile_id, profile_tags=profile.tags if profile else {})
    probe = Uplink("", DeviceInfo(dev.dev_eui, device_profile_id=dev.device_profile_id,
                                  device_profile_name=profile_name, tags=dict(hints.tags)), 0.0, 0, b"", RadioInfo())
    found = catalogue.catalogue_match(probe, hints, tags_only=True) if catalogue is not None else None
    if found is not None:
        return found.key, f"{found.why} The gateway decodes its uplinks with that catalogue codec."
    chosen = native(profile_name, profile.tags.get("ttn_codec", "") if profile else "") if native else ""
    if chosen:
        return chosen, (f"Device profile {profile_name!r} is a TTN Device Repository device; the native decoder"
                        f" {chosen} returns the same data as its codec, faster.")
    found = catalogue.catalogue_match(probe, hints) if catalogue is not None else None
    if found is not None:
        return found.key, (f"{found.why} It came from a codec catalogue, so the gateway decodes its uplinks"
                           " with that codec.")
    if profile is not None and profile.codec_runtime == "JS" and profile.codec_script.strip():
        return PROFILE_JS, f"Device profile {name} has a JavaScript codec; the gateway runs that same script."
    if profile is not None and profile.codec_runtime == "CAYENNE_LPP":
        why = f"ChirpStack decodes it with Cayenne LPP (device profile {name})"
    elif uplink_had_object:
        why = "Its last uplink carried ChirpStack's decoded `object`"
    else:
        why = ""
    if why and use_object:
        return CHIRPSTACK, why + "; the readings come from that `object`."
    if why:
        return UNDECODED, why + ", but [decoding] use_chirpstack_object is off: uplinks are stored undecoded."
    missing = "" if device else " The device is not in the cache (run `edge devices sync`)."
    return UNDECODED, "No tag, no rule and no codec: uplinks are stored undecoded (raw payload kept)." + missing


# -- helpers shared by the commands ----------------------------------------------------------


def api_options(*, tenant: bool) -> Callable[[F], F]:
    """The options that locate ChirpStack's API; each overrides the config key named in its help."""
    options = [
        click.option("--api-url", help="ChirpStack API: host:port, http://host:port or https://host[:port]"
                     " (default: [chirpstack] api_url)."),
        click.option("--token-file", type=click.Path(dir_okay=False, path_type=Path),
                     help="File holding the API token (default: [chirpstack] api_token_file)."),
        click.option("--ca-file", type=click.Path(dir_okay=False, path_type=Path),
                     help="CA certificate of ChirpStack's TLS endpoint (default: [chirpstack] api_ca_file)."),
        click.option("--timeout", type=click.FloatRange(min=0.1), default=None,
                     help="Deadline of each API call in seconds (default: [chirpstack] api_timeout_s, else 10)."),
    ]
    if tenant:
        options.append(click.option(
            "--tenant-id", help="Sync only this tenant; needed for tenant API keys (default: [chirpstack] tenant_id)."))

    def decorate(fn: F) -> F:
        for option in reversed(options):
            fn = option(fn)
        return fn

    return decorate


def _setting(cfg: Config | None, option: object, key: str) -> str | None:
    # Config keys are read with getattr so this works before config.py knows them.
    if option:
        return str(option)
    value = getattr(cfg.chirpstack, key, None) if cfg is not None else None
    return str(value) if value else None


def _client(cfg: Config | None, api_url: str | None, token_file: Path | None, ca_file: Path | None,
            timeout: float | None) -> ChirpStackApi:
    url = _setting(cfg, api_url, "api_url")
    token_path = _setting(cfg, token_file, "api_token_file")
    if not url or not token_path:
        raise click.UsageError("set --api-url and --token-file (or [chirpstack] api_url and api_token_file)")
    try:
        token = Path(token_path).read_text().strip()
    except OSError as exc:
        raise click.UsageError(f"cannot read the token file {token_path}: {exc.strerror}") from None
    if not token:
        raise click.UsageError(f"the token file {token_path} is empty")
    if timeout is None:
        timeout = float(getattr(cfg.chirpstack, "api_timeout_s", 10.0) if cfg is not None else 10.0)
    try:
        return ChirpStackApi(url, token, ca_file=_setting(cfg, ca_file, "api_ca_file"), timeout_s=timeout,
                             token_file=token_path)
    except OSError as exc:
        raise click.UsageError(f"cannot read the CA file: {exc}") from None


def _dev_eui(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """A DevEUI as 16 hex digits (separators allowed), lowercased; anything else is a usage error."""
    cleaned = value.replace(":", "").replace("-", "").replace(" ", "").lower()
    if len(cleaned) != 16 or any(c not in "0123456789abcdef" for c in cleaned):
        raise click.BadParameter(f"{value!r} is not a DevEUI (16 hexadecimal digits, e.g. 70b3d5e75e000001)")
    return cleaned


def _fail(exc: EdgeError) -> NoReturn:
    click.echo(f"error: {exc}", err=True)
    raise SystemExit(1)


def _registry(cfg: Config, readonly: bool) -> DeviceRegistry:
    try:
        return DeviceRegistry(cfg.buffer.path, readonly=readonly)
    except EdgeError as exc:
        _fail(exc)


def _last_uplink(buffer_path: str, dev_eui: str) -> Uplink | None:
    """The device's last stored uplink, parsed again from its raw message (None if gone)."""
    from edge.buffer.store import connect
    from edge.sources.chirpstack_events import parse

    if not Path(buffer_path).exists():
        return None
    db = connect(buffer_path, readonly=True)
    try:
        row = db.execute("SELECT r.topic, r.payload, r.received FROM devices d JOIN raw r ON r.id = d.last_uplink"
                         " WHERE d.dev_eui = ?", (dev_eui.lower(),)).fetchone()
    except sqlite3.Error:
        return None  # no v1 tables yet: nothing was ever stored
    finally:
        db.close()
    event = parse(row[0], row[1], row[2]) if row else None
    return event if isinstance(event, Uplink) else None


def wait_for_queue_item(buffer_path: str | Path, queue_id: str, timeout: float, *,
                        kinds: Sequence[str] = ("ack", "txack"), poll_s: float = 0.25) -> dict[str, Any] | None:
    """Wait until the buffer holds an ack/txack event for a queued downlink.

    The running pipeline stores ChirpStack's ack and txack events with the summary
    "queueItemId=<id> acknowledged=<bool>"; this polls for that id read-only.

    Args:
        buffer_path: the buffer database file.
        queue_id: the id `ChirpStackApi.enqueue` returned.
        timeout: seconds to wait in all.
        kinds: event kinds that end the wait; ("ack",) for a confirmed downlink's acknowledgement.
        poll_s: seconds between polls.

    Returns:
        The first matching event as {id, kind, dev_eui, time, summary}, or None on timeout.
    """
    from edge.buffer.store import connect

    deadline = time.monotonic() + timeout
    marks = ",".join("?" * len(kinds))
    # The trailing space stops one id from matching another that it prefixes.
    params = (*kinds, f"queueItemId={queue_id} %")
    while True:
        if Path(buffer_path).exists():
            db = connect(buffer_path, readonly=True)
            try:
                row = db.execute(f"SELECT id, kind, dev_eui, time, summary FROM events WHERE kind IN ({marks})"
                                 " AND summary LIKE ? ORDER BY id LIMIT 1", params).fetchone()
            except sqlite3.OperationalError:
                row = None  # the pipeline has not created the schema yet
            finally:
                db.close()
            if row:
                return dict(zip(("id", "kind", "dev_eui", "time", "summary"), row, strict=True))
        if time.monotonic() >= deadline:
            return None
        time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))


# -- commands --------------------------------------------------------------------------------


@click.group()
def devices() -> None:
    """Cache ChirpStack's devices and profiles locally, list them, explain decoder choices."""


@devices.command()
@CONFIG_OPTION
@api_options(tenant=True)
def sync(config_path: Path, api_url: str | None, token_file: Path | None, ca_file: Path | None,
         timeout: float | None, tenant_id: str | None) -> None:
    """Pull every application, device and profile the token can see into the local cache.

    The cache is replaced in one transaction; if ChirpStack fails mid-way it keeps its
    previous content.
    """
    cfg = _load(config_path)
    registry = _registry(cfg, readonly=False)
    try:
        with _client(cfg, api_url, token_file, ca_file, timeout) as api:
            result = sync_devices(api, registry, tenant_id=_setting(cfg, tenant_id, "tenant_id"))
    except EdgeError as exc:
        _fail(exc)
    finally:
        registry.close()
    click.echo(f"synced {result.devices} devices in {result.applications} applications"
               f" ({result.profiles} device profiles) in {result.seconds:.1f}s")


@devices.command("list")
@CONFIG_OPTION
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_(config_path: Path, as_json: bool) -> None:
    """Show the cached devices (from the local cache; ChirpStack is not contacted)."""
    cfg = _load(config_path)
    registry = _registry(cfg, readonly=True)
    try:
        apps = {a.id: a.name for a in registry.list_applications()}
        profiles = {p.id: p for p in registry.list_profiles()}
        rows: list[dict[str, Any]] = [{
            "dev_eui": d.dev_eui, "name": d.name, "description": d.description,
            "application_id": d.application_id, "application": apps.get(d.application_id, ""),
            "profile_id": d.profile_id, "profile": profiles[d.profile_id].name if d.profile_id in profiles else "",
            "codec": profiles[d.profile_id].codec_runtime if d.profile_id in profiles else "",
            "tags": d.tags, "variables": d.variables, "is_disabled": d.is_disabled, "synced_at": d.synced_at,
        } for d in registry.list_devices()]
    finally:
        registry.close()
    if as_json:
        click.echo(json.dumps({"devices": rows}, indent=2))
        return
    tag = cfg.decoding.tag
    for r in rows:
        flags = " disabled" if r["is_disabled"] else ""
        echo(f"{r['dev_eui']} {r['name'][:24]:<24} {r['application'][:16]:<16} {r['profile'][:20]:<20}"
                   f" codec={r['codec'] or '-'} {tag}={r['tags'].get(tag, '-')}{flags}")
    newest = max((r["synced_at"] for r in rows), default=None)
    when = f", synced {time.time() - newest:.0f}s ago" if newest is not None else ""
    echo(f"{len(rows)} devices{when}")
    if not rows:
        echo("The cache is empty: run `edge devices sync` (needs [chirpstack] api_url and api_token_file).")


@devices.command("explain")
@CONFIG_OPTION
@click.argument("dev_eui", callback=_dev_eui)
def explain_(config_path: Path, dev_eui: str) -> None:
    """Say which decoder DEV_EUI gets and why (from the cache, the config and its last uplink)."""
    from edge.plugins import load_decoders

    cfg = _load(config_path)
    device = profile = application = None
    if Path(cfg.buffer.path).exists():
        registry = _registry(cfg, readonly=True)
        try:
            device = registry.get_device(dev_eui)
            if device is not None:
                profile = registry.get_profile(device.profile_id)
                application = registry.get_application(device.application_id)
        finally:
            registry.close()
    last = _last_uplink(cfg.buffer.path, dev_eui)
    known = load_decoders(cfg.decoding.plugins_allow, cfg.decoding.plugins_block).by_id()
    rules = [Rule(r.decoder, frozenset(r.dev_eui), frozenset(r.device_profile), frozenset(r.application))
             for r in cfg.decoding.rules]
    decoders = build_registry(cfg)
    chosen, why = explain(dev_eui, device, profile, application, rules, known, tag=cfg.decoding.tag,
                          uplink=last.device if last else None,
                          uplink_had_object=last is not None and last.object is not None,
                          use_object=cfg.decoding.use_chirpstack_object,
                          native=decoders.native_for_profile, catalogue=decoders)
    echo(f"{dev_eui.lower()}: {chosen}")
    echo(f"  {why}")


def _encode_locally(cfg: Config, dev_eui: str, data: Mapping[str, Any],
                    fport: int) -> tuple[bytes | Mapping[str, Any], int]:
    """Encode `data` with the codec the device's uplinks are decoded with (catalogue or profile JS).

    Returns the bytes and FPort (the codec may choose the port), or `data` unchanged when the
    device's codec has no encodeDownlink; exits 1 when the codec reports errors.
    """
    from edge.device_cache import _hints

    device = profile = None
    if Path(cfg.buffer.path).exists():
        cache = _registry(cfg, readonly=True)
        try:
            device = cache.get_device(dev_eui)
            profile = cache.get_profile(device.profile_id) if device is not None else None
        finally:
            cache.close()
    hints = _hints(device, profile) if device is not None else DeviceHints()
    info = DeviceInfo(dev_eui.lower(), device_profile_id=device.profile_id if device else "",
                      device_profile_name=profile.name if profile else "", tags=dict(hints.tags))
    encoded = build_registry(cfg).encode(Uplink("", info, 0.0, fport, b"", RadioInfo()), data, fport, hints)
    if encoded is None:
        return data, fport
    codec, result = encoded
    if result.errors or result.payload is None:
        click.echo(f"error: {codec} could not encode {json.dumps(data)}: {'; '.join(result.errors)}", err=True)
        raise SystemExit(1)
    for warning in result.warnings:
        click.echo(f"warning: {codec}: {warning}", err=True)
    port = result.fport or fport
    click.echo(f"encoded by {codec}: {result.payload.hex()} on FPort {port}", err=True)
    return result.payload, port


def _payload(hex_: str | None, obj: str | None) -> bytes | Mapping[str, Any]:
    if (hex_ is None) == (obj is None):
        raise click.UsageError("give exactly one of --hex and --json")
    if hex_ is not None:
        try:
            return bytes.fromhex(hex_.replace(" ", "").replace(":", ""))
        except ValueError:
            raise click.BadParameter("not hexadecimal bytes", param_hint="--hex") from None
    try:
        value = json.loads(obj or "")
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--json") from None
    if not isinstance(value, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--json")
    return value


@click.command()
@CONFIG_OPTION
@api_options(tenant=False)
@click.argument("dev_eui", callback=_dev_eui)
@click.option("--fport", type=click.IntRange(1, 223), required=True, help="LoRaWAN FPort of the downlink.")
@click.option("--hex", "hex_", metavar="BYTES", help="Payload as hex bytes (spaces and colons allowed).")
@click.option("--json", "obj", metavar="OBJECT",
              help="Payload as a JSON object, encoded by the device's codec (encodeDownlink) on the gateway when"
                   " it has one, else by the device profile's codec in ChirpStack.")
@click.option("--confirmed", is_flag=True, help="Ask the device to acknowledge the downlink.")
@click.option("--wait", "wait_s", type=click.FloatRange(0), default=0, metavar="SECONDS",
              help="Wait this long for ChirpStack's txack (or, with --confirmed, ack) event, seen by `edge run`.")
def downlink(config_path: Path, api_url: str | None, token_file: Path | None, ca_file: Path | None,
             timeout: float | None, dev_eui: str, fport: int, hex_: str | None, obj: str | None,
             confirmed: bool, wait_s: float) -> None:
    """Queue a downlink for DEV_EUI in ChirpStack and print its queue item id.

    With --wait, also report the matching ack/txack event that `edge run` stored (a class A
    device receives its downlink only after its next uplink, so wait long enough for that).
    """
    payload = _payload(hex_, obj)
    # The config is optional here: a downlink needs no buffer, and options can say everything.
    cfg = _load(config_path) if config_path.exists() else None
    if isinstance(payload, Mapping) and cfg is not None:
        payload, fport = _encode_locally(cfg, dev_eui, payload, fport)
    try:
        with _client(cfg, api_url, token_file, ca_file, timeout) as api:
            queue_id = api.enqueue(dev_eui, fport, payload, confirmed=confirmed)
    except EdgeError as exc:
        _fail(exc)
    click.echo(queue_id)
    if wait_s:
        if cfg is None:
            raise click.UsageError("--wait reads the buffer of `edge run`: give --config")
        event = wait_for_queue_item(cfg.buffer.path, queue_id, wait_s, kinds=("ack",) if confirmed else ("txack",))
        if event is None:
            echo(f"no {'ack' if confirmed else 'txack'} event for {queue_id} within {wait_s:g} s", err=True)
            raise SystemExit(1)
        echo(f"{event['kind']}: {event['summary']}")
        if event["summary"].endswith("acknowledged=False"):
            # ChirpStack reports a confirmed downlink the device never acknowledged as ack, acknowledged=false.
            click.echo(f"the device did not acknowledge downlink {queue_id}", err=True)
            raise SystemExit(1)
