"""Checks a field map against its codec's example outputs: coverage, units, ranges, the readings a receiver gets."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.decoding.fieldmap import FieldMap, MapIndex, default_index
from edge.decoding.fieldpath import parse_path
from edge.decoding.normalize import leaves, normalise
from edge.errors import ConfigError
from edge.model import Reading, reading_record
from edge.vocabulary import BY_NAME

# The receive time examples are normalised at: offsets (`tu: offset-s`) then read as plain seconds.
EXAMPLE_RECV_TIME = 0.0


def _numeric(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(slots=True)
class Coverage:
    """What a map does with its codec's example outputs (one codec, or a sum over many)."""

    numeric: int = 0  # numeric leaves in the examples' data
    covered: int = 0  # ... of which mapped, marked state, or ignored
    readings: int = 0  # numeric readings sent (ignored leaves send none)
    standardised: int = 0  # ... with a vocabulary name and its unit (or a quantity that has none)
    wrong_units: int = 0  # readings whose converted value lies outside the quantity's physical range
    sentinels: int = 0  # ... because the codec returned its "no value" marker (not the map's fault)
    unmapped: dict[str, int] = field(default_factory=dict)  # path -> times seen
    problems: list[str] = field(default_factory=list)

    @property
    def share(self) -> float:
        """Numeric leaves covered, 0..1 (1 when there are none)."""
        return self.covered / self.numeric if self.numeric else 1.0

    @property
    def standardised_share(self) -> float:
        """Numeric readings leaving standardised, 0..1."""
        return self.standardised / self.readings if self.readings else 1.0

    @property
    def ok(self) -> bool:
        """True when every numeric leaf is covered and no problem was found."""
        return self.covered == self.numeric and not self.problems

    def add(self, other: Coverage) -> None:
        """Add another codec's figures to these."""
        self.numeric += other.numeric
        self.covered += other.covered
        self.readings += other.readings
        self.standardised += other.standardised
        self.wrong_units += other.wrong_units
        self.sentinels += other.sentinels
        for path, n in other.unmapped.items():
            self.unmapped[path] = self.unmapped.get(path, 0) + n
        self.problems.extend(other.problems)


def standard(reading: Reading) -> bool:
    """True when a numeric reading carries a vocabulary name and that quantity's unit."""
    quantity = BY_NAME.get(reading.name)
    return quantity is not None and reading.unit == quantity.unit


def check(data: Mapping[str, Any] | None, fmap: FieldMap, where: str = "", coverage: Coverage | None = None
          ) -> Coverage:
    """Normalise one example's `data` with a map and count what the map covers.

    Problems: a numeric leaf neither mapped, a state nor ignored; a data-declared unit that does
    not convert; a converted value outside the quantity's physical range (the sign of a wrong unit).
    """
    cov = coverage if coverage is not None else Coverage()
    if not data:
        return cov
    result = normalise(data, fmap, EXAMPLE_RECV_TIME)
    unmapped = set(result.unmapped)
    for leaf in leaves(data):
        if not _numeric(leaf.value):
            continue
        cov.numeric += 1
        if leaf.path in unmapped:
            cov.unmapped[leaf.path] = cov.unmapped.get(leaf.path, 0) + 1
            cov.problems.append(f"{where}: numeric field {leaf.path} is not mapped (map it, or mark it state or"
                                " ignore)")
        else:
            cov.covered += 1
    for path in result.unit_errors:
        cov.problems.append(f"{where}: {path}: the data's own unit does not convert to the map's quantity"
                            " (or the map gives no u and the data no unit)")
    raw = {leaf.path: leaf.value for leaf in leaves(data)}
    # Sent unit-less under their own key (a key may look like a vocabulary name: it is not one then).
    withheld = unmapped | set(result.unit_errors)
    outside = {path for path, _, _ in result.out_of_range}
    for path, name, value in result.out_of_range:
        bounds = BY_NAME[name]
        if is_sentinel(raw.get(path)):
            cov.sentinels += 1  # the codec's "no value" marker: the map is right, the sensor absent
            continue
        spec = fmap.lookup(_steps(path))
        if spec is not None and raw.get(path) in spec.not_readings:
            cov.sentinels += 1  # an example's filler value, named as such in the map
            continue
        cov.wrong_units += 1
        cov.problems.append(f"{where}: {path} -> {name} = {value:g} {bounds.unit or ''} is outside"
                            f" {bounds.low:g} … {bounds.high:g}: is the unit right?")
    for reading in result.readings:
        if not _numeric(reading.value):
            continue
        quantity = BY_NAME.get(reading.name)
        spec = fmap.lookup(_steps(reading.field)) if reading.field else None
        if spec is not None and spec.state:
            continue  # an enum state: not a measurement
        cov.readings += 1
        if quantity is None or reading.field in withheld or (spec is not None and spec.keep):
            continue
        if reading.unit != quantity.unit:
            cov.wrong_units += 1
            cov.problems.append(f"{where}: {reading.field} -> {reading.name} in {reading.unit!r}, not"
                                f" {quantity.unit!r}")
            continue
        if reading.field in outside:
            continue  # counted above: a wrong unit, or a no-value marker
        cov.standardised += 1
    return cov


