"""The formatter of each upstream: stored entries grouped by topic or device and packed into its messages; no I/O."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from edge.config import HttpUpstreamConfig, UpstreamConfig
from edge.formats import senml
from edge.formats.share import ShareFilter
from edge.model import Entry, Formatter, OutMessage

# Every topic placeholder's value from (dev_eui, application_id, gateway_id, edge_id), validated:
# the pipeline injects edge.sinks.topic.fields, so a hostile id cannot pick or break the topic.
TopicFields = Callable[[str, str, str | None, str], Mapping[str, str]]


def _chunks(entries: list[Entry], max_bytes: int, link: bool) -> list[list[Entry]]:
    """Split one topic's entries into runs whose SenML pack stays under max_bytes."""
    out: list[list[Entry]] = []
    current: list[Entry] = []
    size = 2
    for e in entries:
        est = senml.section_size(e, link)
        if current and size + est > max_bytes:
            out.append(current)
            current, size = [], 2
        current.append(e)
        size += est
    if current:
        out.append(current)
    return out


def _split_readings(entry: Entry, max_bytes: int) -> list[Entry]:
    """An uplink too large for one pack, as parts that each repeat its id record (rare)."""
    readings = entry.readings
    if senml.section_size(entry, False) <= max_bytes or len(readings) < 2:
        return [entry]
    half = len(readings) // 2
    # Each part keeps the stored radio records as they are (never parsed and written again).
    return [part for chunk in (readings[:half], readings[half:])
            for part in _split_readings(Entry(entry.id, entry.uplink_id, entry.dev_eui, entry.application_id,
                                              entry.gateway_id, entry.time, chunk, radio_blob=entry.radio_json),
                                        max_bytes)]


def make_formatter(up: UpstreamConfig, edge_id: str, topic_fields: TopicFields) -> Formatter:
    """The formatter of an MQTT upstream: groups entries by topic and packs them (senml.py).

    Consecutive uplinks of one device share a pack while a backlog drains; a pack stays under
    `max_message_bytes` (a single uplink larger than that is split by readings).

    Args:
        up: the upstream; its `topic` and `link_topic` templates may name placeholders (docs/records.md).
        edge_id: this gateway's id, the `{edge_id}` placeholder.
        topic_fields: the validated placeholder values of an entry (edge.sinks.topic.fields).
    """
    content_type = senml.CONTENT_TYPES[up.format]
    limit = up.max_message_bytes

    def grouped(entries: Sequence[Entry], template: str) -> dict[str, list[Entry]]:
        groups: dict[str, list[Entry]] = {}
        fixed = "{" not in template
        for e in entries:
            topic = template if fixed else template.format(
                **topic_fields(e.dev_eui, e.application_id, e.gateway_id, edge_id))
            groups.setdefault(topic, []).append(e)
        return groups

    def format_entries(entries: Sequence[Entry]) -> list[OutMessage]:
        out: list[OutMessage] = []
        with_readings = [part for e in entries if e.has_readings for part in _split_readings(e, limit)]
        for topic, group in grouped(with_readings, up.topic).items():
            # One uplink per message costs a message (and a PUBACK) per uplink; a packed backlog costs
            # one per max_message_bytes of a device's uplinks (docs/records.md).
            chunks = [[e] for e in group] if up.one_uplink_per_message else _chunks(group, limit, link=False)
            for chunk in chunks:
                out.append(OutMessage(topic, senml.pack(chunk, up.format), content_type))
        if up.link_topic:
            for topic, group in grouped(entries, up.link_topic).items():
                for chunk in _chunks(group, limit, link=True):
                    out.append(OutMessage(topic, senml.pack(chunk, up.format, link=True), content_type))
        return out

    return format_entries


def make_http_formatter(up: HttpUpstreamConfig) -> Formatter:
    """NGSI-LD upsert bodies, or one SenML pack per device, for an HTTP upstream."""
    if up.format == "ngsi-ld":
        from edge.formats import ngsi_ld, ngsi_ld_attributes

        n = up.ngsi_ld
        options = ngsi_ld.NgsiLdOptions(
            entity_type=n.entity_type or None, climate_type=n.climate_type, device_entity=n.device_entity,
            batch_size=n.batch_size, locations={dev: (lat, lon) for dev, lat, lon in n.locations},
            device_types=dict(n.device_types), attributes=ngsi_ld_attributes.attribute_table(n.attributes))
        return ngsi_ld.make_ngsi_ld_formatter(options)
    content_type = senml.CONTENT_TYPES[up.format]

    def format_entries(entries: Sequence[Entry]) -> list[OutMessage]:
        if up.one_uplink_per_message:
            return [OutMessage("", senml.pack([e], up.format), content_type) for e in entries if e.has_readings]
        by_device: dict[str, list[Entry]] = {}
        for e in entries:
            if e.has_readings:
                by_device.setdefault(e.dev_eui, []).append(e)
        return [OutMessage("", senml.pack(group, up.format), content_type) for group in by_device.values()]

    return format_entries


def shared(formatter: Formatter, share: Callable[[], ShareFilter]) -> Formatter:
    """The formatter behind an upstream's sharing rules (the formatter itself when they let everything through).

    Args:
        formatter: the upstream's formatter.
        share: the filter in force; the pipeline replaces it by one reading the sink's own buffer
            connection once the sink has opened it (its rules stay the same).
    """
    if not share().active:
        return formatter
    return lambda entries: formatter(share().apply(entries))
