"""Prometheus metrics of the running gateway, collected from the status model (edge.status) at scrape time."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from edge.status import DECODE_ERRORS_TTL_S, UNMAPPED_SHOWN, Snapshot, StateReader, unmapped_by_codec

# The buffer's durable counters (edge.buffer.store.COUNTERS) as Prometheus counters.
_COUNTER_HELP = {
    "received": ("edge_received", "MQTT messages received from ChirpStack (uplinks, device events, malformed)."),
    "duplicates": ("edge_duplicates", "Uplinks dropped because their uplink id was already stored."),
    "decoded": ("edge_decoded", "Uplinks decoded by a decoder on the gateway."),
    "chirpstack": ("edge_chirpstack_decoded", "Uplinks whose readings came from ChirpStack's own codec."),
    "undecoded": ("edge_undecoded", "Uplinks stored raw: no decoder and no ChirpStack object."),
    "decode_failed": ("edge_decode_errors", "Uplinks whose decoder failed (stored raw for `edge redecode`)."),
    "malformed": ("edge_malformed", "Messages that could not be parsed (stored for inspection)."),
    "events": ("edge_device_events", "Device events (join, status, log, ack, txack, location) stored."),
    "dropped": ("edge_dropped", "Undelivered uplinks dropped because the buffer was full."),
    "redecoded": ("edge_redecoded", "Uplinks stored again by `edge redecode`."),
}


_PROFILE_JS = re.compile(r"profile-js/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def decoder_label(decoder: str, known: frozenset[str]) -> str:
    """A stored decoder name as a Prometheus label value: known ids as they are, anything else "unknown".

    The name may come from a device's ChirpStack tag, i.e. from outside: taken as it is, every new
    tag would be a new time series (and a tag holding a newline or quote a broken exposition line).
    A device profile's own codec is one value for all profiles, `profile-js`.
    """
    if decoder in known or decoder in ("", "chirpstack"):
        return decoder or "none"
    if _PROFILE_JS.fullmatch(decoder):
        return "profile-js"
    return "unknown"


class EdgeCollector:
    """Reads the gateway's state at scrape time, so nothing is counted twice or kept in memory."""

    def __init__(self, state: StateReader) -> None:
        self.state = state
        self._known: tuple[float, frozenset[str]] | None = None

    def collect(self) -> Iterator[Metric]:
        """One metric family per quantity; upstream metrics are labelled `upstream`."""
        snap = self.state.snapshot()
        cfg = self.state.pipeline.cfg
        info = GaugeMetricFamily("edge_info", "This gateway (value is always 1).", labels=["edge_id"])
        info.add_metric([cfg.edge_id], 1)
        yield info
        yield GaugeMetricFamily("edge_healthy", "1 when /health reports 200, else 0.", value=int(snap.healthy))
        yield GaugeMetricFamily("edge_source_connected", "1 while subscribed at ChirpStack's MQTT broker.",
                                value=int(snap.source_connected))
        yield CounterMetricFamily("edge_source_reconnects", "Connections to ChirpStack's broker lost since start.",
                                  value=snap.source_reconnects)
        yield CounterMetricFamily("edge_commits", "Batches committed to the buffer since start.", value=snap.commits)
        yield GaugeMetricFamily("edge_buffer_readable", "1 when the buffer could be read for this scrape.",
                                value=int(not snap.buffer_error))
        # Without the buffer there is nothing true to say about what it holds: leave those out
        # rather than report zeros that look like an empty buffer.
        if snap.buffer_error:
            return
        for name, (metric, doc) in _COUNTER_HELP.items():
            yield CounterMetricFamily(metric, doc, value=snap.counters.get(name, 0))
        yield GaugeMetricFamily("edge_buffer_bytes", "Bytes of the buffer database in use.", value=snap.used_bytes)
        yield GaugeMetricFamily("edge_buffer_max_bytes", "The buffer's size bound (buffer.max_size_mb).",
                                value=int(cfg.buffer.max_size_mb * 1024 * 1024))
        yield GaugeMetricFamily("edge_buffer_uplinks", "Uplinks held in the buffer.", value=snap.uplinks)
        # A gauge, not a counter: rows leave the buffer when it trims or `edge redecode` succeeds.
        failed = GaugeMetricFamily("edge_buffer_decode_errors",
                                   "Uplinks in the buffer whose decoder failed, by decoder.", labels=["decoder"])
        by_label: dict[str, int] = {}
        known = self._known_decoders()
        for decoder, n in snap.decode_errors.items():
            label = decoder_label(decoder, known)
            by_label[label] = by_label.get(label, 0) + n
        for label, n in sorted(by_label.items()):
            failed.add_metric([label], n)
        yield failed
        unmapped = CounterMetricFamily("edge_unmapped_fields",
                                       "Decoded fields no field map covered (sent without a unit), by codec key"
                                       f" (the {UNMAPPED_SHOWN} largest; the rest as 'other').", labels=["codec"])
        for codec, n in unmapped_by_codec(snap.counters).items():
            unmapped.add_metric([codec], n)
        yield unmapped
        yield from self._upstreams(snap)
        if snap.health_counts:
            # Counts per state and problem kind: a bounded number of series whatever the fleet's size.
            states = GaugeMetricFamily("edge_devices", "Devices by health state (docs/health.md).", labels=["state"])
            problems = GaugeMetricFamily("edge_device_problems", "Devices with a health problem, by kind.",
                                         labels=["problem"])
            for key, n in sorted(snap.health_counts.items()):
                kind, _, name = key.partition(":")
                (states if kind == "state" else problems).add_metric([name], n)
            yield states
            yield problems

    def _known_decoders(self) -> frozenset[str]:
        """The decoder ids this gateway has: the only values the `decoder` label may take besides two fixed ones."""
        registry = getattr(self.state.pipeline, "registry", None)
        now = time.monotonic()
        if self._known is None or now - self._known[0] > DECODE_ERRORS_TTL_S:
            ids = frozenset(registry.ids()) if registry is not None and hasattr(registry, "ids") else frozenset()
            self._known = (now, ids)
        return self._known[1]

    def _upstreams(self, snap: Snapshot) -> Iterator[Metric]:
        families: list[tuple[str, GaugeMetricFamily | CounterMetricFamily]] = [
            ("backlog", GaugeMetricFamily("edge_upstream_backlog_uplinks",
                                          "Buffered uplinks not yet delivered to the upstream.", labels=["upstream"])),
            ("oldest_undelivered_age_s", GaugeMetricFamily(
                "edge_upstream_backlog_age_seconds",
                "Age of the oldest uplink not yet delivered to the upstream (0 when none).", labels=["upstream"])),
            ("stuck", GaugeMetricFamily("edge_upstream_stuck", "1 when the backlog is older than web.stuck_after_s.",
                                        labels=["upstream"])),
            ("connected", GaugeMetricFamily("edge_upstream_connected", "1 while the upstream is reachable.",
                                            labels=["upstream"])),
            ("last_delivery", GaugeMetricFamily("edge_upstream_last_delivery_timestamp_seconds",
                                                "When the upstream last acknowledged a delivery (POSIX time).",
                                                labels=["upstream"])),
            ("delivered", CounterMetricFamily("edge_upstream_delivered", "Uplinks delivered to the upstream.",
                                              labels=["upstream"])),
            ("dropped", CounterMetricFamily("edge_upstream_dropped",
                                            "Uplinks dropped before the upstream got them (buffer full).",
                                            labels=["upstream"])),
            ("published", CounterMetricFamily("edge_upstream_published",
                                              "Messages published (MQTT) or requests sent (HTTP) since start.",
                                              labels=["upstream"])),
            ("acknowledged", CounterMetricFamily("edge_upstream_acknowledged",
                                                 "Messages the upstream acknowledged since start.",
                                                 labels=["upstream"])),
            ("rejected", CounterMetricFamily("edge_upstream_rejected",
                                             "Messages the upstream refused for good since start.",
                                             labels=["upstream"])),
            ("reconnects", CounterMetricFamily("edge_upstream_reconnects",
                                               "Connections lost (MQTT) or failed requests (HTTP) since start.",
                                               labels=["upstream"])),
        ]
        for up in snap.sinks:
            for key, family in families:
                value = getattr(up, key)
                if key == "last_delivery" and value is None:
                    continue  # never delivered: no timestamp rather than 1970
                family.add_metric([up.name], float(value or 0))
        for _, family in families:
            yield family
