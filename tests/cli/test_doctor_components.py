"""`edge doctor` runs each registered source's and sink's own check: a new kind shows up without editing doctor."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from edge.broker import free_port
from edge.checks import ComponentCheck, Context, Report, register, registered, unregister
from edge.cli.doctor import doctor


@pytest.fixture
def fake_components() -> Iterator[list[tuple[str, int]]]:
    """A fake source kind and a fake sink kind ("lora-pull", "kafka"), registered for the test only."""
    seen: list[tuple[str, int]] = []

    def source(r: Report, ctx: Context, index: int) -> None:
        seen.append(("lora-pull", index))
        r.add("lora-pull poll", "OK", f"answered for {ctx.cfg.edge_id}")

    def sink(r: Report, ctx: Context, index: int) -> None:
        seen.append(("kafka", index))
        r.add(f"upstream kafka-{index} broker", "WARN" if index else "OK", "reachable",
              "only said for WARN and FAIL")

    register("source", ComponentCheck("lora-pull", lambda cfg: 1, source))
    register("sink", ComponentCheck("kafka", lambda cfg: 2, sink))
    try:
        yield seen
    finally:
        unregister("source", "lora-pull")
        unregister("sink", "kafka")


def test_doctor_components_run_registered_checks_in_order(make_config, fake_components) -> None:
    # Nothing listens on these ports: the built-in checks fail fast, the fake ones still run.
    cfg = make_config(f"mqtt://127.0.0.1:{free_port()}", f"mqtt://127.0.0.1:{free_port()}")
    result = CliRunner().invoke(doctor, ["--config", str(cfg)], catch_exceptions=False)
    lines = result.output.splitlines()
    checks = [line[6:].split(":", 1)[0] for line in lines[:-1]]
    assert fake_components == [("lora-pull", 0), ("kafka", 0), ("kafka", 1)]
    assert "OK    lora-pull poll: answered for test" in lines
    assert "OK    upstream kafka-0 broker: reachable" in lines
    assert "WARN  upstream kafka-1 broker: reachable — fix: only said for WARN and FAIL" in lines
    # Sources after the config, sinks after the sources, the installation's own checks after both.
    order = [checks.index(c) for c in ("config", "chirpstack tcp", "lora-pull poll", "upstream city tcp",
                                       "upstream kafka-0 broker", "upstream kafka-1 broker", "disk", "service")]
    assert order == sorted(order), checks
    assert result.exit_code == 1  # the dead brokers


def test_doctor_components_builtin_kinds_are_registered() -> None:
    assert [c.kind for c in registered("source")] == ["chirpstack"]
    assert [c.kind for c in registered("sink")] == ["mqtt", "http"]
