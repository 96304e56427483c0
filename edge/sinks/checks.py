"""Every configured upstream's own health check, for `edge doctor`: the one place that pairs upstream kinds with checks.

A new sink adds its check here (a HealthCheck, see edge.sinks.base); doctor runs whatever this yields.
"""

from __future__ import annotations

from collections.abc import Iterator

from edge.config import Config, HttpUpstreamConfig, UpstreamConfig
from edge.model import Check
from edge.sinks import http_check, mqtt_check
from edge.sinks.base import CheckContext, HealthCheck

_MQTT: HealthCheck[UpstreamConfig] = mqtt_check.check
_HTTP: HealthCheck[HttpUpstreamConfig] = http_check.check


def health_checks(cfg: Config, *, publish_test: bool = False) -> Iterator[Iterator[Check]]:
    """Each configured upstream's health check, in config order: the MQTT upstreams, then the HTTP ones.

    Args:
        cfg: the configuration whose upstreams are checked.
        publish_test: also have each upstream acknowledge one test message (see CheckContext).

    Returns:
        Per upstream, its checks; nothing runs before a check is iterated.
    """
    for index, mqtt in enumerate(cfg.upstreams):
        yield _MQTT(mqtt, CheckContext(index, cfg.edge_id, publish_test))
    for index, http in enumerate(cfg.http_upstreams):
        yield _HTTP(http, CheckContext(index, cfg.edge_id, publish_test))
