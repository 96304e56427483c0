"""`edge redecode`: stored raw uplinks decoded again with today's decoders and queued for every upstream."""

from __future__ import annotations

import logging

from edge import quarantine
from edge.buffer import Batch, Buffer, NewUplink
from edge.buffer.policy import STATUS_COUNTER
from edge.config import Config
from edge.decoders import build_registry
from edge.decoding.registry import NO_HINTS, DecoderRegistry
from edge.device_cache import DeviceCache
from edge.model import DecodeStatus, Uplink
from edge.sources.chirpstack_events import parse

log = logging.getLogger(__name__)


def redecode(cfg: Config, *, dev_eui: str | None = None, decoder: str | None = None, since: float | None = None,
             until: float | None = None, everything: bool = False, dry_run: bool = False,
             registry: DecoderRegistry | None = None) -> dict[str, int]:
    """Re-run the current decoders over stored raw uplinks and queue the new readings upstream.

    By default only uplinks that failed to decode or had no decoder are taken; `everything` takes
    all matching ones. Each re-decoded uplink is stored as a new row (so every upstream's cursor
    reaches it and sends it, under the same uplink id) and the old row is marked superseded in the
    same transaction. Safe while `edge run` is running: SQLite serialises the writers. Quarantined
    uplinks (a decoder hung on them) that now decode leave the quarantine file.
    """
    registry = registry or build_registry(cfg)
    held_path = quarantine.path_for(cfg.buffer.path)
    held = quarantine.load(held_path) if held_path.exists() else {}
    buffer = Buffer(cfg.buffer.path, max_bytes=int(cfg.buffer.max_size_mb * 1024 * 1024))
    # The device registry cache (tags, variables, profile tags and codec) decides the decoder as in
    # `edge run`; read from the buffer file, so it works with ChirpStack's API down.
    devices = DeviceCache(cfg.chirpstack, cfg.buffer.path) if cfg.chirpstack.api_url else None
    totals = {name: 0 for name in ("seen", *STATUS_COUNTER.values())}
    statuses = None if everything else (DecodeStatus.FAILED, DecodeStatus.UNDECODED)
    try:
        for rows in buffer.raw_uplinks(dev_eui=dev_eui, decoder=decoder, since=since, until=until,
                                       statuses=statuses, upto=buffer.last_id()):
            batch = Batch()
            for row_id, topic, payload, received in rows:
                event = parse(topic, payload, received, cfg.chirpstack.max_payload_bytes)
                if not isinstance(event, Uplink):
                    continue
                hints = devices.hints(event.device.dev_eui) if devices is not None else NO_HINTS
                if event.uplink_id in held:
                    log.warning("Decoding uplink %s of device %s, which decoder %s hung on before; if this does not"
                                " return, that decoder is not fixed yet (Ctrl-C stops).", event.uplink_id,
                                event.device.dev_eui, held[event.uplink_id].decoder)
                decoded = registry.decode(event, hints)
                totals["seen"] += 1
                totals[STATUS_COUNTER[decoded.status]] += 1
                if decoded.status in (DecodeStatus.FAILED, DecodeStatus.UNDECODED) and not everything:
                    continue  # nothing new to send; keep the row as it is
                batch.uplinks.append(NewUplink(event, topic, payload, received, decoded.status, decoded.decoder,
                                               decoded.error, decoded.readings))
                batch.supersedes.append(row_id)
            batch.count("redecoded", len(batch.uplinks))
            if batch.uplinks and not dry_run:
                buffer.append(batch)
                fixed = [u.uplink.uplink_id for u in batch.uplinks
                         if u.uplink.uplink_id in held and u.status in (DecodeStatus.DECODED, DecodeStatus.CHIRPSTACK)]
                if fixed:
                    quarantine.remove(held_path, fixed)
    finally:
        buffer.close()
    return totals
