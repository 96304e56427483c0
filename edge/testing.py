"""A pytest plugin for decoder authors: run a decoder's codec-YAML examples as tests.

Installed with lorawan-edge (entry point `pytest11`), so in a plugin repository:

    from edge.testing import assert_examples
    from edge_decoder_acme.decoder import AcmeDecoder

    def test_examples():
        assert_examples(AcmeDecoder(), "examples/acme-th.yaml")

or use the `decoder_examples` fixture to get the failures as data. `assert_examples` also checks
the decoder's field map (its YAML map `native:<id>`, or its legacy `fields`) with the examples'
outputs, as `edge decoders test` does: names in the vocabulary, units registered and convertible,
values in the quantity's range. `assert_map` adds that every numeric field is mapped, a state or
ignored (docs/field-maps.md).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from edge.decoding.base import Decoder
from edge.decoding.coverage import Coverage, check
from edge.decoding.examples import Outcome, load_examples, run_examples
from edge.decoding.fieldmap import FieldMap, map_for
from edge.vocabulary import BY_NAME, EMITTED_UNITS


def check_examples(decoder: Decoder, path: str | Path) -> list[Outcome]:
    """Every example's outcome for `decoder` and the codec YAML at `path`."""
    return list(run_examples(decoder, load_examples(Path(path))))


def assert_examples(decoder: Decoder, path: str | Path) -> None:
    """Fail with a readable diff for every example whose output differs, or whose readings break the map rules."""
    outcomes = check_examples(decoder, path)
    if not outcomes:
        pytest.fail(f"{path} has no uplinkDecoder examples")
    failed = [o for o in outcomes if not o.passed]
    if failed:
        report = "\n\n".join(f"{o.example.name}\n{o.diff()}" for o in failed)
        pytest.fail(f"{len(failed)} of {len(outcomes)} examples failed:\n\n{report}", pytrace=False)
    problems = map_problems(decoder, outcomes, complete=False)
    if problems:
        pytest.fail("the decoder's field map breaks the rules of docs/field-maps.md:\n  " + "\n  ".join(problems),
                    pytrace=False)


def map_problems(decoder: Decoder, outcomes: list[Outcome], complete: bool = True) -> list[str]:
    """What is wrong with the decoder's map, checked with example outputs (empty when nothing is).

    Names must be in the vocabulary and units registered (a legacy `fields` table is checked the
    same way); converted values must lie in the quantity's range; with `complete`, every numeric
    field must be mapped, a state or ignored.
    """
    _, fmap = map_for(decoder)
    problems = _spec_problems(fmap)
    cov = Coverage()
    for outcome in outcomes:
        check(outcome.actual.get("data"), fmap, outcome.example.name, cov)
    problems.extend(p for p in dict.fromkeys(cov.problems) if complete or "is not mapped" not in p)
    return problems


def _spec_problems(fmap: FieldMap) -> list[str]:
    problems = []
    for spec in fmap.specs:
        if spec.ignore or spec.keep:
            continue
        quantity = BY_NAME.get(spec.name)
        if quantity is None:
            problems.append(f"{spec.pattern}: {spec.name!r} is not in the vocabulary (docs/vocabulary.md)")
        elif spec.unit is not None and spec.unit not in EMITTED_UNITS:
            problems.append(f"{spec.pattern}: unit {spec.unit!r} is not a registered or known unit")
        elif spec.quantity is not quantity:
            problems.append(f"{spec.pattern}: {spec.name} is in {quantity.unit!r}, the fields table says"
                            f" {spec.unit!r} (write a field map: docs/field-maps.md)")
    return problems


def assert_map(decoder: Decoder, path: str | Path) -> None:
    """Fail unless the decoder's map covers every numeric field of the examples, with right units and ranges."""
    outcomes = check_examples(decoder, path)
    problems = map_problems(decoder, outcomes)
    if problems:
        pytest.fail("field map problems:\n  " + "\n  ".join(problems), pytrace=False)


@pytest.fixture
def decoder_examples() -> Callable[[Decoder, str | Path], list[Outcome]]:
    """Runs a decoder over a codec YAML's examples and returns the outcomes."""
    return check_examples
