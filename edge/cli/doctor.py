"""`edge doctor`: checks an installation end to end and says, per problem, what to fix."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import click

from edge.checks import Context, registered
from edge.checks import Report as _Report
from edge.cli import CONFIG_OPTION
from edge.cli import doctor_checks as local
from edge.cli.text import echo
from edge.config import load_config
from edge.errors import ConfigError
from edge.model import Check

# -- doctor -----------------------------------------------------------------------------------------

def run_checks(config_path: Path, *, publish_test: bool = False, listen: float = 0.0,
               on_finding: Callable[[Check], None] | None = None) -> list[Check]:
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
