"""The root of the configuration schema: `Config`, one field per TOML section (sections.py, upstreams.py)."""

from dataclasses import dataclass, field
from typing import Annotated

from msgspec import Meta

from edge.config.sections import (
    EDGE_ID,
    BufferConfig,
    ChirpStackConfig,
    DecodingConfig,
    HealthConfig,
    WebConfig,
    choice,
)
from edge.config.upstreams import HttpUpstreamConfig, UpstreamConfig


@dataclass(frozen=True)
class Config:
    """The whole configuration.

    Field metadata "toml" names a field's TOML key when it differs from the field's name ("edge.id"
    is the key id of [edge]; None: not a key at all); "computed": the default is made at load time.
    """

    edge_id: Annotated[str, Meta(pattern=rf"^{EDGE_ID.pattern}\Z", description="This gateway's name, in MQTT"
                                 " client ids and the {edge_id} placeholder; default: $EDGE_ID, then the host name.",
                                 extra={"problem": "use 1-128 letters, digits and . _ : @ = ~ - (it goes into topics"
                                                   " and client ids)"})] = \
        field(metadata={"toml": "edge.id", "computed": True})
    chirpstack: ChirpStackConfig
    buffer: BufferConfig
    upstreams: tuple[UpstreamConfig, ...] = field(metadata={"toml": "upstream"})
    decoding: DecodingConfig = field(default_factory=DecodingConfig)
    http_upstreams: tuple[HttpUpstreamConfig, ...] = field(default=(), metadata={"toml": "http_upstream"})
    web: WebConfig = field(default_factory=WebConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    log_level: Annotated[str, Meta(pattern=choice("debug", "info", "warning", "error"), description="Log level:"
                                   " debug (per-uplink detail), info, warning or error.", extra={"lower": True,
                                   "problem": "must be debug, info, warning or error"})] = \
        field(default="info", metadata={"toml": "edge.log_level"})
    source_path: str = field(default="", metadata={"toml": None})
