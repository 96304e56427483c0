"""`edge downlink`: queue a downlink in ChirpStack, encoded on the gateway when the device's codec can."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import click

from edge.cli import CONFIG_OPTION, _load
from edge.cli.api import _client, _dev_eui, _fail, _registry, api_options
from edge.cli.text import echo
from edge.config import Config
from edge.decoders import build_registry
from edge.decoding.registry import DeviceHints
from edge.errors import EdgeError, StorageError
from edge.model import DeviceInfo, RadioInfo, Uplink


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
    from edge.buffer import Inspector

    deadline = time.monotonic() + timeout
    while True:
        if Path(buffer_path).exists():
            look = Inspector(buffer_path)
            try:
                row = look.queue_event(queue_id, kinds)
            except StorageError:
                row = None  # the pipeline has not created the schema yet
            finally:
                look.close()
            if row:
                return row
        if time.monotonic() >= deadline:
            return None
        time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))



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
