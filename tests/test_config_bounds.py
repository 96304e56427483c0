"""Config bounds: numbers the protocols and the OS bound are range-checked; no credentials in api_url;
secret files readable by others are warned about by `edge validate`, `edge doctor` and `edge run`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from edge.cli import main
from edge.config import parse_config, secret_file_warnings
from tests.test_config import minimal, problems_of


def with_key(section: str, key: str, value: Any) -> dict[str, Any]:
    doc = minimal()
    table = doc["upstream"][0] if section == "upstream" else doc.setdefault(section, {})
    table[key] = value
    return doc


@pytest.mark.parametrize(("section", "key", "value", "expected"), [
    ("upstream", "url", "mqtt://broker.example.org:0", "upstream[0].url: port must be from 1 to 65535"),
    ("chirpstack", "mqtt_url", "mqtt://127.0.0.1:0", "chirpstack.mqtt_url: port must be from 1 to 65535"),
    ("upstream", "keepalive_s", 70000, "upstream[0].keepalive_s: must be 0 to 65535"),
    ("upstream", "max_inflight", 65536, "upstream[0].max_inflight: must be at most 65535"),
    ("upstream", "max_message_bytes", 2**28, "upstream[0].max_message_bytes: must be at most 268435455"),
    ("upstream", "qos", 3, "upstream[0].qos: must be 1 or 2"),
    ("upstream", "qos", True, "upstream[0].qos: must be a number, not a boolean"),
    ("upstream", "read_batch", 0, "upstream[0].read_batch: must be greater than 0"),
    ("upstream", "reconnect_min_s", float("nan"), "upstream[0].reconnect_min_s: must be a finite number"),
    ("upstream", "reconnect_max_s", float("inf"), "upstream[0].reconnect_max_s: must be a finite number"),
    ("upstream", "reconnect_max_s", 0.1, "upstream[0].reconnect_max_s: must be at least reconnect_min_s"),
    ("upstream", "command_max_age_s", 0, "upstream[0].command_max_age_s: must be greater than 0"),
    ("upstream", "command_max_per_hour", -1, "upstream[0].command_max_per_hour: must be greater than 0"),
    ("upstream", "topic", "lorawan/\u0000/{dev_eui}", "upstream[0].topic: control characters"),
    ("upstream", "link_topic", "lorawan/\n/{dev_eui}", "upstream[0].link_topic: control characters"),
    ("buffer", "max_size_mb", float("nan"), "buffer.max_size_mb: must be a finite number"),
    ("buffer", "batch_max", 0, "buffer.batch_max: must be greater than 0"),
    ("buffer", "batch_ms", 10**19, "buffer.batch_ms: must be at most"),
    ("web", "port", 65536, "web.port: must be 0 (off) or a TCP port up to 65535"),
    ("web", "stuck_after_s", 1e300, "web.stuck_after_s: must be at most"),
    ("chirpstack", "api_sync_interval_s", 2**62, "chirpstack.api_sync_interval_s: must be 0 (only at start) or more"),
    ("decoding", "js_memory_limit_mb", 2**40, "decoding.js_memory_limit_mb: must be at most 4095"),
    ("decoding", "js_time_limit_ms", 2**62, "decoding.js_time_limit_ms: must be at most"),
    ("edge", "id", "gw/#", "edge.id: use 1-128 letters"),
    ("edge", "id", "gw\u0000", "edge.id: use 1-128 letters"),
])
def test_config_bounds(section: str, key: str, value: Any, expected: str) -> None:
    problems = problems_of(with_key(section, key, value))
    assert any(p.startswith(expected) for p in problems), problems


def test_config_bounds_share_thin_s_is_finite() -> None:
    doc = minimal()
    doc["upstream"][0]["share"] = {"thin_s": float("inf")}
    assert "upstream[0].share.thin_s: must be a finite number" in problems_of(doc)


def test_config_bounds_http_backoff_order() -> None:
    doc = minimal()
    doc["http_upstream"] = [{"name": "ctx", "endpoint": "https://ctx.example.org/ngsi-ld/v1/entityOperations/upsert"
                                     "?options=update", "backoff_min_s": 30.0, "backoff_max_s": 5.0}]
    assert any(p.startswith("http_upstream[0].backoff_max_s: must be at least backoff_min_s")
               for p in problems_of(doc))


def test_config_bounds_limits_are_accepted() -> None:
    doc = minimal()
    doc["upstream"][0] |= {"keepalive_s": 65535, "max_inflight": 65535, "max_message_bytes": 268_435_455,
                           "url": "mqtt://broker.example.org:65535"}
    doc["edge"] = {"id": "gw-01.site_a"}
    parse_config(doc)


def test_config_api_url_with_credentials_is_refused_and_never_echoed(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("t\n")
    for url in ("https://admin:hunter2@chirpstack.example.org", "admin:hunter2@chirpstack.example.org:8080",
                "http://admin@chirpstack.example.org:8080"):
        doc = minimal()
        doc["chirpstack"] |= {"api_url": url, "api_token_file": str(token)}
        problems = problems_of(doc)
        assert "chirpstack.api_url: must not carry credentials (user:password@); use api_token_file" in problems
        assert not any("hunter2" in p or "admin" in p for p in problems)


@pytest.fixture
def secret_config(tmp_path: Path) -> Path:
    password, token, key = tmp_path / "city.pw", tmp_path / "web.token", tmp_path / "client.key"
    for path in (password, token, key):
        path.write_text("s3cret\n")
    password.chmod(0o644)
    token.chmod(0o640)
    key.chmod(0o600)
    config = tmp_path / "edge.toml"
    config.write_text(f"""
