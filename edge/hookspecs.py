"""The plugin contract (pluggy hookspecs): what a decoder plugin may provide.

A plugin is a module or object with functions marked `@edge.hookimpl`, registered through the
entry-point group `edge.decoders` (see decoders/CONTRIBUTING.md). Hook contract version: 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import pluggy

from edge.decoding.base import Decoder

PROJECT = "edge"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def edge_decoders() -> Sequence[Decoder]:  # type: ignore[empty-body]
    """Return the decoders this plugin provides.

    Each decoder has an `id` of the form `<vendor>/<model>` (lowercase, dashes), optional
    `aliases` (more ids it answers to), optional `ttn_codecs` (TTN Device Repository codec ids,
    `<vendor>/<codec-id>`, whose output it reproduces) and a `decode(payload, fport, context)`
    method. What the fields of its `data` mean is a field map (docs/field-maps.md) the plugin ships
    through the `edge.field_maps` entry point; a legacy `fields` mapping still works. Called once
    at startup.

    :return: a sequence of decoder objects (may be empty).
    """
