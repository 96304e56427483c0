"""Field maps (docs/field-maps.md): loading, validating and indexing them, and matching field paths."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from importlib import metadata
from pathlib import Path
from typing import Any

from edge.errors import MapError, UnitMismatch
from edge.vocabulary import BY_NAME, Quantity, conversion

log = logging.getLogger(__name__)

PACKAGE_MAPS = Path(__file__).resolve().parent / "maps"
ENTRY_POINT_GROUP = "edge.field_maps"  # a plugin's entry point naming a folder (or module) of maps
CATALOGUES = ("ttn", "chirpstack", "native", "object")
TIME_UNITS = ("s", "ms", "iso8601", "offset-s", "ago-s")
_SPEC_KEYS = frozenset({"n", "u", "scale", "state", "values", "t", "tu", "dt", "not_readings"})
_KEY_RE = re.compile(r"^(ttn|chirpstack|native|object):[^\s:]+$")

# One step of a field path: a key (str) or a list index (int). Patterns add two wildcards.
Step = str | int
ANY_INDEX = "[*]"
ANY_KEY = "*"


# --- field paths -----------------------------------------------------------------------------------


def format_path(steps: Sequence[Step]) -> str:
    """`a.b[2].c` from ('a', 'b', 2, 'c'); a key containing '.', '[', ']' or '`' (or empty) is backtick-quoted."""
    out: list[str] = []
    for step in steps:
        if isinstance(step, int):
            out.append(f"[{step}]")
            continue
        text = f"`{step}`" if any(c in step for c in ".[]`") or step == "" else step
        out.append(f".{text}" if out else text)
    return "".join(out)


def parse_path(text: str) -> tuple[Step, ...]:
    """The steps of a path or pattern: keys, int indices, ANY_INDEX for `[*]`, ANY_KEY for `*`.

    Raises:
        ValueError: unbalanced backticks or brackets, an empty key, or a bad index.
    """
    steps: list[Step] = []
    i, n = 0, len(text)
    expect_key = True
    while i < n:
        ch = text[i]
        if ch == "[":
            end = text.find("]", i)
            if end < 0:
                raise ValueError(f"{text!r}: '[' without ']'")
            inner = text[i + 1 : end].strip()
            if inner == "*":
                steps.append(ANY_INDEX)
            elif inner.isdigit():
                steps.append(int(inner))
            else:
                raise ValueError(f"{text!r}: list index must be a number or '*', not {inner!r}")
            i = end + 1
            expect_key = False
            continue
        if ch == ".":
            if expect_key:
                raise ValueError(f"{text!r}: empty key")
            i += 1
            expect_key = True
            continue
        if not expect_key:
            raise ValueError(f"{text!r}: '.' or '[' expected at {i}")
        if ch == "`":
            end = text.find("`", i + 1)
            if end < 0:
                raise ValueError(f"{text!r}: unbalanced backtick")
            steps.append(text[i + 1 : end])
            i = end + 1
        else:
            j = i
            while j < n and text[j] not in ".[":
                if text[j] in "]`":
                    raise ValueError(f"{text!r}: unexpected {text[j]!r}")
                j += 1
            key = text[i:j]
            steps.append(ANY_KEY if key == "*" else key)
            i = j
        expect_key = False
    if expect_key:
        raise ValueError(f"{text!r}: empty key")
    return tuple(steps)


def _matches(pattern: tuple[Step, ...], path: tuple[Step, ...]) -> bool:
    for want, got in zip(pattern, path, strict=True):
        if want == ANY_INDEX:
            if not isinstance(got, int):
                return False
        elif want == ANY_KEY:
            if not isinstance(got, str):
                return False
        elif isinstance(want, str) and "*" in want:
            if not isinstance(got, str) or not fnmatchcase(got, want):
                return False
        elif want != got:
            return False
    return True


def _wild(step: Step) -> bool:
    """A step that matches more than one key or index: `[*]`, `*`, or a key glob like `temperature_*`."""
    return step == ANY_INDEX or (isinstance(step, str) and "*" in step)


def _weight(step: Step) -> int:
    # An exact step beats a key glob (`temperature_*`), which beats a bare wildcard.
    if step == ANY_INDEX or step == ANY_KEY:
        return 0
    return 1 if isinstance(step, str) and "*" in step else 2


# --- one entry of a map ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """What a map says about one field path: ignore it, or its quantity, emitted unit and time.

    `factor`/`offset` convert a value as the codec emits it (after `scale`) to the quantity's unit;
    they are derived from `u`, never written in a map.
    """

    pattern: str
    steps: tuple[Step, ...]
    ignore: bool = False
    keep: bool = False  # sent unit-less under its own key on purpose: no quantity fits (yet)
    name: str = ""
    unit: str | None = None
    scale: float = 1.0
    state: bool = False
    values: Mapping[str, Any] | None = None
    # Values a catalogue example returns that no device sends (filler bytes): the range check skips them.
    not_readings: frozenset[float] = frozenset()
    time: tuple[Step, ...] | None = None
    time_unit: str = "s"
    time_step: float = 0.0
    quantity: Quantity | None = None
    factor: float = 1.0
    offset: float = 0.0

    @property
    def specificity(self) -> int:
        """How exact the pattern is: exact steps count 2, key globs 1, wildcards 0."""
        return sum(_weight(s) for s in self.steps)

    def convert_from(self, unit: str) -> tuple[float, float]:
        """(factor, offset) from a unit the data itself declares (Decentlab's `unit`), with `scale`.

        Raises:
            UnitMismatch: the unit is unknown or measures something else than the quantity.
        """
        if self.quantity is None:
            raise UnitMismatch(f"{self.name!r} is not in the vocabulary")
        factor, offset = conversion(unit, self.quantity)
        return factor * self.scale, offset


def _spec(pattern: str, raw: Any, where: str, problems: list[str]) -> FieldSpec | None:
    try:
        steps = parse_path(pattern)
    except ValueError as exc:
        problems.append(f"{where}: bad field path: {exc}")
        return None
    if raw == "ignore":
        return FieldSpec(pattern, steps, ignore=True)
    if raw == "keep":
        return FieldSpec(pattern, steps, keep=True)
    if not isinstance(raw, Mapping):
        problems.append(f"{where}: must be 'ignore', 'keep' or a mapping with n (and u, state, t ...)")
        return None
    unknown = set(map(str, raw)) - _SPEC_KEYS
    if unknown:
        problems.append(f"{where}: unknown keys {sorted(unknown)} (allowed: {sorted(_SPEC_KEYS)})")
    name = raw.get("n")
    quantity = BY_NAME.get(name) if isinstance(name, str) else None
    if quantity is None:
        problems.append(f"{where}: n {name!r} is not in the vocabulary (docs/vocabulary.md)")
        return None
    state = raw.get("state", False)
    if not isinstance(state, bool):
        problems.append(f"{where}: state must be true or false")
        state = False
    unit = raw.get("u")
    scale = raw.get("scale", 1.0)
    if isinstance(scale, bool) or not isinstance(scale, int | float) or scale == 0:
        problems.append(f"{where}: scale must be a non-zero number")
        scale = 1.0
    factor, offset = float(scale), 0.0
    if state:
        if quantity.unit is not None and not quantity.state:
            problems.append(f"{where}: state: true, but {name} is a measurement in {quantity.unit}")
        if unit is not None:
            problems.append(f"{where}: a state has no unit (u: {unit!r})")
    elif unit is not None:
        if not isinstance(unit, str):
            problems.append(f"{where}: u must be a string")
        else:
            try:
                f, offset = conversion(unit, quantity)
                factor = f * float(scale)
            except UnitMismatch as exc:
                problems.append(f"{where}: {exc}")
    elif quantity.state:
        problems.append(f"{where}: {name} is a state quantity: add state: true")
    not_readings = raw.get("not_readings", [])
    if not isinstance(not_readings, list) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in not_readings):
        problems.append(f"{where}: not_readings must be a list of numbers (example values that are filler)")
        not_readings = []
    values = raw.get("values")
    if values is not None and not isinstance(values, Mapping):
        problems.append(f"{where}: values must be a mapping (enum value: meaning)")
        values = None
    time: tuple[Step, ...] | None = None
    if raw.get("t") is not None:
        try:
            time = parse_path(str(raw["t"]))
        except ValueError as exc:
            problems.append(f"{where}: bad t path: {exc}")
    time_unit = raw.get("tu", "s")
    if time_unit not in TIME_UNITS:
        problems.append(f"{where}: tu must be one of {', '.join(TIME_UNITS)}")
    time_step = raw.get("dt", 0.0)
    if isinstance(time_step, bool) or not isinstance(time_step, int | float):
        problems.append(f"{where}: dt must be a number of seconds")
        time_step = 0.0
    return FieldSpec(pattern, steps, name=str(name), unit=unit if isinstance(unit, str) else None,
                     scale=float(scale), state=state, values=values,
                     not_readings=frozenset(not_readings), time=time, time_unit=str(time_unit),
                     time_step=float(time_step), quantity=quantity, factor=factor, offset=offset)


# --- a map ------------------------------------------------------------------------------------------


@dataclass(slots=True)
class FieldMap:
    """One map: the codecs it serves and its field specs, with the lookup the normaliser uses."""

    codecs: tuple[str, ...]
    specs: tuple[FieldSpec, ...]
    source: str = ""
    _exact: dict[tuple[Step, ...], FieldSpec] = field(default_factory=dict, repr=False)
    _wild: dict[int, list[FieldSpec]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for spec in self.specs:
            if any(_wild(s) for s in spec.steps):
                self._wild.setdefault(len(spec.steps), []).append(spec)
            else:
                self._exact.setdefault(spec.steps, spec)
        for specs in self._wild.values():
            # Most specific first; a stable sort keeps the map's order among equals.
            specs.sort(key=lambda s: -s.specificity)

    def lookup(self, path: tuple[Step, ...]) -> FieldSpec | None:
        """The spec for a leaf's path: the exact path, else the most specific matching pattern."""
        spec = self._exact.get(path)
        if spec is not None:
            return spec
        for candidate in self._wild.get(len(path), ()):
            if _matches(candidate.steps, path):
                return candidate
        return None

    @property
    def mapped_count(self) -> int:
        """How many field patterns name a quantity (not ignored or kept as they are)."""
        return sum(1 for s in self.specs if not (s.ignore or s.keep))


EMPTY = FieldMap((), ())


def parse_map(doc: Any, source: str = "<map>") -> FieldMap:
    """A map from its parsed YAML document.

    Raises:
        MapError: the document breaks docs/field-maps.md (every problem listed).
    """
    problems: list[str] = []
    if not isinstance(doc, Mapping):
        raise MapError([f"{source}: a field map is a mapping with codecs and fields"])
    unknown = set(map(str, doc)) - {"codecs", "fields"}
    if unknown:
        problems.append(f"{source}: unknown top-level keys {sorted(unknown)}")
    codecs = doc.get("codecs")
    if not isinstance(codecs, list) or not codecs:
        problems.append(f"{source}: codecs must be a non-empty list of <catalogue>:<id>")
        codecs = []
    for key in codecs:
        if not isinstance(key, str) or not _KEY_RE.match(key):
            problems.append(f"{source}: codec {key!r} is not <catalogue>:<id> with a catalogue of "
                            f"{', '.join(CATALOGUES)}")
    fields = doc.get("fields")
    if not isinstance(fields, Mapping):
        problems.append(f"{source}: fields must be a mapping of field path to spec or 'ignore'")
        fields = {}
    specs: list[FieldSpec] = []
    for pattern, raw in fields.items():
        spec = _spec(str(pattern), raw, f"{source}: fields.{pattern}", problems)
        if spec is not None:
            specs.append(spec)
    if problems:
        raise MapError(problems)
    return FieldMap(tuple(str(c) for c in codecs), tuple(specs), source)


def _yaml() -> Any:
    from ruamel.yaml import YAML

    # YAML 1.2 (ruamel's default): `no`, `on` and `off` stay strings, so state enums survive.
    return YAML(typ="safe", pure=True)


def load_map(path: Path) -> FieldMap:
    """A map file.

    Raises:
        MapError: the file cannot be read or parsed, or breaks the format.
    """
    try:
        doc = _yaml().load(path.read_text(encoding="utf-8"))
    except Exception as exc:  # noqa: BLE001 - ruamel raises many types; all mean "not a readable map"
        raise MapError([f"{path}: cannot read: {exc}"]) from None
    return parse_map(doc, str(path))


def from_fields(fields: Mapping[str, Any], codecs: Sequence[str] = (), source: str = "<fields>") -> FieldMap:
    """A map from a legacy plugin `fields` table (Mapping[str, Field]), so old plugins keep working.

    A legacy key is a dotted path; its Field gives the quantity's name, its unit (already the
    quantity's) and a linear conversion. Names outside the vocabulary are kept as given.
    """
    specs: list[FieldSpec] = []
    for key, f in fields.items():
        name = str(getattr(f, "name", ""))
        unit = getattr(f, "unit", None)
        scale = float(getattr(f, "scale", 1.0))
        offset = float(getattr(f, "offset", 0.0))
        quantity = BY_NAME.get(name)
        if quantity is None or (quantity.unit != unit and not quantity.state):
            # Outside the vocabulary, or in another unit: sent as the table says, as before maps
            # (edge.testing flags both to the plugin's author).
            quantity = Quantity(name, unit, "from a legacy fields table")
        try:
            steps = parse_path(key)
        except ValueError:
            steps = (key,)
        specs.append(FieldSpec(key, steps, name=name, unit=unit, scale=scale, state=quantity.state,
                               quantity=quantity, factor=scale, offset=offset))
    return FieldMap(tuple(codecs), tuple(specs), source)


# --- the index of every map ---------------------------------------------------------------------------


@dataclass(slots=True)
class MapIndex:
    """Maps by codec key (`<catalogue>:<id>`), with the problems met while loading them.

    Folders are indexed lazily: only each file's `codecs:` list is read at start (parsing every
    map of a catalogue takes seconds on a Raspberry Pi); a map is parsed and validated the first
    time one of its keys is asked for. `load_all` parses every map (tests, `edge decoders test`).
    """

    problems: list[str] = field(default_factory=list)
    _claims: dict[str, str] = field(default_factory=dict)  # codec key -> source of the map that serves it
    _files: dict[str, Path] = field(default_factory=dict)  # source -> file, for maps not parsed yet
    _parsed: dict[str, FieldMap | None] = field(default_factory=dict)  # source -> map (None: invalid)

    def get(self, key: str) -> FieldMap | None:
        """The map serving this codec key (parsed on first use; an invalid map serves nothing)."""
        source = self._claims.get(key)
        if source is None:
            return None
        if source in self._parsed:
            return self._parsed[source]
        return self._parse(source)

    def first(self, keys: Iterable[str]) -> tuple[str, FieldMap] | None:
        """The first of `keys` that has a map, with the map."""
        for key in keys:
            found = self.get(key)
            if found is not None:
                return key, found
        return None

    @property
    def keys(self) -> list[str]:
        """Every codec key some map claims."""
        return sorted(self._claims)

    @property
    def maps(self) -> list[FieldMap]:
        """The maps parsed so far (all of them after `load_all`)."""
        return [m for m in self._parsed.values() if m is not None]

    def add(self, fmap: FieldMap, catalogue: str = "") -> None:
        """Index a parsed map under each of its codec keys."""
        self._parsed[fmap.source] = fmap
        self._claim(fmap.codecs, fmap.source, catalogue)

    def _claim(self, keys: Sequence[str], source: str, catalogue: str) -> None:
        """Two maps claiming one key: the one from the key's own catalogue folder wins (a TTN map
        written from the TTN codec beats a native map listing the same codec), else the first."""
        for key in keys:
            held = self._claims.get(key)
            if held is None:
                self._claims[key] = source
                continue
            if held == source:
                continue
            own = key.split(":", 1)[0]
            if catalogue == own and _catalogue_of(held) != own:
                self._claims[key] = source
            elif _catalogue_of(held) == own and catalogue != own:
                continue
            else:
                self.problems.append(f"{source}: codec {key} already mapped by {held}")

    def _parse(self, source: str) -> FieldMap | None:
        try:
            fmap = load_map(self._files[source])
        except MapError as exc:
            self.problems.extend(exc.problems)
            for problem in exc.problems:
                log.warning("field map: %s", problem)
            self._parsed[source] = None
            return None
        self._parsed[source] = fmap
        # Should the quick scan have read a key the YAML does not list, the YAML is right.
        for key in [key for key, held in self._claims.items() if held == source and key not in fmap.codecs]:
            del self._claims[key]
        return fmap

    def load_folder(self, folder: Path, *, lazy: bool = True) -> None:
        """Index every `*.yaml` under a folder (a bad map is a problem, the others still load)."""
        for path in sorted(folder.rglob("*.yaml")):
            source, catalogue = str(path), _catalogue_of(str(path))
            self._files[source] = path
            keys = _scan_codecs(path) if lazy else None
            if keys is None:
                fmap = self._parse(source)
                if fmap is not None:
                    self._claim(fmap.codecs, source, catalogue)
            else:
                self._claim(keys, source, catalogue)

    def load_all(self) -> None:
        """Parse and validate every indexed map now."""
        for source in list(self._files):
            if source not in self._parsed:
                self._parse(source)


def _scan_codecs(path: Path) -> list[str] | None:
    """A map file's `codecs:` keys read without parsing YAML, or None when the file is not plainly
    written (then it is parsed at once): a block list of `- key` lines or a one-line flow list."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    for i, line in enumerate(lines):
        if not line.startswith("codecs:"):
            continue
        rest = line[len("codecs:"):].split("#", 1)[0].strip()
        if rest.startswith("[") and rest.endswith("]"):
            items = [item.strip().strip("'\"") for item in rest[1:-1].split(",") if item.strip()]
        elif rest:
            return None
        else:
            items = []
            for following in lines[i + 1:]:
                text = following.split("#", 1)[0].strip()
                if not text:
                    continue
                if not text.startswith("- "):
                    break
                items.append(text[2:].strip().strip("'\""))
        return items if items and all(_KEY_RE.match(item) for item in items) else None
    return None


def _catalogue_of(source: str) -> str:
    parts = Path(source).parts
    for i, part in enumerate(parts[:-1]):
        if part == "maps" and i + 1 < len(parts) and parts[i + 1] in CATALOGUES:
            return parts[i + 1]
    return ""


def plugin_map_folders() -> list[Path]:
    """Folders of maps that installed plugins declare through the `edge.field_maps` entry point.

    The entry point names a module (its folder's `maps/`, else the folder itself is scanned), or a
    callable returning folder paths, or a path string.
    """
    found: list[Path] = []
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            found.extend(_folders(ep.load()))
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not stop the gateway
            log.warning("field maps of plugin entry point %s cannot be loaded: %s", ep.name, exc)
    return found


def _folders(target: Any) -> list[Path]:
    if isinstance(target, str | Path):
        return [Path(target)]
    module_file = getattr(target, "__file__", None)
    if isinstance(module_file, str):
        base = Path(module_file).parent
        return [base / "maps" if (base / "maps").is_dir() else base]
    if callable(target):
        result = target()
        if isinstance(result, str | Path):
            return [Path(result)]
        return [Path(p) for p in result]
    return []


_DEFAULT: MapIndex | None = None


def default_index(extra: Iterable[Path] = ()) -> MapIndex:
    """The package's maps plus plugins' maps (loaded once), plus `extra` folders when given."""
    global _DEFAULT
    extra = list(extra)
    if _DEFAULT is not None and not extra:
        return _DEFAULT
    index = MapIndex()
    for folder in (PACKAGE_MAPS, *plugin_map_folders(), *extra):
        if folder.is_dir():
            index.load_folder(folder)
    for problem in index.problems:
        log.warning("field map: %s", problem)
    if not extra:
        _DEFAULT = index
    return index


def decoder_keys(decoder: Any) -> list[str]:
    """The map keys a decoder answers to, most specific first: its own `codecs`, `native:<id>`,
    `native:<alias>`, then `ttn:<codec>` for each TTN codec it reproduces."""
    keys = [str(k) for k in getattr(decoder, "codecs", ())]
    keys.append(f"native:{decoder.id}")
    keys.extend(f"native:{a}" for a in getattr(decoder, "aliases", ()))
    keys.extend(f"ttn:{c}" for c in getattr(decoder, "ttn_codecs", ()))
    return keys


def map_for(decoder: Any, index: MapIndex | None = None) -> tuple[str, FieldMap]:
    """The codec key and map for a decoder: a YAML map, else its legacy `fields`, else no map."""
    keys = decoder_keys(decoder)
    found = (index or default_index()).first(keys)
    if found is not None:
        return found
    legacy = getattr(decoder, "fields", None)
    if isinstance(legacy, Mapping) and legacy:
        return keys[0], from_fields(legacy, keys, f"{decoder.id} fields")
    return keys[0], EMPTY
