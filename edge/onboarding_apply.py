"""Onboarding's writes: the planned steps applied to ChirpStack in paced batches, retried while it is unreachable.

Applying is idempotent: a device that exists is updated, keys that exist are replaced only when
they differ, so a re-run after an interruption finishes the job without duplicates.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from edge.errors import ApiExists, ApiNotFound, ApiUnavailable
from edge.onboarding_plan import DeviceApi, Step
from edge.sources.chirpstack_records import DeviceKeys, DeviceRecord


def _retrying(action: Callable[[], None], attempts: int, pause: float) -> None:
    """Run a write, retrying while ChirpStack is unreachable (the write is idempotent at this level)."""
    for attempt in range(1, attempts + 1):
        try:
            action()
            return
        except ApiUnavailable:
            if attempt == attempts:
                raise
            time.sleep(pause * 2 ** (attempt - 1))


def apply(steps: Sequence[Step], api: DeviceApi, *, batch: int = 20, pause_s: float = 0.5, attempts: int = 4,
          on_done: Callable[[Step], None] | None = None) -> dict[str, int]:
    """Create or update devices and keys, `batch` rows at a time with a pause between batches.

    Idempotent: a create that finds the device (e.g. a retried call that had gone through) becomes
    an update, keys that exist are replaced only when they differ. Stops at the first failure that
    is not "unreachable" after retries, so a re-run continues where this one stopped.

    Returns:
        Counts: devices created, updated, unchanged; keys set.
    """
    totals = {"created": 0, "updated": 0, "unchanged": 0, "keys": 0}
    for start in range(0, len(steps), max(1, batch)):
        if start:
            time.sleep(pause_s)  # ChirpStack's API and its database are shared with live traffic
        for step in steps[start:start + batch]:
            if step.device == "create":
                def create(record: DeviceRecord = step.record) -> None:
                    try:
                        api.create_device(record)
                    except ApiExists:
                        api.update_device(record)
                _retrying(create, attempts, pause_s)
                totals["created"] += 1
            elif step.device == "update":
                def update(record: DeviceRecord = step.record) -> None:
                    api.update_device(record)
                _retrying(update, attempts, pause_s)
                totals["updated"] += 1
            else:
                totals["unchanged"] += 1
            keys = step.row.keys()
            if keys is not None and step.keys in ("create", "update"):
                def set_keys(keys: DeviceKeys = keys, exists: bool = step.keys == "update") -> None:
                    try:
                        api.set_keys(keys, exists=exists)
                    except ApiExists:
                        api.set_keys(keys, exists=True)
                    except ApiNotFound:
                        if not exists:
                            raise
                        api.set_keys(keys, exists=False)
                _retrying(set_keys, attempts, pause_s)
                totals["keys"] += 1
            if on_done is not None:
                on_done(step)
    return totals
