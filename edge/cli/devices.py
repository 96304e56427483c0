"""`edge devices`: sync ChirpStack's device registry, list it, and explain the decoder each device gets."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

import click

from edge.buffer.registry import CachedApplication, CachedDevice, CachedProfile
from edge.cli import CONFIG_OPTION, _load
from edge.cli.api import _client, _dev_eui, _fail, _registry, _setting, api_options
from edge.cli.text import echo
from edge.decoders import build_registry
from edge.decoding.registry import DecoderRegistry, DeviceHints, Rule
from edge.errors import EdgeError, StorageError
from edge.model import DeviceInfo, RadioInfo, Uplink
from edge.sources.chirpstack_sync import sync as sync_devices

# What `explain` returns when no decoder id applies.
PROFILE_JS = "profile-js"  # the device profile's own JavaScript codec, run on the gateway
CHIRPSTACK = "chirpstack"  # ChirpStack's decoded `object` (the name the buffer stores as decoder)
UNDECODED = "undecoded"


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


def _last_uplink(buffer_path: str, dev_eui: str) -> Uplink | None:
    """The device's last stored uplink, parsed again from its raw message (None if gone)."""
    from edge.buffer import Inspector
    from edge.sources.chirpstack_events import parse

    if not Path(buffer_path).exists():
        return None
    look = Inspector(buffer_path)
    try:
        row = look.last_uplink_message(dev_eui.lower())
    except StorageError:
        return None  # no v1 tables yet: nothing was ever stored
    finally:
        look.close()
    event = parse(row[0], row[1], row[2]) if row else None
    return event if isinstance(event, Uplink) else None


# -- commands --------------------------------------------------------------------------------
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
