"""Docs that tests keep true: the config example, the vocabulary table, the CLI reference in the README."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from click.testing import CliRunner

from edge import config as config_module
from edge.cli import main
from edge.config import load_config
from edge.vocabulary import markdown

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "deploy" / "edge.toml.example"


def _documented_keys() -> set[str]:
    keys = set()
    for line in EXAMPLE.read_text().splitlines():
        m = re.match(r"^#?\s*([a-z_]+)\s*=", line)
        if m:
            keys.add(m.group(1))
    return keys


def test_docs_config_example_validates():
    cfg = load_config(EXAMPLE)
    assert cfg.upstreams[0].name == "city"


def test_docs_config_example_documents_every_key():
    documented = _documented_keys()
    classes = [config_module.MqttEndpoint, config_module.ChirpStackConfig, config_module.DecodingConfig,
               config_module.BufferConfig, config_module.UpstreamConfig, config_module.ShareRules,
               config_module.HttpUpstreamConfig, config_module.NgsiLdConfig, config_module.WebConfig,
               config_module.HealthConfig, config_module.HealthIntervalRule, config_module.HealthBatteryRule]
    # Dataclass fields that are not TOML keys (nested tables or renamed ones).
    not_keys = {"mqtt", "rules", "url", "source_path", "upstreams", "chirpstack", "buffer", "decoding", "share",
                "ngsi_ld", "health", "intervals", "batteries"}
    missing = {f.name for cls in classes for f in dataclasses.fields(cls)} - not_keys - documented
    assert not missing, f"deploy/edge.toml.example does not document: {sorted(missing)}"
    assert {"mqtt_url", "url", "id", "log_level"} <= documented


def test_docs_vocabulary_table_is_generated():
    assert (REPO / "docs" / "vocabulary.md").read_text() == markdown(), \
        "run: python -m edge.vocabulary > docs/vocabulary.md"


def test_docs_every_cli_command_has_help_and_is_in_readme():
    readme = (REPO / "README.md").read_text()
    for name, command in main.commands.items():
        assert command.get_short_help_str(), f"`edge {name}` has no help text"
        assert f"edge {name}" in readme, f"README.md does not mention `edge {name}`"
    result = CliRunner().invoke(main, ["--help"])
    for name in main.commands:
        assert name in result.output


def test_docs_cli_help_lists_every_command_with_its_whole_first_line():
    """`edge --help` (and each group's) gives every command a full one-line description, never cut with "..."."""
    runner = CliRunner()
    groups = [([], main)] + [([name], cmd) for name, cmd in main.commands.items() if hasattr(cmd, "commands")]
    for args, group in groups:
        output = runner.invoke(main, [*args, "--help"], terminal_width=80).output
        listing = output.split("Commands:", 1)[1]
        assert "..." not in listing, f"`edge {' '.join(args)} --help` cuts a description short:\n{listing}"
        for name, command in group.commands.items():
            first = command.help.strip().split("\n\n", 1)[0].split()
            assert name in listing and " ".join(first) in " ".join(listing.split()), name


def test_docs_every_plugin_hook_is_documented_with_its_signature():
    """Each hook of edge/hookspecs.py appears as `name(params)` in decoders/CONTRIBUTING.md (datasette's check)."""
    import inspect

    from edge import hookspecs

    guide = (REPO / "decoders" / "CONTRIBUTING.md").read_text()
    hooks = [name for name, value in vars(hookspecs).items() if hasattr(value, f"{hookspecs.PROJECT}_spec")]
    assert hooks, "no hookspecs found"
    for name in hooks:
        call = f"`{name}({', '.join(inspect.signature(getattr(hookspecs, name)).parameters)})`"
        assert call in guide, f"decoders/CONTRIBUTING.md does not document the hook {call}"
