"""Health checks of components for `edge doctor`: findings, the report collecting them, and the check registry.

Each kind of source or sink brings its own check, registered here by kind (the ChirpStack source as
"chirpstack", sinks by upstream type: "mqtt", "http"); doctor runs every registered check for each
configured component, so a new kind shows up in doctor without doctor knowing it. Built-in checks
are named by "module:attribute" and imported only when doctor runs, as the components' modules
import this one.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, cast

from edge.config import Config
from edge.model import Check

_T = TypeVar("_T")


class Report:
    """Collects findings and hands each to `on_finding` at once, so progress shows on a slow network."""

    def __init__(self, on_finding: Callable[[Check], None] | None) -> None:
        self.findings: list[Check] = []
        self.on_finding = on_finding
        # How late a live uplink arrived by its own time stamp, noted by a source's check that saw
        # one: the clock check compares it with the local clock.
        self.event_delay_s: float | None = None

    def add(self, check: str, status: str, detail: str, fix: str = "") -> None:
        """Record one finding (its fix is dropped when the status is OK)."""
        finding = Check(check, status, detail, fix if status != "OK" else "")
        self.findings.append(finding)
        if self.on_finding is not None:
            self.on_finding(finding)

    def run(self, checks: Generator[Check, None, _T]) -> _T:
        """Record each finding a component's check yields, as it comes; returns what the check returns."""
        while True:
            try:
                found = next(checks)
            except StopIteration as done:
                return cast(_T, done.value)
            self.add(found.check, found.status, found.detail, found.fix)


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


def _sink(kind: str, upstreams: Callable[[Config], Sequence[Any]], target: str) -> ComponentCheck:
    """A sink's own health check (edge.sinks.base.HealthCheck, named "module:function") run for each upstream."""

    def check(r: Report, ctx: Context, index: int) -> None:
        from edge.sinks.base import CheckContext, HealthCheck

        module, _, name = target.partition(":")
        own: HealthCheck[Any] = getattr(importlib.import_module(module), name)
        r.run(own(upstreams(ctx.cfg)[index], CheckContext(index, ctx.cfg.edge_id, ctx.publish_test)))

    return ComponentCheck(kind, lambda cfg: len(upstreams(cfg)), check)


# Doctor runs sources' checks before sinks', each role in this order. A sink kind names its own
# check (edge/sinks/<kind>_check.py) and which configured upstreams are of its kind.
_REGISTRY: dict[Role, dict[str, ComponentCheck | str]] = {
    "source": {"chirpstack": "edge.sources.chirpstack_check:CHECK"},
    "sink": {"mqtt": _sink("mqtt", lambda cfg: cfg.upstreams, "edge.sinks.mqtt_check:check"),
             "http": _sink("http", lambda cfg: cfg.http_upstreams, "edge.sinks.http_check:check")},
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
