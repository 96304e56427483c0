"""Each configured upstream brings its own health check (edge.sinks.checks), run without knowing the sink."""

from __future__ import annotations

from edge.broker import free_port
from edge.config import load_config
from edge.sinks.checks import health_checks


def test_every_upstream_has_its_own_health_check_in_config_order(make_config):
    closed = free_port()  # nothing listens there: each check stops after its failed TCP connect
    extra = f'\n[[http_upstream]]\nname = "context"\nendpoint = "http://127.0.0.1:{closed}/data"\n'
    cfg = load_config(make_config("mqtt://127.0.0.1:1883", f"mqtt://127.0.0.1:{closed}", extra=extra))
    found = [[(c.name, c.status) for c in checks] for checks in health_checks(cfg, publish_test=True)]
    assert found == [[("upstream city dns", "OK"), ("upstream city tcp", "FAIL")],
                     [("upstream context dns", "OK"), ("upstream context tcp", "FAIL")]]


def test_a_health_check_runs_only_when_iterated(make_config):
    cfg = load_config(make_config("mqtt://127.0.0.1:1883", f"mqtt://127.0.0.1:{free_port()}"))
    checks = list(health_checks(cfg))  # made, not run: nothing is resolved or connected yet
    assert len(checks) == 1
    first = next(checks[0])
    assert first.name == "upstream city dns" and first.status == "OK" and not first.fix
