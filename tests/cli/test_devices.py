"""`edge devices sync|list|explain` and `edge downlink` via CliRunner against a real gRPC server; explain order."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result

from edge.buffer import Batch, Buffer, NewUplink
from edge.buffer.registry import CachedApplication, CachedDevice, CachedProfile
from edge.cli import devices as devices_module
from edge.cli.devices import CHIRPSTACK, PROFILE_JS, UNDECODED, devices, explain
from edge.cli.downlink import downlink, wait_for_queue_item
from edge.config import load_config
from edge.decoding.registry import Rule
from edge.model import DecodeStatus, DeviceEvent, DeviceInfo, Uplink
from edge.sources.chirpstack_events import parse
from tests.grpc_server import FakeChirpStack
from tests.sources.test_chirpstack_grpc import APP, TENANT, eui, fleet

FIXTURE_UP = Path(__file__).resolve().parents[1] / "fixtures" / "chirpstack" / "v4_up_with_object.serialised.json"

CONFIG = """\
[edge]
id = "test"

[chirpstack]
mqtt_url = "mqtt://127.0.0.1:1883"

[buffer]
path = "{buffer}"

[[upstream]]
name = "up"
url = "mqtt://127.0.0.1:1884"

[[decoding.rule]]
decoder = "dragino/lht65"
dev_eui = ["{ruled}"]
"""


@click.group()
def cli() -> None:
    """The two entry points as the lead will register them."""


cli.add_command(devices)
cli.add_command(downlink)


@pytest.fixture
def server() -> Iterator[FakeChirpStack]:
    fake = FakeChirpStack(fleet(12)).start()
    yield fake
    fake.stop()


@pytest.fixture
def env(tmp_path: Path) -> SimpleNamespace:
    buffer = tmp_path / "buffer.sqlite"
    config = tmp_path / "edge.toml"
    config.write_text(CONFIG.format(buffer=buffer, ruled=eui(4)))
    token = tmp_path / "token"
    token.write_text("secret-token\n")
    return SimpleNamespace(config=config, buffer=buffer, token=token, tmp=tmp_path)


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def do_sync(env: SimpleNamespace, server: FakeChirpStack, *extra: str) -> Result:
    return run("devices", "sync", "-c", str(env.config), "--api-url", server.url, "--token-file", str(env.token),
               *extra)


# -- sync and list -----------------------------------------------------------------------------


def test_sync_then_list_with_server_stopped(env: SimpleNamespace, server: FakeChirpStack) -> None:
    result = do_sync(env, server)
    assert result.exit_code == 0, result.output
    assert result.output.startswith("synced 12 devices in 2 applications (2 device profiles)")
    server.stop()
    listed = run("devices", "list", "-c", str(env.config))
    assert listed.exit_code == 0, listed.output
    lines = listed.output.splitlines()
    assert len(lines) == 13 and lines[-1].startswith("12 devices, synced")
    line7 = next(line for line in lines if line.startswith(eui(7)))
    assert "Elsys ERS" in line7 and "codec=JS" in line7 and line7.endswith("disabled")
    data = json.loads(run("devices", "list", "-c", str(env.config), "--json").output)
    first = data["devices"][0]
    assert (first["dev_eui"], first["variables"], first["profile"], first["application"]) == (
        eui(0), {"serial": "0"}, "Plain", "app-a2a2")


def test_list_empty_cache_says_what_to_do(env: SimpleNamespace) -> None:
    Buffer(env.buffer).close()  # `edge run` has created the buffer, nothing was synced yet
    result = run("devices", "list", "-c", str(env.config))
    assert result.output.splitlines() == ["0 devices", "The cache is empty: run `edge devices sync` (needs"
                                          " [chirpstack] api_url and api_token_file)."]
    assert json.loads(run("devices", "list", "-c", str(env.config), "--json").output) == {"devices": []}


def test_list_without_cache_says_so(env: SimpleNamespace) -> None:
    result = CliRunner().invoke(cli, ["devices", "list", "-c", str(env.config)])
    assert result.exit_code == 1
    assert "no device cache" in result.output and "edge devices sync" in result.output


def test_sync_rejected_token(env: SimpleNamespace, server: FakeChirpStack) -> None:
    env.token.write_text("wrong")
    result = CliRunner().invoke(cli, ["devices", "sync", "-c", str(env.config), "--api-url", server.url,
                                      "--token-file", str(env.token)])
    assert result.exit_code == 1
    assert (f"error: ChirpStack at {server.url} rejected the token in {env.token} (InvalidToken): it is not an API"
            " key of this ChirpStack." in result.output)


def test_sync_failure_keeps_cache_and_is_clear(env: SimpleNamespace, server: FakeChirpStack) -> None:
    assert do_sync(env, server).exit_code == 0
    before = run("devices", "list", "-c", str(env.config), "--json").output
    server.stop()
    result = CliRunner().invoke(cli, ["devices", "sync", "-c", str(env.config), "--api-url", server.url,
                                      "--token-file", str(env.token), "--timeout", "1"])
    assert result.exit_code == 1
    assert f"error: ChirpStack API {server.url} unreachable" in result.output
    assert run("devices", "list", "-c", str(env.config), "--json").output == before


def test_sync_needs_api_settings(env: SimpleNamespace) -> None:
    result = CliRunner().invoke(cli, ["devices", "sync", "-c", str(env.config)])
    assert result.exit_code == 2
    assert "--api-url and --token-file" in result.output


def test_sync_reads_settings_from_config(env: SimpleNamespace, server: FakeChirpStack,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # config.py does not know the keys yet; stand in for a Config that has them.
    cfg = load_config(env.config)
    fake = SimpleNamespace(buffer=cfg.buffer, decoding=cfg.decoding, chirpstack=SimpleNamespace(
        api_url=server.url, api_token_file=str(env.token), tenant_id=TENANT, api_ca_file="", api_timeout_s=5.0))
    monkeypatch.setattr(devices_module, "_load", lambda path: fake)
    server.state.admin = False  # a tenant key: works only because tenant_id comes from the config
    result = run("devices", "sync", "-c", str(env.config))
    assert result.exit_code == 0, result.output
    assert "TenantService.List" not in server.state.calls


# -- explain -----------------------------------------------------------------------------------


def test_explain_cli_uses_cache_and_config(env: SimpleNamespace, server: FakeChirpStack) -> None:
    assert do_sync(env, server).exit_code == 0
    server.stop()
    odd = run("devices", "explain", "-c", str(env.config), eui(3).upper())
    assert odd.output.splitlines() == [f"{eui(3)}: elsys/ers", "  Device profile 'Elsys ERS' has the tag"
                                       " decoder=elsys/ers."]
    ruled = run("devices", "explain", "-c", str(env.config), eui(4))
    assert ruled.output.splitlines()[0] == f"{eui(4)}: dragino/lht65"
    assert "Config rule 1 matches its dev_eui" in ruled.output
    plain = run("devices", "explain", "-c", str(env.config), eui(2))
    assert plain.output.splitlines()[0] == f"{eui(2)}: {UNDECODED}"


def test_explain_cli_uses_last_uplink_when_not_cached(env: SimpleNamespace) -> None:
    doc = json.loads(FIXTURE_UP.read_text())
    doc["deviceInfo"]["tags"] = {"decoder": "cayenne/lpp"}
    topic = f"application/{doc['deviceInfo']['applicationId']}/device/0101010101010101/event/up"
    payload = json.dumps(doc).encode()
    uplink = parse(topic, payload, time.time())
    assert isinstance(uplink, Uplink)
    buf = Buffer(env.buffer)
    buf.append(Batch(uplinks=[NewUplink(uplink, topic, payload, time.time(), DecodeStatus.DECODED, "cayenne/lpp",
                                        "", [])]))
    buf.close()
    result = run("devices", "explain", "-c", str(env.config), "0101010101010101")
    assert result.output.splitlines() == [
        "0101010101010101: cayenne/lpp",
        "  The device's last uplink carried the tag decoder=cayenne/lpp (ChirpStack merges device-profile tags"
        " into it).",
    ]


NOW = 1_700_000_000.0
KNOWN = {"elsys/ers", "dragino/lht65", "cayenne/lpp"}


def cached(tags: dict[str, str] | None = None) -> CachedDevice:
    return CachedDevice("0000000000000001", "d1", "", "app-1", "prof-1", tags or {}, {}, False, NOW)


def profile(runtime: str = "NONE", script: str = "", tags: dict[str, str] | None = None) -> CachedProfile:
    return CachedProfile("prof-1", "TH sensor", runtime, script, tags or {}, NOW)


APPLICATION = CachedApplication("app-1", "tenant-1", "Parking", "", NOW)


def why(device: CachedDevice | None = None, prof: CachedProfile | None = None, rules: tuple[Rule, ...] = (),
        **kw: Any) -> tuple[str, str]:
    return explain("0000000000000001", device, prof, APPLICATION if device else None, rules, KNOWN, **kw)


@pytest.mark.parametrize(("args", "expected", "reason"), [
    ({"device": cached({"decoder": "elsys/ers"}), "prof": profile("JS", "x", {"decoder": "cayenne/lpp"}),
      "rules": (Rule("dragino/lht65", dev_eui=frozenset({"0000000000000001"})),)},
     "elsys/ers", "The device has the ChirpStack tag decoder=elsys/ers."),
    ({"device": cached({"decoder": "acme/nope"})},
     "acme/nope", "No decoder has the id 'acme/nope', so its uplinks fail to decode."),
    ({"uplink": DeviceInfo("0000000000000001", tags={"decoder": "cayenne/lpp"})},
     "cayenne/lpp", "last uplink carried the tag decoder=cayenne/lpp"),
    ({"device": cached(), "prof": profile(tags={"decoder": "cayenne/lpp"}),
      "uplink": DeviceInfo("0000000000000001", tags={"decoder": "cayenne/lpp"}),  # the profile's tag, merged
      "rules": (Rule("dragino/lht65", application=frozenset({"Parking"})),)},
     "dragino/lht65", "Config rule 1 matches its application 'Parking'."),
    ({"device": cached(), "prof": profile(),
      "rules": (Rule("x/y", dev_eui=frozenset({"ffffffffffffffff"})),
                Rule("dragino/lht65", device_profile=frozenset({"TH sensor"})))},
     "dragino/lht65", "Config rule 2 matches its device_profile 'TH sensor'."),
    ({"uplink": DeviceInfo("0000000000000001", application_id="app-9"),
      "rules": (Rule("elsys/ers", application=frozenset({"app-9"})),)},
     "elsys/ers", "Config rule 1 matches its application 'app-9'."),
    ({"device": cached(), "prof": profile("JS", "function decodeUplink(i) {}", {"site": "a"})},
     PROFILE_JS, "Device profile 'TH sensor' has a JavaScript codec; the gateway runs that same script."),
    ({"device": cached(), "prof": profile("JS", "function decodeUplink(i) {}", {"decoder": "elsys/ers"})},
     "elsys/ers", "Device profile 'TH sensor' has the tag decoder=elsys/ers."),
    ({"device": cached(), "prof": profile("CAYENNE_LPP")},
     CHIRPSTACK, "ChirpStack decodes it with Cayenne LPP (device profile 'TH sensor'); the readings come from"),
    ({"device": cached(), "prof": profile("JS", "  "), "uplink_had_object": True},
     CHIRPSTACK, "Its last uplink carried ChirpStack's decoded `object`"),
    ({"device": cached(), "prof": profile("CAYENNE_LPP"), "use_object": False},
     UNDECODED, "use_chirpstack_object is off"),
    ({"device": cached(), "prof": profile()},
     UNDECODED, "No tag, no rule and no codec: uplinks are stored undecoded (raw payload kept)."),
    ({}, UNDECODED, "The device is not in the cache (run `edge devices sync`)."),
    ({"device": cached({"kind": "elsys/ers"}), "tag": "kind"},
     "elsys/ers", "The device has the ChirpStack tag kind=elsys/ers."),
])
def test_explain_branches(args: dict[str, Any], expected: str, reason: str) -> None:
    chosen, sentence = why(**args)
    assert chosen == expected
    assert reason in sentence


# -- downlink ----------------------------------------------------------------------------------


def downlink_args(env: SimpleNamespace, server: FakeChirpStack, *extra: str) -> list[str]:
    # No config file: a downlink needs only the API options.
    return ["downlink", "-c", str(env.tmp / "absent.toml"), "--api-url", server.url, "--token-file",
            str(env.token), *extra]


def test_downlink_hex(env: SimpleNamespace, server: FakeChirpStack) -> None:
    result = run(*downlink_args(env, server, eui(5), "--fport", "10", "--hex", "01 ff:20", "--confirmed"))
    assert result.exit_code == 0, result.output
    [seen] = server.state.enqueued
    assert result.output == f"{seen.id}\n"
    assert (seen.dev_eui, seen.f_port, seen.data, seen.confirmed) == (eui(5), 10, b"\x01\xff\x20", True)


def test_downlink_json_object(env: SimpleNamespace, server: FakeChirpStack) -> None:
    result = run(*downlink_args(env, server, eui(5), "--fport", "2", "--json", '{"valve": "open"}'))
    assert result.exit_code == 0, result.output
    [seen] = server.state.enqueued
    assert result.output.strip() == seen.id
    assert (seen.f_port, seen.object, seen.data, seen.confirmed) == (2, {"valve": "open"}, b"", False)


@pytest.mark.parametrize(("extra", "message"), [
    (("--fport", "1"), "exactly one of --hex and --json"),
    (("--fport", "1", "--hex", "01", "--json", "{}"), "exactly one of --hex and --json"),
    (("--fport", "1", "--hex", "0g"), "not hexadecimal"),
    (("--fport", "1", "--json", "[1]"), "must be a JSON object"),
    (("--fport", "224", "--hex", "01"), "224 is not in the range 1<=x<=223"),
])
def test_downlink_bad_arguments(env: SimpleNamespace, server: FakeChirpStack, extra: tuple[str, ...],
                                message: str) -> None:
    result = CliRunner().invoke(cli, downlink_args(env, server, eui(5), *extra))
    assert result.exit_code == 2
    assert message in result.output
    assert server.state.enqueued == []


@pytest.mark.parametrize("bad", ["xyz", "70b3d5e75e00000", "70b3d5e75e0000011", "70b3d5e75e00000g"])
def test_downlink_and_explain_reject_a_malformed_dev_eui(env: SimpleNamespace, server: FakeChirpStack,
                                                         bad: str) -> None:
    result = CliRunner().invoke(cli, downlink_args(env, server, bad, "--fport", "1", "--hex", "01"))
    assert result.exit_code == 2
    assert f"{bad!r} is not a DevEUI (16 hexadecimal digits" in result.output
    explained = CliRunner().invoke(cli, ["devices", "explain", "-c", str(env.config), bad])
    assert explained.exit_code == 2 and "is not a DevEUI" in explained.output
    assert server.state.calls == []


def test_downlink_dev_eui_with_separators(env: SimpleNamespace, server: FakeChirpStack) -> None:
    dashed = "-".join(eui(5)[i:i + 2] for i in range(0, 16, 2)).upper()
    assert run(*downlink_args(env, server, dashed, "--fport", "1", "--hex", "01")).exit_code == 0
    assert server.state.enqueued[0].dev_eui == eui(5)


def test_downlink_unknown_device(env: SimpleNamespace, server: FakeChirpStack) -> None:
    result = CliRunner().invoke(cli, downlink_args(env, server, "ffffffffffffffff", "--fport", "1", "--hex", "01"))
    assert result.exit_code == 1
    assert "enqueue a downlink for ffffffffffffffff: not found" in result.output


def test_wait_for_queue_item(env: SimpleNamespace) -> None:
    queue_id = "5b3cc4b7-0b37-4a51-a6b8-7f3bd8f3a1c2"
    assert wait_for_queue_item(env.buffer, queue_id, 0.1, poll_s=0.02) is None  # no buffer yet
    buf = Buffer(env.buffer)

    def store(kind: str, summary: str) -> None:
        buf.append(Batch(events=[(DeviceEvent(kind, eui(5), APP, NOW, summary), "t", b"{}")]))

    store("txack", f"queueItemId={queue_id}0 acknowledged=None")  # a longer id must not match
    assert wait_for_queue_item(env.buffer, queue_id, 0.1, poll_s=0.02) is None
    timer = threading.Timer(0.1, store, ("txack", f"queueItemId={queue_id} acknowledged=None"))
    timer.start()
    got = wait_for_queue_item(env.buffer, queue_id, 5, poll_s=0.02)
    timer.join()
    assert got is not None and (got["kind"], got["dev_eui"]) == ("txack", eui(5))
    assert wait_for_queue_item(env.buffer, queue_id, 0.05, kinds=("ack",), poll_s=0.02) is None
    store("ack", f"queueItemId={queue_id} acknowledged=True")
    acked = wait_for_queue_item(env.buffer, queue_id, 1, kinds=("ack",))
    assert acked is not None and acked["summary"].endswith("acknowledged=True")
    buf.close()



def test_downlink_wait_reports_the_txack_that_edge_run_stored(env: SimpleNamespace, server: FakeChirpStack,
                                                              make_config: Any) -> None:
    """--wait polls the buffer for the txack event the pipeline stores from ChirpStack's MQTT events."""
    import json
    import threading
    import time

    from edge.config import load_config
    from edge.pipeline import Pipeline
    from edge.sources.chirpstack_mqtt import Message

    cfg_path = make_config("mqtt://127.0.0.1:1", "mqtt://127.0.0.1:2")
    pipeline = Pipeline(load_config(cfg_path))

    def chirpstack_confirms() -> None:
        while not server.state.enqueued:
            time.sleep(0.05)
        txack = json.loads((Path(__file__).parents[1] / "fixtures/chirpstack/v4_txack.docs.json").read_text())
        txack["queueItemId"] = server.state.enqueued[0].id
        topic = f"application/app/device/{eui(5)}/event/txack"
        pipeline.handle([Message(topic, json.dumps(txack).encode(), time.time())])

    helper = threading.Thread(target=chirpstack_confirms, daemon=True)
    helper.start()
    result = run("downlink", "-c", str(cfg_path), "--api-url", server.url, "--token-file", str(env.token),
                 eui(5), "--fport", "10", "--hex", "01", "--wait", "10")
    helper.join(5)
    assert result.exit_code == 0, result.output
    queue_id = server.state.enqueued[0].id
    assert result.output.splitlines() == [queue_id, f"txack: queueItemId={queue_id} acknowledged=None"]


