"""Finds decoders: built-ins first, then third-party plugins from the `edge.decoders` entry points.

Built-in decoders register through the same hook as plugins (datasette's DEFAULT_PLUGINS idea).
An allow/block list from the config filters distributions by name; a plugin that fails to import
or to answer the hook is reported and skipped, and the gateway still starts. Set
EDGE_TRACE_PLUGINS=1 to log every hook call.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import cast

import pluggy

from edge import hookspecs
from edge.decoding.base import Decoder

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "edge.decoders"
BUILTIN = "builtin"


@dataclass(frozen=True)
class DecoderInfo:
    """A decoder with where it came from."""

    decoder: Decoder
    source: str  # "builtin" or the distribution name
    version: str


@dataclass
class Loaded:
    """The outcome of plugin discovery."""

    decoders: list[DecoderInfo] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    not_allowed: list[str] = field(default_factory=list)  # "<dist> <version>" kept out by allow/block

    def by_id(self) -> dict[str, Decoder]:
        """Every id and alias → decoder; the first registration of an id wins."""
        out: dict[str, Decoder] = {}
        for info in self.decoders:
            for name in (info.decoder.id, *getattr(info.decoder, "aliases", ())):
                out.setdefault(name, info.decoder)
        return out


def _version() -> str:
    try:
        return metadata.version("lorawan-edge")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def load_decoders(allow: Sequence[str] = (), block: Sequence[str] = (), *, entry_points: bool = True) -> Loaded:
    """Discover every decoder.

    Args:
        allow: if not empty, only these distributions' plugins load (built-ins always do).
        block: distributions whose plugins never load.
        entry_points: False skips third-party discovery (tests of the built-ins).
    """
    from edge.decoding import builtin

    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    if os.environ.get("EDGE_TRACE_PLUGINS"):
        pm.trace.root.setwriter(lambda text: log.info("plugin trace: %s", text.rstrip()))
        pm.enable_tracing()
    loaded = Loaded()
    sources: dict[str, tuple[str, str]] = {}
    pm.register(builtin, name=BUILTIN)
    sources[BUILTIN] = (BUILTIN, _version())
    if entry_points:
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = ep.dist.name if ep.dist is not None else ep.name
            version = ep.dist.version if ep.dist is not None else "?"
            if dist in block or (allow and dist not in allow):
                log.info("Decoder plugin %s (%s) is not allowed by the config; skipped.", ep.name, dist)
                loaded.not_allowed.append(f"{dist} {version}")
                continue
            try:
                plugin = ep.load()
                pm.register(plugin, name=f"{dist}:{ep.name}")
            except Exception as exc:  # noqa: BLE001 - a broken plugin must never stop the gateway
                msg = f"decoder plugin {ep.name} ({dist} {version}) failed to load: {type(exc).__name__}: {exc}"
                loaded.problems.append(msg)
                log.error("%s; skipped.", msg)
                continue
            sources[f"{dist}:{ep.name}"] = (dist, version)
    impls = pm.hook.edge_decoders.get_hookimpls()
    for impl in impls:
        source, version = sources.get(impl.plugin_name, (impl.plugin_name, "?"))
        # Each plugin is asked on its own, through pluggy (so EDGE_TRACE_PLUGINS traces the call): one
        # that raises is reported and skipped while the others still answer.
        ask = pm.subset_hook_caller("edge_decoders", [other.plugin for other in impls if other is not impl])
        try:
            answers = ask()
            # pluggy drops a None answer; list(None) then fails here as the plugin's own call would.
            decoders = list(cast(Iterable[object], answers[0] if answers else None))
        except Exception as exc:  # noqa: BLE001 - as above: report, skip, keep going
            msg = f"decoder plugin {impl.plugin_name} failed in edge_decoders(): {type(exc).__name__}: {exc}"
            loaded.problems.append(msg)
            log.error("%s; skipped.", msg)
            continue
        for decoder in decoders:
            if not isinstance(decoder, Decoder):
                loaded.problems.append(f"{impl.plugin_name} returned {decoder!r}, which is not a Decoder")
                continue
            loaded.decoders.append(DecoderInfo(decoder, source, version))
    # Built-ins first, so a plugin cannot silently replace a built-in id; pluggy calls LIFO.
    loaded.decoders.sort(key=lambda info: info.source != BUILTIN)
    return loaded
