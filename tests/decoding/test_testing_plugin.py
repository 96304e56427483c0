"""edge.testing for plugin authors: examples, and the decoder's map checked the way `edge decoders test` does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edge.decoding.base import DecodeResult, DeviceContext, Field
from edge.testing import assert_examples, assert_map, check_examples, map_problems

EXAMPLES = """uplinkDecoder:
  examples:
    - description: one
      input: {fPort: 1, bytes: [1]}
      output:
        data: {temperature: 22.5, rssi: -80}
"""


class Acme:
    id = "acme/th"

    def __init__(self, fields: dict[str, Any]) -> None:
        self.fields = fields

    def decode(self, payload: bytes, fport: int, context: DeviceContext) -> DecodeResult:
        return DecodeResult({"temperature": 22.5, "rssi": -80})


@pytest.fixture
def examples(tmp_path: Path) -> Path:
    path = tmp_path / "acme" / "th.yaml"
    path.parent.mkdir()
    path.write_text(EXAMPLES)
    return path


def test_assert_examples_passes_a_right_legacy_table_and_leaves_coverage_to_assert_map(examples: Path) -> None:
    decoder = Acme({"temperature": Field("temperature", "Cel")})
    assert_examples(decoder, examples)
    assert map_problems(decoder, check_examples(decoder, examples)) == [
        f"{examples.name}#1 (one): numeric field rssi is not mapped (map it, or mark it state or ignore)"]
    with pytest.raises(pytest.fail.Exception, match="rssi is not mapped"):
        assert_map(decoder, examples)


@pytest.mark.parametrize(("fields", "message"), [
    ({"temperature": Field("temperatur", "Cel")}, "not in the vocabulary"),
    ({"temperature": Field("temperature", "K")}, "the fields table says 'K'"),
    ({"temperature": Field("temperature", "Cel", scale=1000)}, "is outside"),
])
def test_assert_examples_flags_names_units_and_ranges(examples: Path, fields: dict[str, Any], message: str) -> None:
    with pytest.raises(pytest.fail.Exception, match=message):
        assert_examples(Acme(fields), examples)
