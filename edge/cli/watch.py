"""`edge watch`: a live view of ChirpStack uplinks and device events, decoded as the gateway would."""

from __future__ import annotations

import queue
import time
import uuid
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import click
import orjson
import paho.mqtt.client as paho

from edge import present
from edge.cli import CONFIG_OPTION, _load
from edge.cli.text import echo
from edge.decoding.registry import DecoderRegistry
from edge.model import DecodeStatus, DeviceEvent, Event, Malformed, Reading
from edge.mqtt import make_client


@dataclass(frozen=True)
class Filters:
    """Which devices to show; empty tuples show everything."""

    dev_euis: tuple[str, ...] = ()  # lowercase
    applications: tuple[str, ...] = ()  # names or ids, as given

    def accepts(self, dev_eui: str, application_id: str, application_name: str) -> bool:
        """True when a message of this device passes every filter that is set."""
        if self.dev_euis and dev_eui.lower() not in self.dev_euis:
            return False
        return not self.applications or bool({application_id, application_name} & set(self.applications))


def _topic_ids(topic: str) -> tuple[str, str]:
    """(dev_eui, application_id) from `application/{id}/device/{dev_eui}/event/{kind}`, or ('', '')."""
    parts = topic.split("/")
    if len(parts) >= 4 and parts[0] == "application" and parts[2] == "device":
        return parts[3].lower(), parts[1]
    return "", ""


def _device_info(payload: bytes) -> dict[str, Any]:
    # Device events carry the device and application names only in the message body; the parsed
    # DeviceEvent keeps just the ids. Protobuf bodies are left without names.
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return {}
    info = doc.get("deviceInfo") if isinstance(doc, dict) else None
    return info if isinstance(info, dict) else {}


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value).lower() if isinstance(value, bool) else str(value)


def format_readings(readings: list[Reading], base_time: float | None = None) -> str:
    """Readings as `name=value unit` pairs, e.g. `temperature=22.6 °C humidity=41 %RH`.

    Names are the vocabulary's, as sent upstream; values and units as every technician view shows
    them (edge/present.py). A sample with its own time (a meter's history) gets `@<seconds relative
    to the uplink>`, e.g. `volume=123.4 m³@-7200s`.

    Args:
        readings: decoded readings in the vocabulary's units.
        base_time: the uplink's receive time, for the offsets of samples with their own time.

    Returns:
        The pairs separated by single spaces.
    """
    return " ".join(f"{r.name}={present.reading(r.name, r.value, r.unit)}{_at(r, base_time)}" for r in readings)


def _at(reading: Reading, base_time: float | None) -> str:
    if reading.time is None:
        return ""
    if base_time is None:
        return f"@{reading.time:.0f}"
    return f"@{reading.time - base_time:+.0f}s"


def _decoder_label(status: int, decoder: str, error: str) -> str:
    if status == DecodeStatus.DECODED:
        return decoder
    if status == DecodeStatus.FAILED:
        return f"FAILED: {error}"
    return "chirpstack" if status == DecodeStatus.CHIRPSTACK else "undecoded"


def format_event(event: Event, payload: bytes, received: float, registry: DecoderRegistry, filters: Filters,
                 raw: bool = False) -> str | None:
    """The line `edge watch` prints for one parsed message, or None when the filters hide it.

    Args:
        event: what `parse()` made of the message.
        payload: the message body (for device and application names of non-uplink events).
        received: local time the message arrived (POSIX seconds).
        registry: decodes uplinks the way the running gateway would.
        filters: devices and applications to show.
        raw: also show fPort, frame counter and the payload in hex.

    Returns:
        One line of text without a newline, or None.
    """
    when = datetime.fromtimestamp(received).strftime("%H:%M:%S")
    if isinstance(event, Malformed):
        dev_eui, app_id = _topic_ids(event.topic)
        if (filters.dev_euis or filters.applications) and not filters.accepts(dev_eui, app_id, ""):
            return None
        return f"{when}  WARN malformed message on {event.topic}: {event.error}"
    if isinstance(event, DeviceEvent):
        info = _device_info(payload)
        if not filters.accepts(event.dev_eui, event.application_id, str(info.get("applicationName", ""))):
            return None
        return f"{when}  {event.dev_eui}  {info.get('deviceName', '-')}  {event.kind.upper()}  {event.summary}"
    device, radio = event.device, event.radio
    if not filters.accepts(device.dev_eui, device.application_id, device.application_name):
        return None
    decoded = registry.decode(event)
    # Fixed-width fields first, the decoded values last: on a narrow terminal only the values
    # wrap, and RSSI/SNR stay in the same columns line after line while a technician aims an antenna.
    parts = [when, device.dev_eui, device.device_name or "-",
             _decoder_label(decoded.status, decoded.decoder, decoded.error),
             f"rssi={present.rssi(radio.rssi)} snr={present.snr(radio.snr)} sf={radio.spreading_factor}",
             f"gw={radio.gateway_id or '-'}", f"delay={received - event.time:.1f}s"]
    if raw:
        parts.append(f"fport={event.fport} fcnt={radio.fcnt} payload={event.payload.hex() or '-'}")
    if decoded.readings:
        parts.append(format_readings(decoded.readings, event.time))
    if decoded.unmapped:
        # Fields no field map covers yet: sent unit-less under their own key (docs/field-maps.md).
        parts.append(f"unmapped={decoded.unmapped}")
    return "  ".join(parts)


