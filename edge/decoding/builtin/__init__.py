"""Decoders shipped with lorawan-edge, written from the vendors' payload documentation."""

from __future__ import annotations

import importlib

from edge.decoding.base import Decoder
from edge.hookspecs import hookimpl

# One module per vendor; each exposes DECODERS, a tuple of decoder instances.
MODULES: tuple[str, ...] = (
    "elsys",
    "milesight",
    "decentlab",
    "dragino",
    "netvox",
    "browan",
    "talkpool",
    "elvaco",
    "adeunis",
    "cayenne",
    "sensative",
    "axioma",
)


@hookimpl
def edge_decoders() -> list[Decoder]:
    """The built-in decoders, registered through the same hook third-party plugins use."""
    return builtin_decoders()


def builtin_decoders() -> list[Decoder]:
    """Every decoder this package ships, in a stable order."""
    found: list[Decoder] = []
    for name in MODULES:
        module = importlib.import_module(f"{__name__}.{name}")
        found.extend(module.DECODERS)
    return found
