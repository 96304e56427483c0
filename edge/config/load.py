"""Reads the layered TOML document into a `Config`: each section by its schema, then the rules across sections."""

from __future__ import annotations

import os
import socket
from dataclasses import fields
from pathlib import Path
from typing import Any

from edge.config.checks import RULES
from edge.config.schema import Config
from edge.config.sections import BufferConfig, ChirpStackConfig, DecodingConfig, HealthConfig, WebConfig
from edge.config.tables import Context, Table, hints, read
from edge.config.upstreams import HttpUpstreamConfig, UpstreamConfig
from edge.errors import ConfigError

DEFAULT_PATH = Path("/etc/lorawan-edge/edge.toml")


def load_config(path: str | Path) -> Config:
    """Read the TOML file at `path`, its drop-in directory and EDGE__ overrides, and validate.

    Layering (edge/config/layers.py, deploy/fleet.md): `edge.toml`, then `edge.d/*.toml` in name
    order, then environment variables such as EDGE__EDGE__ID or EDGE__UPSTREAM__CITY__QOS.
    """
    from edge.config.layers import load_layers  # layering is only needed when reading files

    return parse_config(load_layers(Path(path)), str(path))


def parse_config(doc: dict[str, Any], source_path: str = "") -> Config:
    """Validate a parsed TOML document; raises ConfigError listing every problem.

    Sections are read in the order of a typical file, so problems are listed in that order; the TOML
    names here are the ones `Config`'s field metadata gives (tests/test_docs.py keeps them equal).
    """
    problems: list[str] = []
    top = Table(doc, "", problems)

    edge = top.sub("edge")
    given = edge.value("id", str, "")
    edge_id: str = edge.convert("id", given or os.environ.get("EDGE_ID", "") or socket.gethostname(),
                                hints(Config)["edge_id"], "")
    log_level: str = edge.value("log_level", hints(Config)["log_level"], Config.log_level)
    edge.done()
    context = Context(problems, edge_id, RULES)

    def section(name: str, cls: type, required: bool = False) -> Any:
        table = top.sub(name, required)
        obj = read(cls, table, context)
        table.done()
        return obj

    chirpstack: ChirpStackConfig = section("chirpstack", ChirpStackConfig, required=True)
    decoding: DecodingConfig = section("decoding", DecodingConfig)
    buffer: BufferConfig = section("buffer", BufferConfig)
    web: WebConfig = section("web", WebConfig)
    health: HealthConfig = section("health", HealthConfig)

    raw_ups = top.raw("upstream", list, [])
    raw_http = top.raw("http_upstream", list, [])
    if not raw_ups and not raw_http:
        problems.append("upstream: at least one [[upstream]] (MQTT) or [[http_upstream]] is required")
    names: set[str] = set()

    def upstream(cls: type, raw: Any, where: str, i: int) -> Any:
        """Entry `i` of an upstream array; names key each upstream's progress, so they are unique across both."""
        table = Table(raw, f"{where}[{i}]", problems)
        up = read(cls, table, context, placeholders={"name": f"upstream{i}"})
        if up.name in names:
            table.problem("name", f"{up.name!r} is used twice (names key each upstream's progress)")
        if not up.name.replace("-", "").replace("_", "").isalnum():
            table.problem("name", "use letters, digits, '-' and '_' only")
        names.add(up.name)
        if getattr(up, "command_topic", "") and not chirpstack.api_url:
            table.problem("command_topic", "downlink commands go through ChirpStack's API; set chirpstack.api_url"
                                           " and api_token_file")
        table.done()
        return up

    upstreams = tuple(upstream(UpstreamConfig, raw, "upstream", i) for i, raw in enumerate(raw_ups))
    http_upstreams = tuple(upstream(HttpUpstreamConfig, raw, "http_upstream", i) for i, raw in enumerate(raw_http))
    top.done()
    if problems:
        raise ConfigError(problems)
    return Config(edge_id=edge_id, chirpstack=chirpstack, buffer=buffer, upstreams=upstreams, decoding=decoding,
                  log_level=log_level, source_path=source_path, http_upstreams=http_upstreams, web=web, health=health)


def describe(cfg: Config) -> dict[str, Any]:
    """The effective configuration as plain data, without secrets (for `edge validate --show`)."""

    def plain(obj: Any) -> Any:
        if hasattr(obj, "__dataclass_fields__"):
            return {f.name: plain(getattr(obj, f.name)) for f in fields(obj)}
        if isinstance(obj, tuple | list):
            return [plain(v) for v in obj]
        return obj

    result: dict[str, Any] = plain(cfg)
    return result
