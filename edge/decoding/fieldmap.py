"""Field maps (docs/field-maps.md): loading and validating them, and the index that finds a decoder's map."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from edge.decoding.fieldpath import Step, is_wild, matches, parse_path
from edge.decoding.fieldspec import FieldSpec, parse_spec
from edge.errors import MapError
from edge.vocabulary import BY_NAME, Quantity

log = logging.getLogger(__name__)

PACKAGE_MAPS = Path(__file__).resolve().parent / "maps"
ENTRY_POINT_GROUP = "edge.field_maps"  # a plugin's entry point naming a folder (or module) of maps
CATALOGUES = ("ttn", "chirpstack", "native", "object")
_KEY_RE = re.compile(r"^(ttn|chirpstack|native|object):[^\s:]+$")


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
            if any(is_wild(s) for s in spec.steps):
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
            if matches(candidate.steps, path):
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
        spec = parse_spec(str(pattern), raw, f"{source}: fields.{pattern}", problems)
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
