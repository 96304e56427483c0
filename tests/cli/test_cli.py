"""The `edge` command line through click's CliRunner: help, validate (exit codes, --show) and status."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from edge.buffer.adapters import BufferBacklog
from edge.cli import main
from edge.config import load_config
from edge.decoding.builtin import builtin_decoders
from edge.pipeline import Pipeline
from edge.sources.chirpstack_mqtt import Message

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
EVENTS = FIXTURES / "events"
CHIRPSTACK = FIXTURES / "chirpstack"
SECRET = "s3cret-never-shown"
COMMANDS = ("run", "validate", "status", "simulate", "demo")

GOOD = """\
[edge]
id = "gw-cli"

[chirpstack]
mqtt_url = "mqtt://127.0.0.1:9"

[buffer]
path = "{buffer}"

[[upstream]]
name = "city"
url = "mqtts://broker.example.org:8883"
username = "gw-cli"
password_file = "{password_file}"
"""

BAD = """\
[edge]
id = "gw-cli"
colour = "blue"

[chirpstack]
mqtt_url = "http://127.0.0.1"

[[upstream]]
name = "city"
url = "mqtt://broker.example.org"
qos = 0
topic = "lorawan/{deveui}"
"""


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env={"EDGE_CONFIG": "", **(env or {})}, catch_exceptions=False)


@pytest.fixture
def good_config(tmp_path: Path) -> Path:
    password = tmp_path / "city.pw"
    password.write_text(SECRET + "\n")
    password.chmod(0o600)  # readable by others, `edge validate` would warn
    path = tmp_path / "edge.toml"
    path.write_text(GOOD.format(buffer=tmp_path / "buffer.sqlite", password_file=password))
    return path


@pytest.fixture
def bad_config(tmp_path: Path) -> Path:
    path = tmp_path / "bad.toml"
    path.write_text(BAD)
    return path


# -- help ----------------------------------------------------------------------------------------------

def test_cli_help_lists_commands_with_one_line_descriptions() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    listing = result.output.split("Commands:", 1)[1].splitlines()
    for name in COMMANDS:
        command = main.commands[name]
        first_line = (command.help or "").strip().splitlines()[0]
        (line,) = [ln for ln in listing if ln.split() and ln.split()[0] == name]
        description = line.strip()[len(name):].strip()
        assert description, name
        # click may shorten a long first line with "..." to fit the terminal; it is still that line.
        assert first_line.startswith(description.removesuffix("...").rstrip()), (name, description)
        assert first_line.endswith("."), name


@pytest.mark.parametrize("name", COMMANDS)
def test_cli_command_help(name: str) -> None:
    result = invoke(name, "--help")
    assert result.exit_code == 0
    first_line = (main.commands[name].help or "").strip().splitlines()[0]
    assert first_line in " ".join(result.output.split())


def test_cli_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0 and re.search(r"\d+\.\d+", result.output)


# -- validate ------------------------------------------------------------------------------------------

def test_cli_validate_good_config(good_config: Path) -> None:
    result = invoke("validate", "--config", str(good_config))
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{good_config}: OK (1 MQTT and 0 HTTP upstream(s))\n"
    assert result.stderr == ""


def test_cli_validate_bad_config_prints_every_problem(bad_config: Path) -> None:
    result = invoke("validate", "--config", str(bad_config))
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines and all(line.startswith("error: ") for line in lines)
    keys = [line.removeprefix("error: ").split(":")[0] for line in lines]
    assert sorted(keys) == sorted(["edge.colour", "chirpstack.mqtt_url", "upstream[0].topic", "upstream[0].qos"])


def test_cli_validate_config_from_environment(bad_config: Path, good_config: Path) -> None:
    assert invoke("validate", env={"EDGE_CONFIG": str(good_config)}).exit_code == 0
    assert invoke("validate", env={"EDGE_CONFIG": str(bad_config)}).exit_code == 2


def test_cli_validate_missing_file(tmp_path: Path) -> None:
    result = invoke("validate", "--config", str(tmp_path / "nope.toml"))
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {tmp_path / 'nope.toml'}: cannot read")


def test_cli_validate_invalid_toml(tmp_path: Path) -> None:
    path = tmp_path / "edge.toml"
    path.write_text("[chirpstack\n")
    result = invoke("validate", "--config", str(path))
    assert result.exit_code == 2
    assert "not valid TOML" in result.stderr and result.stderr.startswith("error: ")


def test_cli_validate_show_prints_json_without_secrets(good_config: Path, tmp_path: Path) -> None:
    result = invoke("validate", "--config", str(good_config), "--show")
    assert result.exit_code == 0
    assert SECRET not in result.output
    shown, end = json.JSONDecoder().raw_decode(result.stdout)
    assert result.stdout[end:].strip() == f"{good_config}: OK (1 MQTT and 0 HTTP upstream(s))"
    assert shown["edge_id"] == "gw-cli"
    up = shown["upstreams"][0]
    assert up["mqtt"]["password_file"] == str(tmp_path / "city.pw")
    assert up["mqtt"]["username"] == "gw-cli"
    assert "password" not in up["mqtt"]


# -- status --------------------------------------------------------------------------------------------

@pytest.fixture
def filled(good_config: Path) -> Iterator[Pipeline]:
    """A buffer filled through Pipeline.handle, with the upstream registered as its sink does on start."""
    cfg = load_config(good_config)
    pipeline = Pipeline(cfg, decoders=builtin_decoders())
    topic = "application/app/device/{}/event/{}"
    pipeline.handle([
        Message(topic.format("a81758fffe0346f1", "up"), (EVENTS / "v4_up_elsys_ers.json").read_bytes(), 1.0),
        Message(topic.format("0101010101010101", "up"), (CHIRPSTACK / "v4_up_no_object.docs.json").read_bytes(), 2.0),
        Message(topic.format("0101010101010101", "up"), (CHIRPSTACK / "v4_up_no_object.docs.json").read_bytes(), 2.5),
        Message(topic.format("0101010101010101", "join"), (CHIRPSTACK / "v4_join.docs.json").read_bytes(), 3.0),
        Message(topic.format("0101010101010101", "up"), b"\x00garbage", 4.0),
    ])
    backlog = BufferBacklog(pipeline.buffer, "city", cfg.upstreams[0].notice_topic, cfg.edge_id)
    backlog.advance(1, 1)  # the upstream delivered the first uplink
    yield pipeline
    pipeline.buffer.close()


def test_cli_status_text(good_config: Path, filled: Pipeline) -> None:
    result = invoke("status", "--config", str(good_config))  # while the writer is still open, as under `run`
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.startswith("edge gw-cli  buffer ")
    counters = next(line for line in out.splitlines() if line.startswith("counters: "))
    for pair in ("received=5", "duplicates=1", "decoded=1", "undecoded=1", "malformed=1", "events=1", "dropped=0"):
        assert pair in counters.split(), counters
    (city,) = [line for line in out.splitlines() if line.strip().startswith("city ")]
    assert re.search(r"backlog=1\b", city) and "delivered=1" in city and "dropped=0" in city
    (elsys,) = [line for line in out.splitlines() if "a81758fffe0346f1" in line]
    assert "school-room-101" in elsys and "fcnt=1234" in elsys and "rssi=-87 dBm" in elsys
    assert "decoded:elsys/ers" in elsys and "temperature=22.4 °C" in elsys and "humidity=41 %RH" in elsys
    (plain,) = [line for line in out.splitlines() if line.strip().startswith("0101010101010101")]
    assert "undecoded:-" in plain
    assert "device events:" in out and "join: devAddr=00189440" in out
    assert "malformed messages (newest):" in out
    assert "application/app/device/0101010101010101/event/up: neither JSON nor a valid UplinkEvent" in out


def test_cli_status_json(good_config: Path, filled: Pipeline) -> None:
    result = invoke("status", "--config", str(good_config), "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert set(data) == {"edge_id", "version", "generated_at", "buffer", "counters", "unmapped", "upstreams", "devices",
                         "events", "malformed", "quarantined", "service", "health"}
    assert data["unmapped"] == {}  # every field of these uplinks has a map
    assert data["edge_id"] == "gw-cli"
    assert data["quarantined"] == []  # uplinks a decoder hung on: tests/test_quarantine.py
    assert data["buffer"]["path"] == str(good_config.parent / "buffer.sqlite")
    assert data["buffer"]["used_bytes"] > 0 and data["buffer"]["max_bytes"] == 1024 * 1024 * 1024
    assert data["counters"]["received"] == 5 and data["counters"]["duplicates"] == 1
    (city,) = data["upstreams"]
    assert (city["name"], city["cursor"], city["backlog"], city["delivered"]) == ("city", 1, 1, 1)
    devices = {d["dev_eui"]: d for d in data["devices"]}
    assert set(devices) == {"a81758fffe0346f1", "0101010101010101"}
    elsys = devices["a81758fffe0346f1"]
    assert elsys["readings"][0] == {"n": "temperature", "u": "Cel", "v": 22.4}
    assert (elsys["decoder"], elsys["fcnt"], elsys["gateway_id"]) == ("elsys/ers", 1234, "acde48fffe000001")
    assert [e["kind"] for e in data["events"]] == ["join"]
    (bad,) = data["malformed"]
    assert bad["topic"].endswith("/event/up") and "payload" not in bad


def test_cli_status_shows_unmapped_fields_per_codec(good_config: Path, filled: Pipeline) -> None:
    topic = "application/app/device/0101010101010101/event/up"
    with_object = json.loads((CHIRPSTACK / "v4_up_with_object.serialised.json").read_text())
    with_object["deduplicationId"] = "9a0a3a5e-2b61-4c55-9a39-6f4b0e7c1d01"  # not a duplicate of the others
    filled.handle([Message(topic, json.dumps(with_object).encode(), 5.0)])
    data = json.loads(invoke("status", "--config", str(good_config), "--json").stdout)
    assert data["unmapped"] == {"object:chirpstack": 3}
    assert not any(name.startswith("unmapped:") for name in data["counters"])
    out = invoke("status", "--config", str(good_config)).stdout
    assert "unmapped fields (no field map yet, sent without a unit): object:chirpstack=3" in out


def test_cli_status_devices_limit(good_config: Path, filled: Pipeline) -> None:
    data = json.loads(invoke("status", "--config", str(good_config), "--json", "--devices", "1").stdout)
    assert len(data["devices"]) == 1


def test_cli_status_missing_buffer(good_config: Path) -> None:
    result = invoke("status", "--config", str(good_config))
    assert result.exit_code == 1
    assert result.stdout == ""
    buffer = good_config.parent / "buffer.sqlite"
    assert result.stderr == f"error: no buffer at {buffer} yet (has `edge run` started?)\n"
    assert not buffer.exists()  # status never creates the buffer


@pytest.mark.parametrize("args", [("shares", "explain", "--upstream", "city", "a81758fffe0346f1"),
                                  ("deadletter", "list"), ("deadletter", "replay", "--upstream", "city"),
                                  ("deadletter", "replay", "--upstream", "nowhere")])
def test_cli_sharing_commands_missing_buffer(good_config: Path, args: tuple[str, ...]) -> None:
    result = invoke(*args, "--config", str(good_config))
    buffer = good_config.parent / "buffer.sqlite"
    if args[-1] == "nowhere":
        assert result.exit_code == 2 and "is not an upstream" in result.stderr  # checked first
        return
    assert result.exit_code == 1
    assert result.stderr == f"error: no buffer at {buffer} yet (has `edge run` started?)\n"
    assert not buffer.exists()


def test_cli_status_bad_config(bad_config: Path) -> None:
    result = invoke("status", "--config", str(bad_config))
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ")


def test_cli_commands_are_click_commands() -> None:
    assert isinstance(main, click.Group)
    assert set(COMMANDS) <= set(main.commands)
