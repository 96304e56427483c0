"""A corpus of codec examples (TTN fixtures, whole catalogues): how many readings leave standardised."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.decoding.coverage import Coverage, check, codec_key, codec_paths, load_codec_examples
from edge.decoding.fieldmap import EMPTY, MapIndex, default_index
from edge.errors import ConfigError


def fixture_outputs(folder: Path) -> Iterator[tuple[str, str, Mapping[str, Any] | None]]:
    """(codec key, where, data) of the TTN fixture lines (`<vendor>__<device>.jsonl`, expected outputs)."""
    for path in sorted(folder.glob("*.jsonl")):
        for n, text in enumerate(path.read_text(encoding="utf-8").splitlines()):
            line = json.loads(text)
            yield f"ttn:{line['vendor']}/{line['codec_id']}", f"{path.name}:{n + 1}", line["expected"].get("data")


def catalogue_outputs(paths: Sequence[Path]) -> Iterator[tuple[str, str, Mapping[str, Any] | None]]:
    """(codec key, where, data) of every uplink example's expected output under codec files or folders.

    The expected outputs are the codecs' own (the TTN validator and the device-profiles tests check
    them), so no codec needs to run: a whole catalogue takes seconds.
    """
    for path in codec_paths(paths):
        try:
            examples = load_codec_examples(path)
        except ConfigError:
            continue
        for example in examples:
            yield codec_key(path), f"{path}#{example.number}", example.expected


@dataclass(slots=True)
class CorpusFigures:
    """Coverage over a corpus: in total, over the codecs that have a map, and per codec key."""

    total: Coverage = field(default_factory=Coverage)
    mapped: Coverage = field(default_factory=Coverage)
    per_codec: dict[str, Coverage] = field(default_factory=dict)
    examples: int = 0

    @property
    def codecs_with_map(self) -> int:
        """Codecs (keys) of the corpus that have a field map."""
        return sum(1 for key in self.per_codec if key in self._mapped_keys)

    _mapped_keys: set[str] = field(default_factory=set)


def measure(items: Iterable[tuple[str, str, Mapping[str, Any] | None]], index: MapIndex | None = None
            ) -> CorpusFigures:
    """Normalise every example's data with its codec's map (none: unit-less) and count the readings."""
    index = index or default_index()
    figures = CorpusFigures()
    for key, where, data in items:
        fmap = index.get(key)
        cov = figures.per_codec.setdefault(key, Coverage())
        one = check(data, fmap or EMPTY, where)
        cov.add(one)
        figures.total.add(one)
        if fmap is not None:
            figures.mapped.add(one)
            figures._mapped_keys.add(key)
        figures.examples += 1
    return figures


def bench_lines(figures: CorpusFigures) -> list[str]:
    """The `name: value` lines of bench/standardised.py."""
    total, mapped = figures.total, figures.mapped
    return [
        f"standardised_readings_share: {total.standardised_share:.3f}",
        f"standardised_readings_share_mapped_codecs: {mapped.standardised_share:.3f}",
        f"wrong_units: {total.wrong_units}",
        f"no_value_markers: {total.sentinels}",
        f"numeric_readings: {total.readings}",
        f"standardised_readings: {total.standardised}",
        f"unmapped_numeric_fields: {total.numeric - total.covered}",
        f"codec_examples: {figures.examples}",
        f"codecs: {len(figures.per_codec)}",
        f"codecs_with_map: {figures.codecs_with_map}",
    ]
