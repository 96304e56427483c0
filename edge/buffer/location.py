"""Whether the buffer's file can be created and written where the config puts it (checked before opening it)."""

from __future__ import annotations

import os
from pathlib import Path


def problem(path: str | Path) -> str | None:
    """What stops this user from creating or writing the buffer at `path`, in one sentence; None when nothing does.

    SQLite also writes `-wal` and `-shm` files beside the database, so the folder itself must be
    writable, not only the file. Checked with access(2), i.e. for the user running the check: run
    `edge validate` as the service's user (systemd's ExecStartPre does) for the true answer.
    """
    target = Path(path)
    folder = target.parent
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent  # `edge run` creates missing folders below the first that exists
    if not existing.is_dir():
        return f"{existing} is not a folder, so the buffer {target} cannot be created there"
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "the buffer's folder" if existing == folder else f"{existing} (where its folder {folder} would go)"
        return (f"{what} is not writable by this user (uid {os.geteuid()}), so the buffer {target} cannot be"
                " written; fix the owner or mode, or point buffer.path elsewhere")
    if target.exists() and not os.access(target, os.R_OK | os.W_OK):
        return f"the buffer {target} exists but is not readable and writable by this user (uid {os.geteuid()})"
    return None
