"""A pytest plugin for decoder authors: run a decoder's codec-YAML examples as tests.

Installed with lorawan-edge (entry point `pytest11`), so in a plugin repository:

    from edge.testing import assert_examples
    from edge_decoder_acme.decoder import AcmeDecoder

    def test_examples():
        assert_examples(AcmeDecoder(), "examples/acme-th.yaml")

or use the `decoder_examples` fixture to get the failures as data.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from edge.decoding.base import Decoder
from edge.decoding.examples import Outcome, load_examples, run_examples


def check_examples(decoder: Decoder, path: str | Path) -> list[Outcome]:
    """Every example's outcome for `decoder` and the codec YAML at `path`."""
    return list(run_examples(decoder, load_examples(Path(path))))


def assert_examples(decoder: Decoder, path: str | Path) -> None:
    """Fail with a readable diff for every example whose output differs."""
    outcomes = check_examples(decoder, path)
    if not outcomes:
        pytest.fail(f"{path} has no uplinkDecoder examples")
    failed = [o for o in outcomes if not o.passed]
    if failed:
        report = "\n\n".join(f"{o.example.name}\n{o.diff()}" for o in failed)
        pytest.fail(f"{len(failed)} of {len(outcomes)} examples failed:\n\n{report}", pytrace=False)


@pytest.fixture
def decoder_examples() -> Callable[[Decoder, str | Path], list[Outcome]]:
    """Runs a decoder over a codec YAML's examples and returns the outcomes."""
    return check_examples
