"""Docs that tests keep true: the config example and reference, the vocabulary table, the README's CLI reference."""

from __future__ import annotations

import re
import tomllib
from dataclasses import MISSING
from pathlib import Path

from click.testing import CliRunner

from edge.cli import main
from edge.config import Config, load_config
from edge.config.reference import markdown, toml_value
from edge.config.tables import keys
from edge.vocabulary import markdown as vocabulary_markdown

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "deploy" / "edge.toml.example"
# Every TOML key, section-qualified ("upstream.share.devices"), generated from the schema.
SCHEMA = {key.name: key for key in keys(Config)}


def _example() -> dict[str, tuple[str, bool, str]]:
    """The keys deploy/edge.toml.example names: {"upstream.share.devices": ("[upstream.share]", commented, value)}.

    A table header counts commented out too ("# [[decoding.rule]]"); "## " lines are prose.
    """
    found: dict[str, tuple[str, bool, str]] = {}
    table = ""
    for line in EXAMPLE.read_text().splitlines():
        if header := re.fullmatch(r"#? ?(\[\[?([a-z_.]+)\]\]?)\s*", line):
            table = header.group(1)
        elif key := re.match(r"(#?) ?([a-z_]+)\s*=\s*(.*)", line):
            name = f"{table.strip('[]')}.{key.group(2)}"
            assert name not in found, f"deploy/edge.toml.example names {name} twice"
            found[name] = (table, key.group(1) == "#", key.group(3))
    return found


def test_docs_config_example_validates():
    cfg = load_config(EXAMPLE)
    assert cfg.upstreams[0].name == "city"


def test_docs_config_example_documents_every_key():
    documented = _example()
    missing = set(SCHEMA) - set(documented)
    assert not missing, f"deploy/edge.toml.example does not document: {sorted(missing)}"
    assert {"chirpstack.mqtt_url", "upstream.url", "edge.id", "edge.log_level"} <= set(documented)


def test_docs_config_example_names_only_keys_of_the_schema_in_their_tables():
    documented = _example()
    unknown = set(documented) - set(SCHEMA)
    assert not unknown, f"deploy/edge.toml.example names keys the schema lacks: {sorted(unknown)}"
    tables = {name: table for name, (table, _, _) in documented.items() if table != SCHEMA[name].table}
    assert not tables, f"deploy/edge.toml.example writes these tables otherwise than the schema: {tables}"


def test_docs_config_example_comments_out_the_defaults():
    """A commented-out `# key = value` shows the key's default (the example's own rule); a required key, any value."""
    wrong = {}
    for name, (_, commented, value) in _example().items():
        key = SCHEMA[name]
        if commented and key.default is not MISSING:
            shown = tomllib.loads(f"v = {value}")["v"]  # a trailing "# e.g. ..." is a TOML comment
            if shown != toml_value(key):
                wrong[name] = (shown, toml_value(key))
    assert not wrong, f"deploy/edge.toml.example: (shown, default) differ: {wrong}"


def test_docs_config_reference_is_generated():
    assert (REPO / "docs" / "config.md").read_text() == markdown(), \
        "run: python -m edge.config.reference > docs/config.md"


def test_docs_vocabulary_table_is_generated():
    assert (REPO / "docs" / "vocabulary.md").read_text() == vocabulary_markdown(), \
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
