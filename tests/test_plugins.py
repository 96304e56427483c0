"""Decoder plugins: entry-point discovery, allow/block lists, broken plugins, the public API, scaffolding."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import edge
from edge import hookspecs
from edge.cli import main
from edge.plugins import BUILTIN, load_decoders

PLUGIN = '''
from edge import DecodeResult, Field, hookimpl

class AcmeDecoder:
    id = "acme/th-1"
    aliases = ("acme/th-2",)
    fields = {"t": Field("temperature", "Cel")}

    def decode(self, payload, fport, context):
        return DecodeResult({"t": payload[0]})

@hookimpl
def edge_decoders():
    return [AcmeDecoder()]
'''


def _install_fake_dist(root: Path, dist: str, version: str, module: str, source: str) -> None:
    """A real distribution as importlib.metadata sees one: a dist-info folder plus the module."""
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[edge.decoders]\n{module} = {module}\n")
    (root / f"{module}.py").write_text(source)


@pytest.fixture
def plugin_path(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in ("acme_plugin", "broken_plugin"):
        sys.modules.pop(name, None)


def test_hook_edge_decoders_finds_entry_point_plugin(plugin_path):
    _install_fake_dist(plugin_path, "edge-decoder-acme", "1.2.3", "acme_plugin", PLUGIN)
    loaded = load_decoders()
    acme = [i for i in loaded.decoders if i.decoder.id == "acme/th-1"]
    assert len(acme) == 1 and acme[0].source == "edge-decoder-acme" and acme[0].version == "1.2.3"
    assert loaded.by_id()["acme/th-2"] is acme[0].decoder
    # Built-ins register through the same hook and come first.
    assert loaded.decoders[0].source == BUILTIN
    assert not loaded.problems


def test_plugins_broken_plugin_is_reported_and_skipped(plugin_path):
    _install_fake_dist(plugin_path, "edge-decoder-acme", "1.2.3", "acme_plugin", PLUGIN)
    _install_fake_dist(plugin_path, "edge-decoder-broken", "0.1", "broken_plugin", "raise ImportError('no numpy')")
    loaded = load_decoders()
    assert any("broken_plugin" in p and "no numpy" in p for p in loaded.problems)
    assert "acme/th-1" in loaded.by_id() and "elsys/ers" in loaded.by_id()


def test_plugins_plugin_failing_in_the_hook_is_reported_and_skipped(plugin_path):
    _install_fake_dist(plugin_path, "edge-decoder-acme", "1.2.3", "acme_plugin", PLUGIN)
    _install_fake_dist(plugin_path, "edge-decoder-broken", "0.1", "broken_plugin",
                       "from edge import hookimpl\n\n@hookimpl\ndef edge_decoders():\n"
                       "    raise RuntimeError('no sensor')\n")
    loaded = load_decoders()
    assert any("broken_plugin failed in edge_decoders(): RuntimeError: no sensor" in p for p in loaded.problems)
    assert "acme/th-1" in loaded.by_id() and "elsys/ers" in loaded.by_id()
    assert loaded.decoders[0].source == BUILTIN


def test_plugins_plugin_answering_none_is_reported(plugin_path):
    _install_fake_dist(plugin_path, "edge-decoder-broken", "0.1", "broken_plugin",
                       "from edge import hookimpl\n\n@hookimpl\ndef edge_decoders():\n    return None\n")
    loaded = load_decoders()
    assert any("failed in edge_decoders(): TypeError" in p for p in loaded.problems), loaded.problems
    assert "elsys/ers" in loaded.by_id()


def test_plugins_trace_logs_the_hook_call(monkeypatch, caplog):
    monkeypatch.setenv("EDGE_TRACE_PLUGINS", "1")
    with caplog.at_level(logging.INFO, logger="edge.plugins"):
        loaded = load_decoders(entry_points=False)
    traced = [m.split(":", 1)[1].strip() for m in caplog.messages if m.startswith("plugin trace:")]
    assert "edge_decoders [hook]" in traced, traced
    assert any(line.startswith("finish edge_decoders --> ") for line in traced), traced
    assert "elsys/ers" in loaded.by_id()


def test_plugins_every_hook_has_a_test():
    hooks = [name for name, value in vars(hookspecs).items() if hasattr(value, f"{hookspecs.PROJECT}_spec")]
    assert hooks == ["edge_decoders"]
    tests = [name for name in globals() if name.startswith("test_hook_")]
    assert [h for h in hooks if not any(t.startswith(f"test_hook_{h}") for t in tests)] == []


def test_plugins_block_and_allow_lists(plugin_path):
    _install_fake_dist(plugin_path, "edge-decoder-acme", "1.2.3", "acme_plugin", PLUGIN)
    assert "acme/th-1" not in load_decoders(block=["edge-decoder-acme"]).by_id()
    assert "acme/th-1" not in load_decoders(allow=["edge-decoder-other"]).by_id()
    assert "acme/th-1" in load_decoders(allow=["edge-decoder-acme"]).by_id()
    # Built-ins are never filtered out.
    assert "elsys/ers" in load_decoders(allow=["edge-decoder-other"]).by_id()


def test_plugins_cannot_replace_builtin_id(plugin_path):
    _install_fake_dist(plugin_path, "edge-decoder-evil", "1.0", "acme_plugin",
                       PLUGIN.replace('"acme/th-1"', '"elsys/ers"'))
    loaded = load_decoders()
    assert loaded.by_id()["elsys/ers"].__class__.__name__ == "ElsysDecoder"


def test_public_api_is_pinned():
    assert edge.__all__ == ["DecodeResult", "Decoder", "DeviceContext", "Field", "Reading", "hookimpl"]
    assert sorted(edge.__all__) == edge.__all__


def test_cli_decoders_list_shows_source_and_version(plugin_path):
    _install_fake_dist(plugin_path, "edge-decoder-acme", "1.2.3", "acme_plugin", PLUGIN)
    result = CliRunner().invoke(main, ["decoders", "list"])
    assert result.exit_code == 0
    assert "acme/th-1" in result.output and "edge-decoder-acme 1.2.3" in result.output
    assert "elsys/ers" in result.output and "builtin" in result.output


def _plugin_venv(root: Path) -> Path:
    """A real virtualenv that sees this interpreter's packages and this checkout's `edge` first."""
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True,
                   capture_output=True, timeout=120)
    python = venv / "bin" / "python"
    site_dir = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              check=True, capture_output=True, text=True).stdout.strip()
    # --system-site-packages reaches the base interpreter only; the test's own environment (pytest,
    # setuptools, lorawan-edge's dependencies) is added behind the venv's own site-packages.
    here = [p for p in sys.path if p.endswith("site-packages")]
    (Path(site_dir) / "zz_outer_env.pth").write_text(
        "".join(f"import site; site.addsitedir({p!r})\n" for p in here))
    return python


def _pip_install_editable(python: Path, package: Path, env: dict[str, str]) -> None:
    """`pip install -e`, offline when setuptools and wheel are at hand, else from the configured index."""
    offline = subprocess.run([str(python), "-c", "import setuptools, wheel"], env=env, capture_output=True)
    args = ["--no-build-isolation", "--no-index"] if offline.returncode == 0 else []
    run = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", *args, "-e", str(package)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr


def test_cli_decoders_new_scaffold_installs_and_passes_its_own_tests(tmp_path):
    result = CliRunner().invoke(main, ["decoders", "new", "acme-iot/th-2000", "--dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    root = tmp_path / "edge-decoder-acme-iot"
    assert (root / "pyproject.toml").read_text().count('[project.entry-points."edge.decoders"]') == 1
    assert (root / "examples" / "acme-iot" / "th-2000.yaml").is_file()

    python = _plugin_venv(tmp_path)
    checkout = str(Path(edge.__file__).resolve().parent.parent)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "EDGE_CONFIG")}
    env["PYTHONPATH"] = checkout  # the lorawan-edge under test, ahead of any installed copy
    _pip_install_editable(python, root, env)

    tests = subprocess.run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=root, env=env,
                           capture_output=True, text=True, timeout=120)
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "2 passed" in tests.stdout
    # Installed, the package is found through its entry point with its distribution and version...
    listed = subprocess.run([str(python), "-m", "edge", "decoders", "list"], cwd=root, env=env,
                            capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert re.search(r"^acme-iot/th-2000\s+edge-decoder-acme-iot 0\.1\.0$", listed.stdout, re.M), listed.stdout
    # ...and `--native` maps examples/<vendor>/<model>.yaml to it.
    native = subprocess.run([str(python), "-m", "edge", "decoders", "test", "--native", "examples"], cwd=root,
                            env=env, capture_output=True, text=True, timeout=60)
    assert native.returncode == 0, native.stdout + native.stderr
    assert native.stdout.strip().splitlines()[-1] == "3 passed, 0 failed"
    # A second scaffold into the same place refuses to overwrite it.
    again = CliRunner().invoke(main, ["decoders", "new", "acme-iot/th-2000", "--dir", str(tmp_path)])
    assert again.exit_code == 1 and "already exists" in again.output and again.exception is not None
    assert isinstance(again.exception, SystemExit)


def test_cli_decoders_list_applies_the_config(plugin_path, make_config):
    _install_fake_dist(plugin_path, "edge-decoder-acme", "1.2.3", "acme_plugin", PLUGIN)
    config = make_config("mqtt://127.0.0.1:1", "mqtt://127.0.0.1:2", extra=(
        '\n[decoding]\nplugins_block = ["edge-decoder-acme"]\n'
        f'codec_paths = ["{Path(__file__).parent / "decoding" / "js" / "codecs" / "elsys"}"]\n'))
    result = CliRunner().invoke(main, ["decoders", "list", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "acme/th-1" not in result.output
    assert "not loaded: edge-decoder-acme 1.2.3" in result.output
    assert re.search(r"^elsys/elsys-tlv-codec\s+js elsys/elsys-tlv\.js -$", result.output, re.M), result.output
    # Without a config file (the default path absent) every installed plugin is listed.
    result = CliRunner().invoke(main, ["decoders", "list", "--config", str(config.parent / "none.toml")])
    assert "acme/th-1" in result.output and "not loaded" not in result.output


def test_cli_decoders_new_rejects_bad_ids(tmp_path):
    result = CliRunner().invoke(main, ["decoders", "new", "Acme/TH 1", "--dir", str(tmp_path)])
    assert result.exit_code == 2


def test_cli_decoders_test_native_examples_pass():
    result = CliRunner().invoke(main, ["decoders", "test", "--native", "-q", "decoders"])
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1].endswith("passed, 0 failed")


def test_cli_decoders_test_wrong_decoder_fails_with_diff():
    result = CliRunner().invoke(main, ["decoders", "test", "--decoder", "elsys/ers", "decoders/dragino/lds02.yaml"])
    assert result.exit_code == 1
    assert "FAIL" in result.output and "--- expected" in result.output and "+++ actual" in result.output
    assert result.output.strip().splitlines()[-1] == "0 passed, 4 failed"


def test_cli_decoders_test_skips_unclaimed_codec_yaml(tmp_path):
    vendor = tmp_path / "nobody"
    vendor.mkdir()
    (vendor / "thing-codec.yaml").write_text(
        "uplinkDecoder:\n  examples:\n    - description: x\n      input: {fPort: 1, bytes: [1]}\n"
        "      output: {data: {a: 1}}\n")
    result = CliRunner().invoke(main, ["decoders", "test", "--native", str(tmp_path),
                                       "decoders/elsys"])
    assert "skip" in result.output
    lines = result.output.strip().splitlines()
    assert lines[-2] == "1 skipped (no native decoder declares their codec)"
    assert re.fullmatch(r"\d+ passed, 0 failed", lines[-1])
    assert result.exit_code == 0


def test_cli_decoders_test_unreadable_yaml_fails_without_traceback(tmp_path):
    (tmp_path / "broken.yaml").write_text("a: [1\n")
    (tmp_path / "list.yaml").write_text("- 1\n")
    (tmp_path / "bad-example.yaml").write_text(
        "uplinkDecoder:\n  examples:\n    - input: {fPort: 1, bytes: [300]}\n")
    result = CliRunner().invoke(main, ["decoders", "test", "--native", str(tmp_path), "decoders/dragino/lds02.yaml"])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 1
    assert "cannot read codec YAML" in result.output and "must be a mapping" in result.output
    assert "must be a list of integers 0-255" in result.output
    assert result.output.strip().splitlines()[-1] == "4 passed, 3 failed"


def test_cli_decoders_test_runs_the_yaml_js_codec_by_default():
    result = CliRunner().invoke(main, ["decoders", "test", "tests/decoding/js/codecs/elsys"])
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1].endswith("passed, 0 failed")


def test_cli_decoders_test_js_codec_that_cannot_load_fails():
    result = CliRunner().invoke(main, ["decoders", "test", "tests/decoding/js/codecs/acme/outside-codec.yaml"])
    assert result.exit_code == 1


def test_scaffold_installs_in_a_fresh_venv_as_its_readme_says(tmp_path):
    """The README's steps in a venv that sees nothing of this one: lorawan-edge from its checkout, then the plugin."""
    result = CliRunner().invoke(main, ["decoders", "new", "acme-iot/th-3000", "--dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    root = tmp_path / "edge-decoder-acme-iot"
    readme = (root / "README.md").read_text()
    checkout = str(Path(edge.__file__).resolve().parent.parent)
    assert f"pip install {checkout}\n" in readme and f"pip install {checkout}" in result.output
    venv = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=120)
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "EDGE_CONFIG", "VIRTUAL_ENV")}
    for step in ([str(python), "-m", "pip", "install", "-q", checkout],
                 [str(python), "-m", "pip", "install", "-q", "-e", ".[test]"]):
        run = subprocess.run(step, cwd=root, env=env, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stdout + run.stderr
    tests = subprocess.run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=root, env=env,
                           capture_output=True, text=True, timeout=300)
    assert tests.returncode == 0, tests.stdout + tests.stderr
