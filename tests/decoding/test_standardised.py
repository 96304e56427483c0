"""standardised_readings_share over the codec examples in reach (issue #13): the fixture corpus in CI."""

from __future__ import annotations

from pathlib import Path

from edge.decoding.corpus import bench_lines, fixture_outputs, measure

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ttn-codec-examples"


def test_standardised_readings_share_over_the_fixture_examples() -> None:
    items = list(fixture_outputs(FIXTURES))
    assert len(items) == 49
    figures = measure(items)
    lines = dict(line.split(": ") for line in bench_lines(figures))
    # Every fixture codec has a map; its numeric readings leave with a vocabulary name and unit,
    # and no converted value lands outside its quantity's range (the sign of a wrong unit).
    assert figures.codecs_with_map == len(figures.per_codec)
    assert figures.total.readings >= 100
    assert float(lines["standardised_readings_share"]) >= 0.9
    assert figures.total.wrong_units == 0
    assert figures.total.numeric == figures.total.covered, sorted(figures.total.unmapped)


def test_without_maps_nothing_is_guessed() -> None:
    from edge.decoding.fieldmap import MapIndex

    figures = measure(fixture_outputs(FIXTURES), MapIndex())
    # No map, no unit: the share drops to 0 but not one reading carries a guessed unit.
    assert figures.total.standardised == 0 and figures.total.wrong_units == 0
