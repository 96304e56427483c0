"""The configuration: a TOML file with its drop-ins, read into frozen dataclasses whose fields declare every key.

The schema (types, defaults, bounds and one-line docs of every key) is the dataclasses in
`sections`, `upstreams` and `schema`; `tables` reads TOML into them with msgspec, `checks` holds the
rules a bound cannot state, `load` reads a whole document, `layers` merges the files and
environment overrides, `secrets` finds files holding secrets, `reference` writes docs/config.md.
"""

from edge.config.load import DEFAULT_PATH, describe, load_config, parse_config
from edge.config.schema import Config
from edge.config.secrets import secret_file_warnings, secret_files
from edge.config.sections import (
    BufferConfig,
    ChirpStackConfig,
    DecoderRuleConfig,
    DecodingConfig,
    HealthBatteryRule,
    HealthConfig,
    HealthIntervalRule,
    MqttEndpoint,
    WebConfig,
)
from edge.config.upstreams import HttpUpstreamConfig, NgsiLdConfig, ShareRules, UpstreamConfig

__all__ = [
    "DEFAULT_PATH",
    "BufferConfig",
    "ChirpStackConfig",
    "Config",
    "DecoderRuleConfig",
    "DecodingConfig",
    "HealthBatteryRule",
    "HealthConfig",
    "HealthIntervalRule",
    "HttpUpstreamConfig",
    "MqttEndpoint",
    "NgsiLdConfig",
    "ShareRules",
    "UpstreamConfig",
    "WebConfig",
    "describe",
    "load_config",
    "parse_config",
    "secret_file_warnings",
    "secret_files",
]