[chirpstack]
mqtt_url = "mqtt://127.0.0.1:1"

[buffer]
path = "{tmp_path / 'buffer.sqlite'}"

[web]
port = 0
token_file = "{token}"

[[upstream]]
name = "city"
url = "mqtts://127.0.0.1:2"
username = "edge"
password_file = "{password}"
cert_file = "{key}"
key_file = "{key}"
""")
    return config


def test_config_secret_files_readable_by_others_are_warned_about(secret_config: Path) -> None:
    from edge.config import load_config

    warnings = secret_file_warnings(load_config(secret_config))
    assert len(warnings) == 2, warnings
    assert any("upstream city: password_file" in w and "its group and all users" in w and "0644" in w
               for w in warnings)
    assert any("web.token_file" in w and "its group may read" in w and "0640" in w for w in warnings)
    result = CliRunner().invoke(main, ["validate", "-c", str(secret_config)], env={"EDGE_CONFIG": ""})
    assert result.exit_code == 0
    assert result.stderr.count("warning: ") == 2 and "chmod 600" in result.stderr
    doctor = CliRunner().invoke(main, ["doctor", "--json", "-c", str(secret_config)], env={"EDGE_CONFIG": ""})
    findings = [f for f in json.loads(doctor.stdout) if f["check"] == "secret files"]
    assert [f["status"] for f in findings] == ["WARN", "WARN"]
    for path in secret_config.parent.iterdir():
        if path.suffix in (".pw", ".token"):
            path.chmod(0o600)
    assert secret_file_warnings(load_config(secret_config)) == []


def test_config_secret_files_warning_at_run(secret_config: Path, tmp_path: Path) -> None:
    """`edge run` logs the same warning at start (it then retries its brokers; stopped at once here)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    log = tmp_path / "run.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "edge", "run", "-c", str(secret_config)], stdout=out,
                                stderr=subprocess.STDOUT, env=env, cwd=Path(__file__).resolve().parent.parent)
    try:
        end = time.monotonic() + 30
        while time.monotonic() < end and "web.token_file" not in log.read_text():
            time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(30)
    assert "WARNING edge: upstream city: password_file" in log.read_text()
    assert "WARNING edge: web.token_file" in log.read_text()
