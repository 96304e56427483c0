"""deploy/install.sh, upgrade.sh and uninstall.sh in a throwaway root: install, run, upgrade, roll back, remove.

The lifecycle test pip-installs the checkout into a venv under a temporary --prefix (PyPI or the
configured pip index is needed; about a minute), so it is marked slow. Set EDGE_INSTALL_SOURCE to
a wheel or sdist to test a built artifact instead of the checkout.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import shutil
import signal
import sqlite3
import stat
import subprocess
import time
from contextlib import closing
from pathlib import Path

import pytest

from tests.conftest import Recorder

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
NAME = "lorawan-edge"


def script(name: str, *args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run deploy/<name> with sh (dash on Debian, as /bin/sh would) and return its output."""
    result = subprocess.run(["sh", str(DEPLOY / name), *map(str, args)], capture_output=True, text=True,
                            timeout=900, env=clean_env())
    if check:
        assert result.returncode == 0, f"{name} {args} failed:\n{result.stdout}\n{result.stderr}"
    return result


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without this checkout on the path and without EDGE overrides of the caller."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("EDGE_", "PYTHON", "VIRTUAL_ENV", "PYTEST"))}
    env.update(PYTHONUNBUFFERED="1", **extra)
    return env


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    """Mode, mtime and content of every file and link under root, the venvs' insides excepted."""
    out: dict[str, tuple[int, int, str]] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if rel.parts[:3] == ("opt", NAME, "venvs") and len(rel.parts) > 4:
            continue
        st = path.lstat()
        content = os.readlink(path) if path.is_symlink() else digest(path) if path.is_file() else ""
        out[str(rel)] = (st.st_mode, st.st_mtime_ns, content)
    return out