@click.command()
@CONFIG_OPTION
@click.option("--device", "devices", multiple=True, help="Only this DevEUI (any case); repeat for more.")
@click.option("--application", "applications", multiple=True, help="Only this application (name or id); repeatable.")
@click.option("--raw", is_flag=True, help="Also show fPort, frame counter and the payload in hex.")
@click.option("--count", type=click.IntRange(min=0), default=0, help="Stop after this many lines (0: never).")
@click.option("--timeout", type=click.FloatRange(min=0), default=0.0, help="Stop after this many seconds (0: never).")
def watch(config_path: Path, devices: tuple[str, ...], applications: tuple[str, ...], raw: bool, count: int,
          timeout: float) -> None:
    """Show uplinks live as they arrive, decoded, with radio data; for checking a newly installed sensor."""
    from edge.decoders import build_registry
    from edge.sources.chirpstack_events import parse

    cfg = _load(config_path)
    registry = build_registry(cfg)
    filters = Filters(tuple(d.lower() for d in devices), applications)
    ep = cfg.chirpstack.mqtt
    # A throwaway client id and a clean session: the service's persistent session (and the events
    # queued in it) is never taken over, and QoS 0 means nothing is acknowledged on its behalf.
    ep = replace(ep, client_id=f"{ep.client_id}-watch-{uuid.uuid4().hex[:8]}")
    messages: queue.Queue[tuple[str, bytes, float] | str] = queue.Queue()

    def on_connect(client: paho.Client, userdata: object, flags: object, reason: Any, props: object) -> None:
        if reason.is_failure:
            messages.put(f"ChirpStack broker {ep.url} refused the connection: {reason}")
            return
        client.subscribe(cfg.chirpstack.topic, qos=0)

    def on_subscribe(client: paho.Client, userdata: object, mid: int, codes: list[Any], props: object) -> None:
        if any(c.is_failure for c in codes):
            messages.put(f"ChirpStack broker {ep.url} refused the subscription to {cfg.chirpstack.topic}")
        else:
            # Tests (and people) wait for this line: from here on no event is missed.
            click.echo(f"watching {ep.url} {cfg.chirpstack.topic} (Ctrl-C to stop)", err=True)

    client = make_client(ep, clean=True)
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = lambda c, u, m: messages.put((m.topic, bytes(m.payload), time.time()))
    client.on_disconnect = lambda c, u, f, reason, p: click.echo(f"disconnected ({reason}); reconnecting", err=True)
    client.reconnect_delay_set(max(1, int(ep.reconnect_min_s)), max(1, int(ep.reconnect_max_s)))
    try:
        if ep.protocol == "5":
            client.connect(ep.host, ep.port, ep.keepalive_s, clean_start=True)
        else:
            client.connect(ep.host, ep.port, ep.keepalive_s)
    except (OSError, ValueError) as exc:
        click.echo(f"error: cannot connect to ChirpStack broker {ep.url}: {exc}", err=True)
        raise SystemExit(1) from None
    client.loop_start()
    deadline = time.monotonic() + timeout if timeout else None
    shown = 0
    try:
        while not count or shown < count:
            wait = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
            if wait <= 0:
                break
            try:
                item = messages.get(timeout=wait)
            except queue.Empty:
                continue
            if isinstance(item, str):
                echo(f"error: {item}", err=True)
                raise SystemExit(1)
            topic, payload, received = item
            line = format_event(parse(topic, payload, received), payload, received, registry, filters, raw)
            if line is not None:
                echo(line)  # click.echo flushes: `edge watch | tee` and a test's pipe see each line at once
                shown += 1
    except KeyboardInterrupt:
        pass
    finally:
        client.on_disconnect = None
        client.disconnect()
        client.loop_stop()
