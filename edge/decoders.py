"""Builds the decoder registry from config: plugins, JS codecs, the codec catalogue index beside the buffer."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from edge.buffer.codec_index import open_existing
from edge.config import Config
from edge.decoding.base import Decoder
from edge.decoding.catalogue import CatalogueIndex, index_path
from edge.decoding.fieldmap import default_index
from edge.decoding.registry import CoolDown, DecoderRegistry, Rule
from edge.errors import EdgeError
from edge.plugins import load_decoders

log = logging.getLogger(__name__)


def build_registry(cfg: Config, decoders: Sequence[Decoder] | None = None) -> DecoderRegistry:
    """The decoder registry the config asks for: built-ins, allowed plugins, rules."""
    if decoders is None:
        loaded = load_decoders(cfg.decoding.plugins_allow, cfg.decoding.plugins_block)
        decoders = [info.decoder for info in loaded.decoders]
        decoders += js_codecs(cfg, decoders)
    return DecoderRegistry(
        decoders,
        rules=[Rule(r.decoder, frozenset(r.dev_eui), frozenset(r.device_profile), frozenset(r.application))
               for r in cfg.decoding.rules],
        use_object=cfg.decoding.use_chirpstack_object,
        tag=cfg.decoding.tag,
        js_time_limit_s=cfg.decoding.js_time_limit_ms / 1000,
        js_memory_limit=cfg.decoding.js_memory_limit_mb << 20,
        catalogue=open_catalogue(cfg.buffer.path),  # what `edge codecs import` read, if anything
        cooldown=CoolDown(slow_s=cfg.decoding.js_time_limit_ms / 1000, after=cfg.decoding.cooldown_timeouts,
                          window_s=cfg.decoding.cooldown_window_s, rest_s=cfg.decoding.cooldown_s),
        object_maps=cfg.decoding.object_maps,
        maps=default_index(Path(p) for p in cfg.decoding.map_paths) if cfg.decoding.map_paths else None,
    )


def open_catalogue(buffer_path: str | Path) -> CatalogueIndex | None:
    """The codec index next to this buffer, read-only, or None if nothing was imported (or it cannot be opened)."""
    store = open_existing(index_path(buffer_path))
    return CatalogueIndex(store) if store is not None else None


def js_codecs(cfg: Config, natives: Sequence[Decoder]) -> list[Decoder]:
    """The TTN codec YAMLs named in `decoding.codec_paths`, each run by its own JavaScript codec.

    Each is normalised by the field map of its codec id (`ttn:<vendor>/<stem>`); a native decoder's
    map that lists the same TTN codec serves it too, since both return the same `data`. Without a
    map the codec's keys pass through unit-less and are counted as unmapped.
    """
    if not cfg.decoding.codec_paths:
        return []
    from edge.decoding.examples import codec_files
    from edge.decoding.js.codec import JsCodecDecoder
    from edge.decoding.js.runtime import JsLimits

    limits = JsLimits(time_limit=cfg.decoding.js_time_limit_ms / 1000,
                      memory_limit=cfg.decoding.js_memory_limit_mb << 20)
    found: list[Decoder] = []
    for path in codec_files(Path(p) for p in cfg.decoding.codec_paths):
        try:
            found.append(JsCodecDecoder.from_yaml(path, limits=limits))
        except EdgeError as exc:
            log.error("JS codec %s cannot be used: %s", path, exc)
    return found