# Raw values codecs return for "no sensor" or "no value": integer-overflow markers, as they are or
# scaled by a power of ten (327.67 °C is 0x7FFF hundredths); 8-bit ones only unscaled.
_SENTINELS = frozenset({0x7FFF, 0x8000, 0xFFFF, 0x7FFFFF, 0x800000, 0xFFFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF})
_BYTE_SENTINELS = frozenset({0x7F, 0x80, 0xFF})


def is_sentinel(value: Any) -> bool:
    """True for a codec's "no value" marker such as 32767, -32768, 65535 or 327.67."""
    if not _numeric(value):
        return False
    magnitude = abs(float(value))
    for digits in range(4):
        scaled = magnitude * 10**digits
        whole = round(scaled)
        if abs(scaled - whole) < 1e-6 * max(1.0, scaled):
            return whole in _SENTINELS or (digits == 0 and whole in _BYTE_SENTINELS)
    return False


def _steps(path: str) -> tuple[str | int, ...]:
    try:
        return tuple(s for s in parse_path(path))
    except ValueError:
        return (path,)


# --- codec files and their examples ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CodecExample:
    """One uplink example of a codec file: input, the expected output's `data` when given."""

    file: Path
    number: int  # from 0, in file order
    fport: int
    payload: bytes
    expected: Mapping[str, Any] | None


def is_chirpstack_codec(path: Path) -> bool:
    """True for a device-profiles codec script (`vendors/<vendor>/codecs/<name>.js`)."""
    return path.suffix == ".js"


def codec_key(path: Path) -> str:
    """The map key of a codec file: `ttn:<vendor>/<stem>` or `chirpstack:<vendor>/<stem>`."""
    if is_chirpstack_codec(path):
        vendor = path.parent.parent.name if path.parent.name == "codecs" else path.parent.name
        return f"chirpstack:{vendor}/{path.stem}"
    return f"ttn:{path.parent.name}/{path.stem}"


def codec_paths(paths: Iterable[Path]) -> list[Path]:
    """TTN codec YAMLs and ChirpStack codec scripts named or found under folders, in a stable order.

    A folder yields its `*.js` files only when it is (or holds) a `codecs/` folder, its YAMLs otherwise.
    """
    found: list[Path] = []
    for path in paths:
        if not path.is_dir():
            found.append(path)
            continue
        for item in sorted(path.rglob("*")):
            if not item.is_file():
                continue
            if item.suffix == ".js" and item.parent.name == "codecs":
                found.append(item)
            elif item.suffix == ".yaml" and "codecs" not in item.parts[len(path.parts):-1]:
                found.append(item)
    return found


def chirpstack_tests(script: Path) -> Path:
    """The examples file the device-profiles repository keeps beside a codec: `test_decode_<name>.json`."""
    return script.with_name(f"test_decode_{script.stem}.json")


def read_js_literal(text: str) -> Any:
    """A JSON-like JS literal (comments, hex numbers, trailing commas) as Python data.

    Evaluated in a fresh, limited QuickJS context: the file is data, but written as JavaScript.

    Raises:
        ConfigError: it is not a literal QuickJS can evaluate within the limits.
    """
    import quickjs  # type: ignore[import-untyped]  # quickjs-ng ships neither stubs nor py.typed

    try:
        return json.loads(text)
    except ValueError:
        pass
    context = quickjs.Context()
    context.set_time_limit(1.0)
    context.set_memory_limit(32 << 20)
    try:
        result = context.eval(f"JSON.stringify(({text}\n))")
    except Exception as exc:  # noqa: BLE001 - quickjs raises its own JSException and others
        raise ConfigError([f"not a JavaScript literal: {exc}"]) from None
    if not isinstance(result, str):
        raise ConfigError(["not a JavaScript literal"])
    return json.loads(result)