def test_downlink_wait_times_out_clearly(env: SimpleNamespace, server: FakeChirpStack, make_config: Any) -> None:
    from edge.config import load_config
    from edge.pipeline import Pipeline

    cfg_path = make_config("mqtt://127.0.0.1:1", "mqtt://127.0.0.1:2")
    Pipeline(load_config(cfg_path)).buffer.close()  # the buffer exists, no event ever arrives
    result = run("downlink", "-c", str(cfg_path), "--api-url", server.url, "--token-file", str(env.token),
                 eui(5), "--fport", "10", "--hex", "01", "--wait", "0.5")
    assert result.exit_code == 1
    assert "no txack event" in result.output


def test_explain_ttn_repository_profile_gets_the_native_decoder() -> None:
    from edge.decoding.builtin import builtin_decoders
    from edge.decoding.registry import DecoderRegistry

    native = DecoderRegistry(builtin_decoders()).native_for_profile
    ttn_profile = CachedProfile("prof-1", "Elsys ERS", "JS", "function decodeUplink(i) {}", {}, NOW)
    chosen, sentence = why(cached(), ttn_profile, native=native)
    assert chosen == "elsys/ers" and "TTN Device Repository" in sentence
    # A profile of one's own keeps its JS codec.
    assert why(cached(), profile("JS", "function decodeUplink(i) {}"), native=native)[0] == "profile-js"


