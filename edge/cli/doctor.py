"""`edge doctor`: checks an installation end to end and says, per problem, what to fix."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import click

from edge.checks import ComponentCheck, Context, Finding, registered
from edge.checks import Report as _Report
from edge.cli import CONFIG_OPTION
from edge.cli import doctor_checks as local
from edge.cli.text import echo
from edge.config import Config, load_config
from edge.errors import ConfigError
from edge.probes import MQTT_TIMEOUT
from edge.probes import Endpoint as _Endpoint
from edge.probes import check_mqtt as _check_mqtt
from edge.probes import check_network as _check_network
from edge.probes import why as _why
from edge.sinks.base import Backlog

# -- upstream probes --------------------------------------------------------------------------------
# Registered as the "mqtt" and "http" sink checks (edge.checks) until they move next to their sinks
# (edge/sinks/*_check.py); they keep the names their bodies use until then.

def _check_upstream(r: _Report, cfg: Config, index: int, publish_test: bool) -> None:
    up = cfg.upstreams[index]
    label, section = f"upstream {up.name}", f"upstream[{index}]"
    if not _check_network(r, label, section, up.mqtt):
        return
    session = _check_mqtt(r, label, section, up.mqtt)
    if session is None or not publish_test:
        if session is not None:
            session.close()
        return
    # Formatted the way the pipeline formats gap notices, so the test lands where they do.
    topic = up.notice_topic.format(edge_id=cfg.edge_id, dev_eui="", application="", application_id="", gateway_id="")
    body = json.dumps({"type": "doctor-test", "edge_id": cfg.edge_id, "upstream": up.name,
                       "time": datetime.now(UTC).isoformat(), "note": "test message from `edge doctor`; ignore it"})
    info = session.client.publish(topic, body, qos=1)
    code = session.wait(session.pubacks, info.mid, MQTT_TIMEOUT)
    session.close()
    if code is None:
        r.add(f"{label} publish", "FAIL", f"no PUBACK for the test message on {topic} within {MQTT_TIMEOUT:.0f} s",
              f"check the broker's ACL for user {up.mqtt.username or '(anonymous)'} and its logs")
    elif code.is_failure:
        r.add(f"{label} publish", "FAIL", f"test message on {topic} refused: {code}",
              f"allow user {up.mqtt.username or '(anonymous)'} to publish to {topic} in the broker's ACL")
    else:
        r.add(f"{label} publish", "OK", f"test message on {topic} acknowledged (QoS 1)")


def _probe_url(endpoint: str, fmt: str) -> str:
    """What doctor GETs to see whether an HTTP upstream accepts our credentials, without writing.

    For NGSI-LD the broker's type list (`/ngsi-ld/v1/types`), which every broker serves and guards
    like its writes; otherwise the endpoint itself, where any answer but 401/403 means the
    credentials passed.
    """
    if fmt == "ngsi-ld" and "/ngsi-ld/v1/" in endpoint:
        return endpoint.split("/ngsi-ld/v1/", 1)[0] + "/ngsi-ld/v1/types"
    return endpoint


def _no_backlog() -> Backlog:
    raise AssertionError("doctor only borrows an HTTP sink's client; it never runs the sink")


def _check_http_upstream(r: _Report, cfg: Config, index: int, publish_test: bool) -> None:
    import httpx

    from edge.sinks.http import HttpSink, redact

    up = cfg.http_upstreams[index]
    label, section = f"upstream {up.name}", f"http_upstream[{index}]"
    parts = httpx.URL(up.endpoint)
    if up.proxy:
        proxy = httpx.URL(up.proxy)
        ep = _Endpoint(proxy.host, proxy.port or (443 if proxy.scheme == "https" else 80), False)
        if not _check_network(r, f"{label} proxy", section, ep, f"{section}.proxy"):
            return
    else:
        ep = _Endpoint(parts.host, parts.port or (443 if parts.scheme == "https" else 80), parts.scheme == "https",
                       up.ca_file, up.cert_file, up.key_file)
        if not _check_network(r, label, section, ep, f"{section}.endpoint"):
            return
    try:
        # The sink itself builds the client: the same token, headers, TLS context and proxy as `edge run`.
        sink = HttpSink(up, _no_backlog, lambda entries: [], threading.Event())
    except ValueError as exc:
        r.add(f"{label} auth", "FAIL", str(exc), "run doctor as the service's user or root (sudo), or fix the"
              f" files named in [{section}]")
        return
    probe = _probe_url(up.endpoint, up.format)
    token_fix = (f"put a valid token in {up.bearer_token_file}" if up.bearer_token_file
                 else f"the server wants credentials: set bearer_token_file (or headers) in [{section}]")
    try:
        with sink.client() as client:
            client.timeout = httpx.Timeout(MQTT_TIMEOUT)
            answer = client.get(probe, headers={"Accept": "application/json"})
            if answer.status_code in (401, 403):
                r.add(f"{label} auth", "FAIL", f"GET {redact(probe)} answered HTTP {answer.status_code}", token_fix)
                return
            if answer.status_code >= 500:
                r.add(f"{label} auth", "WARN", f"GET {redact(probe)} answered HTTP {answer.status_code}",
                      f"the server at {parts.host} has a problem of its own; see its logs")
            elif probe != up.endpoint and answer.status_code == 404:
                r.add(f"{label} auth", "FAIL", f"GET {redact(probe)} answered 404: no NGSI-LD broker there",
                      f"check the path of {section}.endpoint (…/ngsi-ld/v1/entityOperations/upsert)")
                return
            else:
                r.add(f"{label} auth", "OK", f"GET {redact(probe)} answered HTTP {answer.status_code}"
                      " (credentials not refused)")
            if not publish_test:
                return
            if not up.notice_endpoint:
                r.add(f"{label} publish", "OK", "skipped: no notice_endpoint (doctor never posts test data to the"
                      " data endpoint)")
                return
            body = {"type": "doctor-test", "edge_id": cfg.edge_id, "upstream": up.name,
                    "time": datetime.now(UTC).isoformat(), "note": "test message from `edge doctor`; ignore it"}
            posted = client.post(up.notice_endpoint, json=body)
    except httpx.HTTPError as exc:
        r.add(f"{label} auth", "FAIL", f"request to {redact(probe)} failed: {_why(exc)}",
              f"check {section}.endpoint, the proxy and that the server speaks HTTP{'S' if ep.tls else ''}")
        return
    if posted.is_success:
        r.add(f"{label} publish", "OK",
              f"test notice POSTed to {redact(up.notice_endpoint)}: HTTP {posted.status_code}")
    else:
        r.add(f"{label} publish", "FAIL", f"test notice POSTed to {redact(up.notice_endpoint)}: HTTP"
              f" {posted.status_code}", token_fix if posted.status_code in (401, 403)
              else f"check {section}.notice_endpoint and the server's logs")


MQTT_UPSTREAM_CHECK = ComponentCheck("mqtt", lambda cfg: len(cfg.upstreams),
                                     lambda r, ctx, i: _check_upstream(r, ctx.cfg, i, ctx.publish_test))
HTTP_UPSTREAM_CHECK = ComponentCheck("http", lambda cfg: len(cfg.http_upstreams),
                                     lambda r, ctx, i: _check_http_upstream(r, ctx.cfg, i, ctx.publish_test))


# -- doctor -----------------------------------------------------------------------------------------

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
    r = _Report(on_finding)
    try:
        cfg = load_config(config_path)
    except ConfigError as exc:
        for problem in exc.problems:
            r.add("config", "FAIL", problem, f"edit {config_path}, then run `edge validate --config {config_path}`")
        return r.findings
    r.add("config", "OK", f"{config_path} is valid ({len(cfg.upstreams) + len(cfg.http_upstreams)} upstream(s))")
    local.check_secret_files(r, cfg)
    # Each source's and sink's own checks, for every one the configuration has (edge.checks).
    ctx = Context(cfg, publish_test, listen, newest_uplink=lambda: local.newest_uplink(cfg),
                  device_syncs=lambda: local.device_syncs(cfg))
    for component in registered("source") + registered("sink"):
        for index in range(component.count(cfg)):
            component.check(r, ctx, index)
    local.check_disk(r, cfg)
    local.check_buffer(r, cfg)
    local.check_clock(r, cfg, r.event_delay_s)
    local.check_decoders(r, cfg)
    local.check_codecs(r, cfg)
    local.check_quarantine(r, cfg)
    local.check_health(r, cfg)
    local.check_service(r, cfg)
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
