"""Writes a new decoder plugin package (`edge decoders new`): pyproject, decoder, examples, test."""

from __future__ import annotations

from pathlib import Path

# setuptools 61 is the first with [project] metadata; a low floor lets `pip install
# --no-build-isolation` work on an offline gateway or CI runner.
PYPROJECT = '''[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "edge-decoder-{vendor}"
version = "0.1.0"
description = "lorawan-edge decoder for {vendor} {model}"
requires-python = ">=3.11"
dependencies = ["lorawan-edge"]

[project.optional-dependencies]
test = ["pytest"]

# lorawan-edge finds the decoders of this package through this entry point.
[project.entry-points."edge.decoders"]
{vendor_py} = "{package}"

# ...and the field maps (what each field of `data` means) in {package}/maps/.
[project.entry-points."edge.field_maps"]
{vendor_py} = "{package}"

[tool.setuptools]
packages = ["{package}"]

[tool.setuptools.package-data]
"{package}" = ["maps/*/*.yaml"]
'''

INIT = '''"""lorawan-edge decoders for {vendor} devices."""

from edge import Decoder, hookimpl

from {package}.{model_py} import {cls}


@hookimpl
def edge_decoders() -> list[Decoder]:
    """The decoders this package provides."""
    return [{cls}()]
'''

DECODER = '''"""Decoder for the {vendor} {model}: <say which vendor document the payload layout comes from>."""

from __future__ import annotations

from typing import Any

from edge import DecodeResult, DeviceContext


class {cls}:
    """{vendor} {model}: fPort 1, byte 0-1 temperature (signed, 0.1 °C), byte 2 humidity (%RH).

    What each field of `data` means (vocabulary name, unit) is in the field map
    {package}/maps/{vendor}/{model}.yaml (lorawan-edge's docs/field-maps.md), not here.
    """

    id = "{decoder_id}"
    # TTN Device Repository codec ids this decoder reproduces, e.g. ("{vendor}/{model}-codec",).
    ttn_codecs: tuple[str, ...] = ()

    def decode(self, payload: bytes, fport: int, context: DeviceContext) -> DecodeResult:
        """Decode one uplink; report bad input in `errors`, never raise."""
        if fport != 1:
            return DecodeResult(None, errors=["unknown FPort"])
        if len(payload) != 3:
            return DecodeResult(None, errors=[f"expected 3 bytes, got {{len(payload)}}"])
        data: dict[str, Any] = {{
            "temperature": int.from_bytes(payload[0:2], "big", signed=True) / 10,
            "humidity": payload[2],
        }}
        return DecodeResult(data)
'''

EXAMPLES = '''# Uplink examples in the TTN Device Repository codec form; `pytest` runs them all
# (and `edge decoders test --native examples/` from the command line: the file's path,
# examples/<vendor>/<model>.yaml, names the decoder that runs it).
uplinkDecoder:
  examples:
    - description: Temperature 22.6 °C, humidity 41 %RH
      input:
        fPort: 1
        bytes: [0x00, 0xE2, 0x29]
      output:
        data:
          temperature: 22.6
          humidity: 41
    - description: Below zero
      input:
        fPort: 1
        bytes: [0xFF, 0x9C, 0x50]
      output:
        data:
          temperature: -10.0
          humidity: 80
    - description: Unknown FPort
      input:
        fPort: 2
        bytes: [0x00]
      output:
        errors:
          - unknown FPort
'''

MAP = """# {vendor} {model}: <name the vendor document each unit comes from>.
# Field maps: lorawan-edge's docs/field-maps.md; names: its docs/vocabulary.md.
codecs:
  - native:{decoder_id}
fields:
  temperature: {{n: temperature, u: Cel}}
  humidity: {{n: humidity, u: "%"}}
"""

TEST = '''"""Runs every examples/<vendor>/<model>.yaml through the decoder with that id (edge.testing)."""

from pathlib import Path

import pytest

from edge.testing import assert_examples, assert_map
from {package} import edge_decoders

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*/*.yaml"))
DECODERS = {{decoder.id: decoder for decoder in edge_decoders()}}


def test_every_decoder_has_examples():
    ids = {{f"{{path.parent.name}}/{{path.stem}}" for path in EXAMPLES}}
    assert sorted(DECODERS) == sorted(ids)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: f"{{p.parent.name}}/{{p.stem}}")
def test_examples(path):
    decoder = DECODERS[f"{{path.parent.name}}/{{path.stem}}"]
    assert_examples(decoder, path)
    assert_map(decoder, path)  # every numeric field of the examples mapped, units right
'''

README = '''# edge-decoder-{vendor}

A lorawan-edge decoder plugin for the {vendor} {model}.

lorawan-edge is installed from its source checkout or a wheel, not by name from an index, so a fresh
virtualenv gets it first, then this package:

    python3 -m venv .venv && . .venv/bin/activate
    pip install {edge_source}
    pip install -e '.[test]'
    pytest                                  # runs examples/<vendor>/<model>.yaml through the decoder
    edge decoders list                      # shows {decoder_id} once installed
    edge decoders test --native examples/   # the same examples from the command line

See lorawan-edge's decoders/CONTRIBUTING.md for the contract.
'''


def edge_source() -> str:
    """What `pip install` takes to put this lorawan-edge in another virtualenv: its checkout, if it runs from one."""
    import edge

    checkout = Path(edge.__file__).resolve().parent.parent
    pyproject = checkout / "pyproject.toml"
    if pyproject.is_file() and 'name = "lorawan-edge"' in pyproject.read_text(encoding="utf-8"):
        return str(checkout)
    return "/path/to/lorawan-edge  # its source checkout, or the lorawan_edge-*.whl the gateway was installed from"


def scaffold(decoder_id: str, parent: Path) -> Path:
    """Create `edge-decoder-<vendor>/` under `parent`; refuses to overwrite an existing folder."""
    vendor, model = decoder_id.split("/")
    vendor_py, model_py = vendor.replace("-", "_"), model.replace("-", "_")
    package = f"edge_decoder_{vendor_py}"
    cls = "".join(part.capitalize() for part in model.split("-")) + "Decoder"
    if cls[0].isdigit():
        cls = "D" + cls
    values = {"vendor": vendor, "model": model, "vendor_py": vendor_py, "model_py": model_py,
              "package": package, "cls": cls, "decoder_id": decoder_id, "edge_source": edge_source()}
    root = parent / f"edge-decoder-{vendor}"
    if root.exists():
        raise FileExistsError(f"{root} already exists")
    files = {
        "pyproject.toml": PYPROJECT,
        "README.md": README,
        f"{package}/__init__.py": INIT,
        f"{package}/{model_py}.py": DECODER,
        f"{package}/maps/{vendor}/{model}.yaml": MAP,
        f"examples/{vendor}/{model}.yaml": EXAMPLES,
        "tests/test_examples.py": TEST,
    }
    for rel, template in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(template.format(**values), encoding="utf-8")
    return root
