"""Health checks of components for `edge doctor`: findings, the report collecting them, and the check registry.

Each kind of source or sink brings its own check, registered here by kind (the ChirpStack source as
"chirpstack", sinks by upstream type: "mqtt", "http"); doctor runs every registered check for each
configured component, so a new kind shows up in doctor without doctor knowing it. Built-in checks
are named by "module:attribute" and imported only when doctor runs, as the components' modules
import this one.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from edge.config import Config


@dataclass(frozen=True)
class Finding:
    """The outcome of one check; `fix` is one line, given for WARN and FAIL only."""

    check: str
    status: str  # OK, WARN or FAIL
    detail: str
    fix: str = ""

    def line(self) -> str:
        """The human form: `STATUS  check: detail — fix: ...`."""
        text = f"{self.status:<4}  {self.check}: {self.detail}"
        return f"{text} — fix: {self.fix}" if self.fix else text


class Report:
    """Collects findings and hands each to `on_finding` at once, so progress shows on a slow network."""

    def __init__(self, on_finding: Callable[[Finding], None] | None) -> None:
        self.findings: list[Finding] = []
        self.on_finding = on_finding
        # How late a live uplink arrived by its own time stamp, noted by a source's check that saw
        # one: the clock check compares it with the local clock.
        self.event_delay_s: float | None = None

    def add(self, check: str, status: str, detail: str, fix: str = "") -> None:
        """Record one finding (its fix is dropped when the status is OK)."""
        finding = Finding(check, status, detail, fix if status != "OK" else "")
        self.findings.append(finding)
        if self.on_finding is not None:
            self.on_finding(finding)


def _unknown() -> float | None:
    return None


def _no_buffer() -> list[float] | None:
    return None


@dataclass(frozen=True)
class Context:
    """What a component's check gets besides the report: the config, doctor's options and buffer readers.

    The readers come from doctor, so that a source's or sink's check never opens the buffer itself.
    """

    cfg: Config
    publish_test: bool = False  # also send a test message upstream
    listen: float = 0.0  # seconds to wait for a live event (0: judge by the buffer's newest uplink)
    newest_uplink: Callable[[], float | None] = _unknown  # ChirpStack time of the newest buffered uplink
    # When each cached device was last synced; None without a buffer, EdgeError when it cannot be read.
    device_syncs: Callable[[], list[float] | None] = _no_buffer


@dataclass(frozen=True)
class ComponentCheck:
    """One kind of source or sink as doctor checks it.

    Attributes:
        kind: the source's name or the upstream type, e.g. "chirpstack", "mqtt".
        count: how many components of this kind the configuration has.
        check: checks the `index`-th of them, adding its findings to the report.
    """

    kind: str
    count: Callable[[Config], int]
    check: Callable[[Report, Context, int], None]


Role = Literal["source", "sink"]

# Doctor runs sources' checks before sinks', each role in this order. The sink entries point at
# the upstream probes still in doctor until they move next to their sinks (edge/sinks/*_check.py).
_REGISTRY: dict[Role, dict[str, ComponentCheck | str]] = {
    "source": {"chirpstack": "edge.sources.chirpstack_check:CHECK"},
    "sink": {"mqtt": "edge.cli.doctor:MQTT_UPSTREAM_CHECK", "http": "edge.cli.doctor:HTTP_UPSTREAM_CHECK"},
}


def register(role: Role, component: ComponentCheck) -> None:
    """Add (or replace) the check of a kind of source or sink; doctor runs it from then on."""
    _REGISTRY[role][component.kind] = component


def unregister(role: Role, kind: str) -> None:
    """Remove the check of a kind (nothing happens when there is none)."""
    _REGISTRY[role].pop(kind, None)


def registered(role: Role) -> list[ComponentCheck]:
    """Every check of a role, in registration order, built-in ones imported now."""
    out = []
    for kind, entry in list(_REGISTRY[role].items()):
        if isinstance(entry, str):
            module, _, name = entry.partition(":")
            entry = getattr(importlib.import_module(module), name)
            assert isinstance(entry, ComponentCheck), f"{module}:{name} is not a ComponentCheck"
            _REGISTRY[role][kind] = entry
        out.append(entry)
    return out


def duration(seconds: float) -> str:
    """An age as findings say it: `45 s`, `12 min`, `3.5 h`."""
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min" if seconds < 7200 else \
        f"{seconds / 3600:.1f} h"