def load_codec_examples(path: Path) -> list[CodecExample]:
    """The uplink examples of a TTN codec YAML or of a ChirpStack codec's `test_decode_<name>.json`.

    Raises:
        ConfigError: the examples cannot be read.
    """
    if not is_chirpstack_codec(path):
        from edge.decoding.examples import load_examples

        return [CodecExample(path, n, e.fport, e.payload, e.expected.get("data"))
                for n, e in enumerate(load_examples(path))]
    tests = chirpstack_tests(path)
    if not tests.exists():
        return []
    try:
        raw = read_js_literal(tests.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{tests}: {exc}"]) from None
    except ConfigError as exc:
        raise ConfigError([f"{tests}: {p}" for p in exc.problems]) from None
    if not isinstance(raw, list):
        raise ConfigError([f"{tests}: expected a list of test cases"])
    out: list[CodecExample] = []
    for item in raw:
        given = item.get("input") if isinstance(item, Mapping) else None
        if not isinstance(given, Mapping):
            continue
        fport, data = given.get("fPort"), given.get("bytes")
        if not isinstance(fport, int) or not isinstance(data, list):
            continue
        expected = item.get("expected")
        data_out = expected.get("data") if isinstance(expected, Mapping) else None
        try:
            payload = bytes(data)
        except (ValueError, TypeError):
            continue
        out.append(CodecExample(path, len(out), fport, payload, data_out if isinstance(data_out, Mapping) else None))
    return out


def load_codec(path: Path, time_limit_s: float = 1.0) -> Any:
    """The codec of a TTN YAML or a ChirpStack script as a Decoder, run in the JS sandbox.

    Raises:
        ConfigError: the codec cannot be loaded.
    """
    from edge.decoding.js.codec import JsCodecDecoder
    from edge.decoding.js.runtime import JsLimits

    limits = JsLimits(time_limit=time_limit_s)
    if is_chirpstack_codec(path):
        key = codec_key(path)
        try:
            source = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError([f"{path}: {exc}"]) from None
        return JsCodecDecoder.from_script(key.split(":", 1)[1], source, limits=limits, codecs=(key,))
    return JsCodecDecoder.from_yaml(path, limits=limits)


def reading_json(reading: Reading) -> dict[str, Any]:
    """A reading as `edge decoders readings --json` prints it: field, n, u, v|vs|vb, t."""
    return {"field": reading.field, **reading_record(reading)}


def example_readings(paths: Sequence[Path], index: MapIndex | None = None, *, run: bool = True
                     ) -> Iterator[tuple[CodecExample, list[Reading], str]]:
    """For each uplink example of each codec file: its readings, and an error ('' if none).

    `run` decodes the example with the codec in the sandbox; otherwise the example's expected
    output is normalised (fast, for benchmarks over whole catalogues).
    """
    from edge.decoding.base import DeviceContext
    from edge.decoding.fieldmap import map_for

    index = index or default_index()
    for path in codec_paths(paths):
        try:
            examples = load_codec_examples(path)
        except ConfigError as exc:
            yield CodecExample(path, -1, 0, b"", None), [], "; ".join(exc.problems)
            continue
        if not examples:
            continue
        fmap = index.get(codec_key(path))
        decoder = None
        if run:
            try:
                decoder = load_codec(path)
            except Exception as exc:  # noqa: BLE001 - a codec that cannot load fails its examples only
                for example in examples:
                    yield example, [], f"cannot load codec: {exc}"
                continue
            if fmap is None:
                fmap = map_for(decoder, index)[1]
        for example in examples:
            data: Mapping[str, Any] | None = example.expected
            error = ""
            if decoder is not None:
                result = decoder.decode(example.payload, example.fport, DeviceContext("0000000000000000"))
                data = result.data
                error = "; ".join(map(str, result.errors))
            readings = normalise(data, fmap, EXAMPLE_RECV_TIME).readings if fmap is not None else \
                normalise(data).readings
            yield example, readings, error


@dataclass(slots=True)
class MapReport:
    """What `edge decoders test` says about one codec file's map."""

    key: str  # the map key looked up (or the first the decoder answers to)
    found: bool  # a map (or a legacy fields table) serves the codec
    coverage: Coverage


def map_report(decoder: Any, outputs: Iterable[tuple[str, Mapping[str, Any] | None]],
               index: MapIndex | None = None) -> MapReport:
    """Check a decoder's map with its examples' outputs (`where`, `data`) as `edge decoders test` does."""
    from edge.decoding.fieldmap import map_for

    key, fmap = map_for(decoder, index or default_index())
    cov = Coverage()
    for where, data in outputs:
        check(data, fmap, where, cov)
    return MapReport(key, bool(fmap.specs), cov)


def summary_line(total: Coverage, without_map: int) -> str:
    """The map coverage line `edge decoders test` prints before its last line."""
    return (f"maps: {total.covered}/{total.numeric} numeric fields covered ({100 * total.share:.1f} %),"
            f" {total.standardised}/{total.readings} numeric readings standardised,"
            f" {total.wrong_units} out of range; {without_map} codec file(s) without a map")