def test_downlink_wait_confirmed_not_acknowledged_fails(env: SimpleNamespace, server: FakeChirpStack,
                                                         make_config: Any) -> None:
    """--confirmed --wait: ChirpStack's ack event with acknowledged=false ends the wait with exit code 1."""
    from edge.config import load_config
    from edge.pipeline import Pipeline
    from edge.sources.chirpstack_mqtt import Message

    cfg_path = make_config("mqtt://127.0.0.1:1", "mqtt://127.0.0.1:2")
    pipeline = Pipeline(load_config(cfg_path))

    def device_stays_silent() -> None:
        while not server.state.enqueued:
            time.sleep(0.05)
        ack = json.loads((Path(__file__).parents[1] / "fixtures/chirpstack/v4_ack.docs.json").read_text())
        ack["queueItemId"], ack["acknowledged"] = server.state.enqueued[0].id, False
        pipeline.handle([Message(f"application/app/device/{eui(5)}/event/ack", json.dumps(ack).encode(),
                                 time.time())])

    helper = threading.Thread(target=device_stays_silent, daemon=True)
    helper.start()
    result = CliRunner().invoke(cli, ["downlink", "-c", str(cfg_path), "--api-url", server.url, "--token-file",
                                      str(env.token), eui(5), "--fport", "10", "--hex", "01", "--confirmed",
                                      "--wait", "10"])
    helper.join(5)
    queue_id = server.state.enqueued[0].id
    assert result.exit_code == 1
    assert f"ack: queueItemId={queue_id} acknowledged=False" in result.output
    assert f"the device did not acknowledge downlink {queue_id}" in result.output
