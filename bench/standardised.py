"""Measures how many numeric readings leave standardised (vocabulary name and unit) over every codec example in reach.

    .venv/bin/python bench/standardised.py
    .venv/bin/python bench/standardised.py --ttn /work/catalogues/pqstefanknol+lorawan-devices \
        --chirpstack /work/catalogues/chirpstack+chirpstack-device-profiles

Always the TTN fixture examples (tests/fixtures/ttn-codec-examples); with a catalogue checkout
also every uplink example of its codecs (TTN `vendor/**.yaml`, ChirpStack `vendors/*/codecs/*.js`
with their `test_decode_<name>.json`), normalised from the examples' expected outputs with the
field maps in edge/decoding/maps/. Prints `name: value` lines; `--per-codec` adds one line per
codec with its share and unmapped fields, worst first. Not part of the test suite (the test
tests/decoding/test_standardised.py checks the fixture corpus).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge.decoding.corpus import bench_lines, catalogue_outputs, fixture_outputs, measure  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures" / "ttn-codec-examples"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ttn", type=Path, help="a checkout of the TTN device repository (its vendor/ folder is read)")
    parser.add_argument("--chirpstack", type=Path, help="a checkout of chirpstack-device-profiles (vendors/ is read)")
    parser.add_argument("--per-codec", action="store_true", help="one line per codec, worst share first")
    args = parser.parse_args()
    items = list(fixture_outputs(FIXTURES if FIXTURES.is_dir() else ROOT.parent / "shared" / "fixtures"
                                 / "ttn-codec-examples"))
    if args.ttn:
        items.extend(catalogue_outputs([args.ttn / "vendor"]))
    if args.chirpstack:
        items.extend(catalogue_outputs([args.chirpstack / "vendors"]))
    figures = measure(items)
    for line in bench_lines(figures):
        print(line)
    if args.per_codec:
        worst = sorted(figures.per_codec.items(), key=lambda kv: (kv[1].standardised_share, kv[0]))
        for key, cov in worst:
            if cov.readings:
                unmapped = ", ".join(sorted(cov.unmapped)[:6])
                print(f"  {key}: {cov.standardised}/{cov.readings} {cov.standardised_share:.2f}"
                      f"{'  wrong=' + str(cov.wrong_units) if cov.wrong_units else ''}  {unmapped}")


if __name__ == "__main__":
    main()
