"""Onboarding's plan: every sheet row checked against ChirpStack, and what applying it would do; changes nothing.

A row's application and device profile may be given by id or by a unique name; a DevEUI that
ChirpStack already has in another application is refused. Every problem of every row is reported
at once (SheetError), so a sheet with one typo changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from edge.errors import SheetError
from edge.onboarding import Row, check_rows
from edge.sources.chirpstack_records import DeviceKeys, DeviceRecord


@dataclass(frozen=True, slots=True)
class Step:
    """What applying one row does: `create`, `update` or `unchanged`, for the device and for its keys."""

    row: Row
    record: DeviceRecord
    device: str
    keys: str
    changes: tuple[str, ...] = ()


class DeviceApi(Protocol):
    """The ChirpStack calls onboarding needs (edge.sources.chirpstack_grpc.ChirpStackApi)."""

    def get_device(self, dev_eui: str) -> DeviceRecord: ...
    def get_keys(self, dev_eui: str) -> DeviceKeys | None: ...
    def create_device(self, record: DeviceRecord) -> None: ...
    def update_device(self, record: DeviceRecord) -> None: ...
    def set_keys(self, keys: DeviceKeys, *, exists: bool) -> None: ...


@dataclass(frozen=True, slots=True)
class Directory:
    """What the rows are checked against: the tenant's applications and profiles, and where each device lives."""

    applications: Mapping[str, str]  # id -> name
    profiles: Mapping[str, str]  # id -> name
    device_app: Mapping[str, str]  # dev_eui -> application id, for every device ChirpStack has


def _resolve(value: str, table: Mapping[str, str], what: str, where: str, problems: list[str]) -> str:
    """An id from an id or a unique name."""
    if value in table:
        return value
    named = [i for i, name in table.items() if name == value] or \
        [i for i, name in table.items() if name.lower() == value.lower()]
    if len(named) == 1:
        return named[0]
    if named:
        problems.append(f"{where}: {len(named)} {what}s are named {value!r}; use the id")
    else:
        problems.append(f"{where}: ChirpStack has no {what} {value!r}")
    return ""


def plan(rows: Sequence[Row], directory: Directory, api: DeviceApi, *, application: str = "",
         profile: str = "", need_keys: bool = True, earlier: Sequence[str] = ()) -> list[Step]:
    """Check every row against ChirpStack and say what applying it would do; changes nothing.

    Args:
        earlier: problems already found while reading the sheet, reported together with these.

    Raises:
        SheetError: with every problem of every row, when there is any.
    """
    problems = [*earlier, *check_rows(rows, need_keys=need_keys)]
    resolved: list[tuple[Row, str, str]] = []
    for row in rows:
        where = f"row {row.line}"
        app_value, profile_value = row.application or application, row.device_profile or profile
        if not app_value:
            problems.append(f"{where}: no application (a column, or --application)")
        if not profile_value:
            problems.append(f"{where}: no device profile (a column, or --profile)")
        app_id = _resolve(app_value, directory.applications, "application", where, problems) if app_value else ""
        profile_id = _resolve(profile_value, directory.profiles, "device profile", where, problems) \
            if profile_value else ""
        elsewhere = directory.device_app.get(row.dev_eui)
        if elsewhere and app_id and elsewhere != app_id:
            problems.append(f"{where}: DevEUI {row.dev_eui} already exists in ChirpStack in application"
                            f" {directory.applications.get(elsewhere, elsewhere)!r}; delete or move it there first")
        resolved.append((row, app_id, profile_id))
    if problems:
        raise SheetError(problems)
    steps = []
    for row, app_id, profile_id in resolved:
        tags = dict(row.tags)
        if row.codec:
            tags["codec"] = row.codec  # which catalogue codec and field map decode it (see docs/field-maps.md)
        record = DeviceRecord(row.dev_eui, row.name or row.dev_eui, app_id, profile_id, row.description, tags,
                              dict(row.variables), False, row.join_eui)
        steps.append(_step(row, record, row.dev_eui in directory.device_app, api))
    return steps


def _step(row: Row, record: DeviceRecord, exists: bool, api: DeviceApi) -> Step:
    keys = row.keys()
    if not exists:
        return Step(row, record, "create", "create" if keys else "none")
    have = api.get_device(row.dev_eui)
    changes = [name for name, old, new in (
        ("name", have.name, record.name), ("description", have.description, record.description),
        ("device profile", have.profile_id, record.profile_id), ("tags", have.tags, {**have.tags, **record.tags}),
        ("variables", have.variables or {}, {**(have.variables or {}), **(record.variables or {})}))
        if old != new]
    if row.join_eui and have.join_eui != row.join_eui:
        changes.append("JoinEUI")
    # Tags and variables set in ChirpStack but not in the sheet are kept: the sheet adds, it does not wipe.
    record = replace(record, tags={**have.tags, **record.tags},
                     variables={**(have.variables or {}), **(record.variables or {})},
                     is_disabled=have.is_disabled, join_eui=row.join_eui or have.join_eui)
    key_action = "none"
    if keys is not None:
        current = api.get_keys(row.dev_eui)
        key_action = "create" if current is None else "unchanged" if current == keys else "update"
    return Step(row, record, "update" if changes else "unchanged", key_action, tuple(changes))
