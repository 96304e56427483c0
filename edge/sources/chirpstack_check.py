"""`edge doctor`'s checks of the ChirpStack source: broker, subscription, live events, gRPC API, device cache."""

from __future__ import annotations

import queue
import time
from datetime import UTC, datetime
from pathlib import Path

from edge.checks import ComponentCheck, Context, Report, duration
from edge.errors import EdgeError
from edge.probe import NET_TIMEOUT, mqtt_session, network, why


def check(r: Report, ctx: Context, index: int) -> None:
    """The source's checks; a live uplink's delay is left in the report for the clock check."""
    r.event_delay_s = _check_broker(r, ctx)
    _check_api(r, ctx)


# The configuration always has one ChirpStack source.
CHECK = ComponentCheck("chirpstack", lambda cfg: 1, check)


def _check_broker(r: Report, ctx: Context) -> float | None:
    """Every ChirpStack broker check; returns how late a live uplink arrived by its own time stamp, if one came."""
    from edge.model import Malformed, Uplink
    from edge.sources.chirpstack_events import parse

    cfg, listen = ctx.cfg, ctx.listen
    ep, topic = cfg.chirpstack.mqtt, cfg.chirpstack.topic
    want = cfg.chirpstack.session_expiry_s
    reached = r.run(network("chirpstack", "chirpstack", ep, "chirpstack.mqtt_url"))
    session = r.run(mqtt_session("chirpstack", "chirpstack", ep, want)) if reached else None
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
    newest = ctx.newest_uplink()
    if newest is not None and time.time() - newest < 3600:
        r.add("chirpstack events", "OK", f"last uplink {max(0.0, time.time() - newest):.0f} s ago (buffer)")
    else:
        last = "never" if newest is None else datetime.fromtimestamp(newest, UTC).strftime("%Y-%m-%d %H:%M UTC")
        heard = f"; none in {listen:g} s of listening" if session is not None and listen > 0 else ""
        r.add("chirpstack events", "WARN", f"no uplink in the last hour (last: {last}){heard}",
              "check that sensors and gateways are online and ChirpStack's MQTT integration publishes to"
              f" {ep.host}; `edge doctor --listen 120` waits for a live event")
    return None


def _check_api(r: Report, ctx: Context) -> None:
    """The gRPC API with the configured token and tenant, then how fresh the device registry cache is."""
    from edge.errors import ApiAuthError, ApiNotFound, ApiPermissionError, ApiUnavailable
    from edge.sources.chirpstack_grpc import ChirpStackApi

    cs = ctx.cfg.chirpstack
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
        r.add("chirpstack api", "FAIL", f"cannot read {cs.api_token_file}: {why(exc)}",
              "make the token file readable by the service user")
    except EdgeError as exc:
        fix = next((text for kind, text in fixes if isinstance(exc, kind)), "see the message")
        r.add("chirpstack api", "FAIL", str(exc), fix)
    try:
        synced = ctx.device_syncs()
    except EdgeError as exc:
        r.add("device cache", "WARN", f"cannot read it: {exc}", "run `edge devices sync`")
        return
    if synced is None:
        return  # no buffer yet: the buffer checks say so
    if not synced:
        r.add("device cache", "WARN", "empty: device variables and profile codecs are not known yet",
              "run `edge devices sync` (`edge run` syncs at start once the API answers)")
        return
    age = time.time() - max(synced)
    stale = cs.api_sync_interval_s > 0 and age > 2 * cs.api_sync_interval_s + 60
    r.add("device cache", "WARN" if stale else "OK", f"{len(synced)} devices, last synced {duration(age)} ago",
          "check the service's log for 'Device registry sync failed', or run `edge devices sync`")
