"""What a new technician trips on: an unwritable buffer folder, an unknown decoder, a missing --config, a typo."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from edge.cli import main
from tests.conftest import REPO

CONFIG = """\
[edge]
id = "tech"

[chirpstack]
mqtt_url = "mqtt://127.0.0.1:1"

[buffer]
path = "{buffer}"

[[upstream]]
name = "up"
url = "mqtt://127.0.0.1:2"
{extra}
"""


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), env={"EDGE_CONFIG": ""}, catch_exceptions=False)


@pytest.fixture
def read_only_folder(tmp_path: Path) -> Iterator[Path]:
    """A real read-only filesystem (root may write anywhere else, so a mode bit would prove nothing)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    folder = tmp_path / "ro"
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "edge-test-ro", str(folder)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


def write(tmp_path: Path, buffer: Path, extra: str = "") -> Path:
    path = tmp_path / "edge.toml"
    path.write_text(CONFIG.format(buffer=buffer, extra=extra))
    return path


def test_validate_doctor_and_run_refuse_an_unwritable_buffer_folder(tmp_path: Path, read_only_folder: Path) -> None:
    config = write(tmp_path, read_only_folder / "lib" / "buffer.db")
    result = invoke("validate", "-c", str(config))
    assert result.exit_code == 2
    assert "buffer.path:" in result.stderr and "is not writable" in result.stderr
    doctor = subprocess.run([sys.executable, "-m", "edge", "doctor", "-c", str(config)], cwd=REPO,
                            capture_output=True, text=True, timeout=120, check=False)
    assert "FAIL" in doctor.stdout and "not writable" in doctor.stdout
    assert "start the service; `edge run` creates it" not in doctor.stdout
    run = subprocess.run([sys.executable, "-m", "edge", "run", "-c", str(config)], cwd=REPO,
                         capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 1
    assert run.stderr.strip().count("\n") == 0, run.stderr  # one line, no traceback
    assert run.stderr.startswith("error: ") and "not writable" in run.stderr


def test_validate_refuses_a_rule_naming_a_decoder_that_is_not_installed(tmp_path: Path) -> None:
    extra = '[[decoding.rule]]\ndecoder = "acme/th-9000"\ndev_eui = ["0011223344556677"]\n'
    result = invoke("validate", "-c", str(write(tmp_path, tmp_path / "b.db", extra)))
    assert result.exit_code == 2
    assert "decoding.rule[0].decoder: no installed decoder has the id 'acme/th-9000'" in result.stderr


def test_validate_counts_http_upstreams_too(tmp_path: Path) -> None:
    extra = ('[[http_upstream]]\nname = "cb"\nendpoint = "http://127.0.0.1:1026/ngsi-ld/v1/entityOperations/upsert'
             '?options=update"\nformat = "ngsi-ld"\n')
    result = invoke("validate", "-c", str(write(tmp_path, tmp_path / "b.db", extra)))
    assert result.exit_code == 0, result.output
    assert result.stdout.endswith("OK (1 MQTT and 1 HTTP upstream(s))\n")


def test_unknown_key_suggests_the_known_one(tmp_path: Path) -> None:
    config = write(tmp_path, tmp_path / "b.db").read_text().replace("[buffer]\n", "[buffer]\nmax_size_bm = 10\n")
    (tmp_path / "typo.toml").write_text(config)
    result = invoke("validate", "-c", str(tmp_path / "typo.toml"))
    assert "buffer.max_size_bm: unknown key (did you mean 'max_size_mb'?)" in result.stderr


def test_a_command_without_config_says_how_to_give_one(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["status"], env={"EDGE_CONFIG": ""}, catch_exceptions=False)
    if Path("/etc/lorawan-edge/edge.toml").exists():
        pytest.skip("this machine has a gateway config")
    assert result.exit_code == 2
    assert "hint:" in result.stderr and "--config" in result.stderr