class Layout:
    """The paths of an install under a prefix."""

    def __init__(self, prefix: Path) -> None:
        self.prefix = prefix
        self.opt = prefix / "opt" / NAME
        self.venv = self.opt / "venv"
        self.edge = self.venv / "bin" / "edge"
        self.python = self.venv / "bin" / "python"
        self.etc = prefix / "etc" / NAME
        self.config = self.etc / "edge.toml"
        self.dropins = self.etc / "edge.d"
        self.defaults = prefix / "etc" / "default" / NAME
        self.state = prefix / "var" / "lib" / NAME
        self.buffer = self.state / "buffer.sqlite"
        self.unit = prefix / "etc" / "systemd" / "system" / f"{NAME}.service"

    def edge_cmd(self, *args: str | Path, env: dict[str, str] | None = None,
                 check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([str(self.edge), *map(str, args)], capture_output=True, text=True, timeout=120,
                                env=env or clean_env(), cwd=self.prefix)
        if check:
            assert result.returncode == 0, f"edge {args} failed:\n{result.stdout}\n{result.stderr}"
        return result

    def service_env(self) -> dict[str, str]:
        """What systemd's EnvironmentFile=-/etc/default/lorawan-edge gives the service (KEY=VALUE lines)."""
        env = clean_env()
        for line in self.defaults.read_text().splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                key, _, value = line.partition("=")
                env[key.strip()] = value.strip()
        return env

    def user_version(self) -> int:
        with closing(sqlite3.connect(self.buffer)) as db:
            return int(db.execute("PRAGMA user_version").fetchone()[0])


def run_briefly(layout: Layout, log: Path, *, until: str = "Connected to ChirpStack broker",
                simulate: str | None = None, received: Recorder | None = None) -> int:
    """`edge run` as the unit runs it, until `until` is logged (then a few uplinks, if asked); SIGTERM; exit code."""
    with log.open("ab") as out:
        proc = subprocess.Popen([str(layout.edge), "run", "--config", str(layout.config)], stdout=out,
                                stderr=subprocess.STDOUT, env=layout.service_env(), cwd=layout.prefix)
    try:
        end = time.monotonic() + 30
        while until.encode() not in log.read_bytes():
            assert proc.poll() is None, f"edge run exited with {proc.returncode}:\n{log.read_text()}"
            assert time.monotonic() < end, f"edge run never logged {until!r}:\n{log.read_text()}"
            time.sleep(0.1)
        if simulate is not None:
            result = layout.edge_cmd("simulate", "--url", simulate, "-n", "2", "--count", "5", "--rate", "0")
            assert "sent 5 uplinks" in result.stdout
        while received is not None and len(received.ids()) < 5 and time.monotonic() < end + 30:
            time.sleep(0.1)
        time.sleep(1)
        proc.send_signal(signal.SIGTERM)
        return proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_install_options_are_checked(tmp_path: Path) -> None:
    bad = script("install.sh", "--frobnicate", check=False)
    assert bad.returncode != 0 and "unknown option: --frobnicate" in bad.stderr
    missing = script("install.sh", "--prefix", tmp_path / "root", "--no-systemd", "--source",
                     tmp_path / "nope", check=False)
    assert missing.returncode != 0 and "does not exist" in missing.stderr
    assert not (tmp_path / "root" / "opt").exists()
    for name in ("install.sh", "upgrade.sh", "uninstall.sh"):
        assert "--prefix DIR" in script(name, "--help").stdout
    # Removing from an empty root is harmless.
    assert "removed the unit" in script("uninstall.sh", "--prefix", tmp_path, "--no-systemd").stdout


def test_install_unit_matches_the_installer(tmp_path: Path) -> None:
    """The unit runs what install.sh puts in place, with the EnvironmentFile the fleet overrides live in."""
    unit = (REPO / "systemd" / f"{NAME}.service").read_text()
    lines = {line.strip() for line in unit.splitlines()}
    for expected in (f"User={NAME}", f"Group={NAME}", f"StateDirectory={NAME}",
                     f"EnvironmentFile=-/etc/default/{NAME}",
                     f"ExecStartPre=/opt/{NAME}/venv/bin/edge validate --config /etc/{NAME}/edge.toml",
                     f"ExecStart=/opt/{NAME}/venv/bin/edge run --config /etc/{NAME}/edge.toml"):
        assert expected in lines, f"systemd/{NAME}.service lacks {expected!r}"
    if shutil.which("systemd-analyze"):
        copy = tmp_path / f"{NAME}.service"
        copy.write_text(unit)
        result = subprocess.run(["systemd-analyze", "verify", "--man=no", str(copy)], capture_output=True, text=True)
        assert "Unknown key" not in result.stderr + result.stdout, result.stderr


def test_install_package_data_covers_every_file_the_package_reads() -> None:
    """A wheel holds the status page's assets, field maps and the like: every non-Python file under edge/."""
    import tomllib

    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["edge"]
    shipped = {path for pattern in patterns for path in (REPO / "edge").glob(pattern)}
    needed = {path for path in (REPO / "edge").rglob("*")
              if path.is_file() and path.suffix not in (".py", ".pyc") and "__pycache__" not in path.parts}
    assert REPO / "edge" / "web" / "static" / "page.js" in needed
    assert needed <= shipped, sorted(str(p.relative_to(REPO)) for p in needed - shipped)


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="apt-get install -y shellcheck")
def test_install_scripts_are_shellcheck_clean() -> None:
    result = subprocess.run(["shellcheck", "--shell=sh", *(str(p) for p in sorted(DEPLOY.glob("*.sh")))],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


@pytest.mark.slow
@pytest.mark.mosquitto
def test_install_lifecycle(tmp_path: Path, broker_factory, recorder) -> None:
    source = os.environ.get("EDGE_INSTALL_SOURCE", str(REPO))
    prefix = tmp_path / "root"
    at = Layout(prefix)
    args = ("--prefix", prefix, "--no-systemd", "--no-user", "--source", source)
    had_user = _user_exists()

    # -- install ----------------------------------------------------------------------------------
    first = script("install.sh", *args)
    assert f"created {at.config} from the example" in first.stdout
    assert at.config.read_bytes() == (DEPLOY / "edge.toml.example").read_bytes()
    assert stat.S_IMODE(at.config.stat().st_mode) == 0o640
    assert stat.S_IMODE(at.etc.stat().st_mode) == 0o750 and at.dropins.is_dir()
    assert stat.S_IMODE(at.state.stat().st_mode) == 0o700
    assert at.unit.read_bytes() == (REPO / "systemd" / f"{NAME}.service").read_bytes(), "the unit is shipped as is"
    assert "EDGE__EDGE__ID" in at.defaults.read_text()
    assert at.venv.is_symlink() and os.readlink(at.venv).startswith("venvs/")
    assert (at.opt / "edge.toml.example").exists() and (at.dropins / "README.md").exists()
    assert _user_exists() == had_user, "--no-user created no user on this machine"
    imported = subprocess.run([str(at.python), "-c", "import edge; print(edge.__file__)"], capture_output=True,
                              text=True, env=clean_env(), cwd=prefix, check=True).stdout
    assert imported.startswith(f"{at.opt}/"), f"edge comes from the venv, not the checkout: {imported}"
    at.edge_cmd("validate", "--config", at.config)

    # -- the operator's edits: brokers and buffer in edge.toml, this gateway's values as a fleet
    # would roll them out: a drop-in and an override in the EnvironmentFile.
    chirpstack, upstream = broker_factory(), broker_factory()
    text = at.config.read_text()
    for old, new in (('mqtt_url = "mqtt://127.0.0.1:1883"', f'mqtt_url = "{chirpstack.url}"'),
                     ('path = "/var/lib/lorawan-edge/buffer.sqlite"', f'path = "{at.buffer}"')):
        assert old in text
        text = text.replace(old, new)
    at.config.write_text(text + "## Edited by the operator.\n")
    (at.dropins / "50-site.toml").write_text('[edge]\nid = "gw-install-test"\n')
    with at.defaults.open("a") as f:
        f.write(f"EDGE__UPSTREAM__CITY__URL={upstream.url}\n")
    edited = {p: digest(p) for p in (at.config, at.dropins / "50-site.toml", at.defaults)}
    shown = at.edge_cmd("validate", "--config", at.config, env=at.service_env())
    assert "OK (1 MQTT and 0 HTTP upstream(s))" in shown.stdout

    # -- a short run: uplinks from "ChirpStack" reach the upstream set by the environment override
    received = recorder(upstream)
    assert run_briefly(at, tmp_path / "run1.log", simulate=chirpstack.url, received=received) == 0
    # The upstream URL comes only from EDGE__UPSTREAM__CITY__URL: edge.config.load_config must layer.
    assert len(received.ids()) == 5, (tmp_path / "run1.log").read_text()
    status = json.loads(at.edge_cmd("status", "--config", at.config, "--json", "--devices", "0",
                                    env=at.service_env()).stdout)
    assert status["edge_id"] == "gw-install-test"
    assert status["counters"]["received"] == 5
    (city,) = status["upstreams"]
    assert (city["name"], city["backlog"], city["delivered"]) == ("city", 0, 5)

    # -- install again: nothing changes (config, drop-ins, venv, unit, buffer)
    before = snapshot(prefix)
    again = script("install.sh", *args)
    assert "already installed" in again.stdout and f"keeping {at.config}" in again.stdout
    assert snapshot(prefix) == before

    # -- upgrade: a buffer as an older release left it (schema v1, one stored message) must be
    # kept byte for byte by the upgrade and migrated by the next start.
    first_venv = os.readlink(at.venv)
    for leftover in at.state.glob("buffer.sqlite*"):
        leftover.unlink()
    make_v1 = ("import sqlite3, sys\n"
               "from edge.buffer.migrations import MIGRATIONS\n"
               "db = sqlite3.connect(sys.argv[1])\n"
               "db.executescript(MIGRATIONS[0]() + 'PRAGMA user_version = 1;')\n"
               "db.execute(\"INSERT INTO malformed(received, topic, error, payload)\"\n"
               "           \" VALUES (1, 'old/topic', 'x', x'00')\")\n"
               "db.commit()\n"
               "print(len(MIGRATIONS))\n")
    newest = int(subprocess.run([str(at.python), "-c", make_v1, str(at.buffer)], capture_output=True, text=True,
                                env=clean_env(), cwd=prefix, check=True).stdout)
    assert newest > 1 and at.user_version() == 1
    buffer_before = digest(at.buffer)
    # A configuration the new version refuses stops the upgrade before anything is replaced.
    broken = at.dropins / "90-broken.toml"
    broken.write_text("[buffer]\nmax_size_mb = -1\n")
    refused = script("upgrade.sh", *args, check=False)
    assert refused.returncode != 0 and "does not validate with the new version: nothing was replaced" in refused.stderr
    assert "buffer.max_size_mb: must be greater than 0" in refused.stderr
    assert os.readlink(at.venv) == first_venv and [p.name for p in (at.opt / "venvs").iterdir()] == [first_venv[6:]]
    broken.unlink()
    upgraded = script("upgrade.sh", *args)
    assert "installed edge, version" in upgraded.stdout
    assert os.readlink(at.venv) != first_venv
    assert (at.opt / first_venv).is_dir(), "the replaced venv is kept for --rollback"
    assert {p: digest(p) for p in edited} == edited, "config, drop-in and environment file kept byte for byte"
    assert digest(at.buffer) == buffer_before
    assert at.user_version() == 1, "the upgrade itself does not touch the buffer"
    assert run_briefly(at, tmp_path / "run2.log") == 0
    assert at.user_version() == newest
    with closing(sqlite3.connect(at.buffer)) as db:
        assert db.execute("SELECT topic FROM malformed").fetchall() == [("old/topic",)]

    # -- rollback: back to the first venv, which validates the same config
    rolled = script("install.sh", *args[:-2], "--rollback")
    assert "rolled back to edge, version" in rolled.stdout
    assert os.readlink(at.venv) == first_venv

    # -- uninstall keeps configuration and data; --purge removes them
    script("uninstall.sh", "--prefix", prefix, "--no-systemd")
    assert not at.opt.exists() and not at.unit.exists()
    assert {p: digest(p) for p in edited} == edited
    assert at.buffer.exists()
    purged = script("uninstall.sh", "--prefix", prefix, "--no-systemd", "--purge")
    assert "purged" in purged.stdout
    assert not at.etc.exists() and not at.state.exists() and not at.defaults.exists()
    assert _user_exists() == had_user


def _user_exists() -> bool:
    try:
        pwd.getpwnam(NAME)
    except KeyError:
        return False
    return True
