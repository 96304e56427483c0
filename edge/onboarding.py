"""Bulk onboarding's sheets: reads vendors' device sheets and checks every row; writes the registry back as one.

The flow is validate (here) → plan (edge/onboarding_plan.py) → apply (edge/onboarding_apply.py,
which creates or updates the devices through ChirpStack). Nothing changes in ChirpStack until every
row has been checked (hex lengths, duplicates in the file and against ChirpStack, unknown
applications and profiles), so a sheet with one typo changes nothing. Applying is idempotent: a
device that exists is compared and updated only if it differs, keys likewise, so a re-run after an
interruption finishes the job without duplicates. Keys are never logged, printed or put in an
exception message.

Column layouts: vendors ship DevEUI/JoinEUI(AppEUI)/AppKey sheets with many spellings; headers are
matched after folding case, spaces, dashes, underscores and dots (`Dev EUI`, `dev_eui`, `DEVEUI`), and
`--columns field=Header` maps any other layout. For LoRaWAN 1.0.x the AppKey goes to ChirpStack's
`nwk_key` (ChirpStack's API names it so); a sheet with a separate NwkKey column is LoRaWAN 1.1.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from edge.errors import SheetError
from edge.sources.chirpstack_records import DeviceKeys, DeviceRecord

log = logging.getLogger(__name__)

FIELDS = ("dev_eui", "join_eui", "app_key", "nwk_key", "name", "description", "application", "device_profile",
          "tags", "variables", "codec")
# Header spellings seen in vendors' sheets and ChirpStack/TTN exports, folded (see _fold).
ALIASES: dict[str, tuple[str, ...]] = {
    "dev_eui": ("deveui", "eui", "deviceeui", "devicedeveui", "deveuihex", "serialeui"),
    "join_eui": ("joineui", "appeui", "applicationeui", "joinappeui"),
    "app_key": ("appkey", "applicationkey", "otaaappkey", "otaakey", "key"),
    "nwk_key": ("nwkkey", "networkkey"),
    "name": ("name", "devicename", "device"),
    "description": ("description", "desc", "comment", "comments", "location", "note"),
    "application": ("application", "applicationid", "app", "appid", "applicationname"),
    "device_profile": ("deviceprofile", "profile", "deviceprofileid", "deviceprofilename", "profileid",
                       "profilename"),
    "tags": ("tags",),
    "variables": ("variables",),
    "codec": ("codec", "catalogue", "catalog", "catalogueid", "devicerepository", "ttndevice", "codecid"),
}
_HEX = re.compile(r"[0-9a-fA-F]*")
_CODEC = re.compile(r"(ttn|chirpstack|native):[a-z0-9][a-z0-9._-]*/[a-z0-9][a-z0-9._-]*")
MAX_ROWS = 100_000  # a sheet larger than a whole city's fleet is a mistake, not a job


@dataclass(slots=True)
class Row:
    """One device of the sheet, as read (hex lowercased); `line` is its row number in the sheet."""

    line: int
    dev_eui: str = ""
    join_eui: str = ""
    app_key: str = ""
    nwk_key: str = ""
    name: str = ""
    description: str = ""
    application: str = ""
    device_profile: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    variables: dict[str, str] = field(default_factory=dict)
    codec: str = ""

    def keys(self) -> DeviceKeys | None:
        """The OTAA keys as ChirpStack stores them, or None when the sheet has none (ABP, or keys set later)."""
        if not self.app_key and not self.nwk_key:
            return None
        if self.nwk_key:  # LoRaWAN 1.1: separate network and application root keys
            return DeviceKeys(self.dev_eui, self.nwk_key, self.app_key)
        return DeviceKeys(self.dev_eui, self.app_key)  # 1.0.x: AppKey is ChirpStack's nwk_key

    def __repr__(self) -> str:
        return f"Row(line={self.line}, dev_eui={self.dev_eui!r}, name={self.name!r}, <keys hidden>)"


def _fold(header: str) -> str:
    return re.sub(r"[\s_\-.()/]+", "", header.strip().lower())


def parse_columns(spec: str) -> dict[str, str]:
    """`--columns dev_eui=Serial,app_key=Key` as {field: header}.

    Raises:
        SheetError: an unknown field or a malformed pair.
    """
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, sep, header = part.partition("=")
        if not sep or not header.strip():
            raise SheetError([f"--columns: {part!r} is not FIELD=HEADER"])
        if name.strip() not in FIELDS:
            raise SheetError([f"--columns: unknown field {name.strip()!r}; fields: {', '.join(FIELDS)}"])
        out[name.strip()] = header.strip()
    return out


def _pairs(text: str, what: str, line: int, problems: list[str]) -> dict[str, str]:
    """`k=v;k2=v2` (or `,`-separated) as a dict."""
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in re.split(r"[;,]", text))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            problems.append(f"row {line}: {what} {part!r} is not key=value")
            continue
        out[key.strip()] = value.strip()
    return out


def read_table(path: Path) -> Iterator[tuple[int, list[str]]]:
    """The sheet's rows as (row number, cells), the header first; CSV (any common delimiter) or XLSX.

    Raises:
        SheetError: the file cannot be read.
    """
    try:
        if path.suffix.lower() in (".xlsx", ".xlsm"):
            yield from _read_xlsx(path)
            return
        raw = path.read_bytes()
    except OSError as exc:
        raise SheetError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("cp1252", errors="replace")  # Excel's "CSV" on Windows
    # The header row tells the delimiter (Excel writes ';' where ',' is the decimal mark): csv.Sniffer
    # guesses from the data too and is fooled by tag columns like "floor=3;room=12".
    first = next((line for line in text.splitlines() if line.strip()), "")
    delimiter = max(",;\t", key=first.count)
    yield from enumerate(csv.reader(io.StringIO(text), delimiter=delimiter), start=1)


def _read_xlsx(path: Path) -> Iterator[tuple[int, list[str]]]:
    # Imported here: openpyxl is only needed for spreadsheets and costs memory otherwise.
    import zipfile

    import openpyxl

    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
        raise SheetError([f"{path}: not a readable XLSX file: {exc}"]) from None
    try:
        sheet = book.worksheets[0]
        for number, values in enumerate(sheet.iter_rows(values_only=True), start=1):
            yield number, ["" if v is None else str(v) for v in values]
    finally:
        book.close()


def read_rows(path: Path, columns: Mapping[str, str] | None = None) -> tuple[list[Row], list[str]]:
    """Every device row of a sheet, and every problem found in the file itself.

    Args:
        path: a .csv (or .txt/.tsv) or .xlsx file; the first non-empty row is the header.
        columns: {field: header} for layouts the aliases do not cover.

    Returns:
        (rows, problems): problems name the row number as a spreadsheet shows it.
    """
    problems: list[str] = []
    rows: list[Row] = []
    table = read_table(path)
    header: list[str] = []
    for _number, cells in table:
        if any(c.strip() for c in cells):
            header = cells
            break
    if not header:
        return [], [f"{path}: the file has no header row"]
    folded = [_fold(h) for h in header]
    index: dict[str, int] = {}
    for name, wanted in (columns or {}).items():
        if _fold(wanted) not in folded:
            problems.append(f"--columns: the file has no column {wanted!r} (it has: {', '.join(header)})")
        else:
            index[name] = folded.index(_fold(wanted))
    for name, aliases in ALIASES.items():
        if name not in index:
            found = next((i for i, h in enumerate(folded) if h in aliases), None)
            if found is not None and found not in index.values():
                index[name] = found
    extra_tags = {i: re.split(r"[:.]", h, maxsplit=1)[1].strip() for i, h in enumerate(header)
                  if re.match(r"\s*tag\s*[:.]", h, re.I)}
    extra_vars = {i: re.split(r"[:.]", h, maxsplit=1)[1].strip() for i, h in enumerate(header)
                  if re.match(r"\s*var(iable)?\s*[:.]", h, re.I)}
    if "dev_eui" not in index:
        problems.append(f"{path}: no DevEUI column (headers: {', '.join(header)}); name it with --columns dev_eui=...")
        return [], problems
    for number, cells in table:
        if not any(c.strip() for c in cells):
            continue
        if len(rows) >= MAX_ROWS:
            problems.append(f"{path}: more than {MAX_ROWS} rows; split the file")
            break

        def cell(name: str, cells: list[str] = cells) -> str:
            i = index.get(name)
            return cells[i].strip() if i is not None and i < len(cells) else ""

        row = Row(number)
        for name in FIELDS:
            if name in ("dev_eui", "join_eui", "app_key", "nwk_key"):
                setattr(row, name, re.sub(r"[\s:\-]", "", cell(name)).lower())
            elif name not in ("tags", "variables"):
                setattr(row, name, cell(name))
        row.tags = _pairs(cell("tags"), "tag", number, problems)
        row.tags.update({k: cells[i].strip() for i, k in extra_tags.items() if i < len(cells) and cells[i].strip()})
        row.variables = _pairs(cell("variables"), "variable", number, problems)
        row.variables.update({k: cells[i].strip() for i, k in extra_vars.items()
                              if i < len(cells) and cells[i].strip()})
        rows.append(row)
    return rows, problems


def check_rows(rows: Sequence[Row], *, need_keys: bool = True) -> list[str]:
    """Problems every row can be checked for without ChirpStack: hex lengths, duplicates, catalogue ids."""
    problems: list[str] = []
    first: dict[str, int] = {}
    for row in rows:
        where = f"row {row.line}"
        for name, length, label in (("dev_eui", 16, "DevEUI"), ("join_eui", 16, "JoinEUI"),
                                    ("app_key", 32, "AppKey"), ("nwk_key", 32, "NwkKey")):
            value = getattr(row, name)
            if not value:
                if name == "dev_eui":
                    problems.append(f"{where}: no DevEUI")
                elif name == "app_key" and need_keys and not row.nwk_key:
                    problems.append(f"{where}: no AppKey (OTAA needs one; --no-keys imports devices without keys)")
                continue
            if len(value) != length or not _HEX.fullmatch(value):
                # The key's value is never echoed: only its length.
                shown = value if name in ("dev_eui", "join_eui") else f"{len(value)} characters"
                problems.append(f"{where}: {label} must be {length} hex digits, got {shown!r}")
        if row.dev_eui:
            if row.dev_eui in first:
                problems.append(f"{where}: DevEUI {row.dev_eui} is also on row {first[row.dev_eui]}")
            else:
                first[row.dev_eui] = row.line
        if row.codec and not _CODEC.fullmatch(row.codec):
            problems.append(f"{where}: codec {row.codec!r} is not ttn:<vendor>/<codec>, chirpstack:<vendor>/<codec>"
                            " or native:<vendor>/<model>")
        if len(row.name) > 100:
            problems.append(f"{where}: name longer than 100 characters")
    return problems


EXPORT_COLUMNS = ("dev_eui", "join_eui", "app_key", "nwk_key", "name", "description", "application",
                  "device_profile", "tags", "variables")


def _joined(values: Mapping[str, str]) -> str:
    return ";".join(f"{k}={v}" for k, v in sorted(values.items()))


def export_rows(devices: Iterable[DeviceRecord], applications: Mapping[str, str], profiles: Mapping[str, str],
                keys: Mapping[str, DeviceKeys] | None = None) -> Iterator[list[str]]:
    """The registry as sheet rows in the import layout (header first); keys only when given."""
    yield list(EXPORT_COLUMNS)
    for d in devices:
        k = (keys or {}).get(d.dev_eui)
        # 1.0.x devices hold their AppKey in nwk_key; 1.1 devices have both.
        app_key, nwk_key = ("", "") if k is None else (k.app_key, k.nwk_key) if k.app_key else (k.nwk_key, "")
        yield [d.dev_eui, d.join_eui, app_key, nwk_key, d.name, d.description,
               applications.get(d.application_id, d.application_id), profiles.get(d.profile_id, d.profile_id),
               _joined(d.tags), _joined(d.variables or {})]


def open_private(path: Path) -> io.TextIOWrapper:
    """A new file only its owner can read (keys go in it): created 0600 before anything is written."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_CREAT: set it
    return open(fd, "w", encoding="utf-8", newline="")  # the caller closes it
