"""The codec catalogue index: import, list, selection in the registry, explain, doctor and downlink encoding."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner, Result

from edge.buffer.codec_index import CodecIndex
from edge.buffer.registry import CachedDevice, CachedProfile
from edge.cli import main
from edge.cli.devices import PROFILE_JS, explain
from edge.decoding.catalogue import CatalogueIndex, index_path
from edge.decoding.registry import PROFILE_JS as REGISTRY_PROFILE_JS
from edge.decoding.registry import DecoderRegistry, DeviceHints, Rule
from edge.model import DecodeStatus, DeviceInfo, RadioInfo, Uplink
from tests.grpc_server import FakeChirpStack
from tests.sources.test_chirpstack_grpc import PLAIN_PROFILE, api, eui, fleet

FIXTURES = Path(__file__).parents[1] / "fixtures" / "catalogues"
TTN_VALVE = "ttn:acme/valve-codec"
CS_METER = "chirpstack:acme/meter"
CS_MODERN = "chirpstack:acme/modern"


@pytest.fixture
def index(tmp_path: Path) -> Iterator[CatalogueIndex]:
    ix = CatalogueIndex(CodecIndex(tmp_path / "codecs.sqlite"))
    ix.import_path(FIXTURES / "ttn")
    ix.import_path(FIXTURES / "chirpstack")
    yield ix
    ix.close()


def uplink(profile_name: str = "", payload: bytes = b"\x01\x2a", tags: dict[str, str] | None = None) -> Uplink:
    return Uplink("u1", DeviceInfo("0000000000000001", device_profile_id="p1", device_profile_name=profile_name,
                                   tags=tags or {}), 1_700_000_000.0, 1, payload, RadioInfo())


# -- import and queries --------------------------------------------------------------------------


def test_import_reads_both_layouts(tmp_path: Path):
    ix = CatalogueIndex(CodecIndex(tmp_path / "codecs.sqlite"))
    ttn = ix.import_path(FIXTURES / "ttn")
    cs = ix.import_path(FIXTURES / "chirpstack" / "vendors")
    assert (ttn.catalogue, ttn.vendors, ttn.devices, ttn.firmware, ttn.codecs, ttn.profiles) == ("ttn", 1, 1, 2, 1, 0)
    assert (cs.catalogue, cs.vendors, cs.devices, cs.firmware, cs.codecs, cs.profiles) == \
        ("chirpstack", 1, 2, 3, 2, 2)
    assert ttn.problems == cs.problems == ()
    valve = ix.codec(TTN_VALVE)
    assert valve is not None and "decodeUplink" in valve.uplink_script and "encodeDownlink" in valve.downlink_script
    rows = {r["key"]: r for r in ix.codec_rows()}
    assert rows[CS_METER] == {"key": CS_METER, "uplink": True, "downlink": True, "devices": ["Water Meter M1"]}
    assert rows[CS_MODERN]["downlink"] is False
    assert [(p["id"], p["region"]) for p in ix.profile_templates()] == [("meter-EU868", "EU868"),
                                                                        ("meter-US915", "US915")]
    # Importing again replaces that catalogue's rows, nothing doubles.
    ix.import_path(FIXTURES / "ttn")
    assert {i["catalogue"]: i["codecs"] for i in ix.imports()} == {"chirpstack": 2, "ttn": 1}
    ix.close()


def test_import_refuses_other_folders(tmp_path: Path):
    from edge.errors import ConfigError

    with pytest.raises(ConfigError, match="neither the TTN device repository"):
        CatalogueIndex(CodecIndex(tmp_path / "codecs.sqlite")).import_path(tmp_path)


@pytest.mark.parametrize(("name", "pid", "device_tags", "profile_tags", "key", "reason"), [
    ("ACME Controls Water Meter M1 EU868", "", {}, {}, CS_METER, "profile's name 'ACME Controls Water Meter M1"),
    ("acme water-meter-m1", "", {}, {}, CS_METER, "ChirpStack device-profiles device (acme/meter, firmware 1.2)"),
    ("ACME Controls Valve One", "", {}, {}, TTN_VALVE, "TTN Device Repository device (acme/valve, firmware 1.1)"),
    ("Other", "", {}, {"vendor": "acme", "model": "Thermo T2"}, CS_MODERN, "profile's tags name acme Thermo T2"),
    ("ACME Controls Water Meter M1", "", {}, {"firmware": "1.0"}, CS_METER, "firmware 1.0"),
    ("Other", "", {"codec": TTN_VALVE}, {"codec": CS_METER}, TTN_VALVE, "The device has the tag codec="),
    ("Other", "", {}, {"codec": "ttn:acme/gone"}, "ttn:acme/gone", "does not hold it"),
    ("Other", "", {}, {}, None, ""),
    ("ACME Controls", "", {}, {}, None, ""),
])
def test_match(index: CatalogueIndex, name: str, pid: str, device_tags: dict[str, str],
               profile_tags: dict[str, str], key: str | None, reason: str):
    found = index.match(name, pid, device_tags, profile_tags)
    assert (found.key if found else None) == key
    if found:
        assert reason in found.why


# -- the registry --------------------------------------------------------------------------------


def test_registry_decodes_with_the_catalogue_codec(index: CatalogueIndex):
    registry = DecoderRegistry([], catalogue=index)
    up = uplink("ACME Controls Valve One EU868")
    assert registry.choose(up) == TTN_VALVE
    decoded = registry.decode(up)
    assert (decoded.status, decoded.decoder) == (DecodeStatus.DECODED, TTN_VALVE)
    # Without a field map every field goes out under its own key, strings too (nothing decoded is lost).
    assert {r.name: r.value for r in decoded.readings} == {"flow": 42, "no": "closed", "valve": "On"}
    decoder = registry.catalogue_decoder(TTN_VALVE)
    assert getattr(decoder, "codec_key", "") == TTN_VALVE


def test_registry_order_keeps_tags_rules_and_natives_first(index: CatalogueIndex):
    from edge.decoding.builtin.elsys import ElsysDecoder

    registry = DecoderRegistry([ElsysDecoder()], rules=[Rule("elsys/ers", dev_eui=frozenset({"00000000000000ff"}))],
                               catalogue=index)
    name = "ACME Controls Valve One"
    assert registry.choose(uplink(name, tags={"decoder": "elsys/ers"})) == "elsys/ers"
    assert registry.choose(uplink(name), DeviceHints(profile_tags={"decoder": "elsys/ers"})) == "elsys/ers"
    # An explicit codec tag beats a native decoder for the profile's name; a name match does not.
    assert registry.choose(uplink("Elsys ERS"), DeviceHints(tags={"codec": CS_METER})) == CS_METER
    assert registry.choose(uplink("Elsys ERS")) == "elsys/ers"
    # The catalogue comes before the profile's own copy of the script (same codec, known key).
    assert registry.choose(uplink(name), DeviceHints(profile_js="function decodeUplink(i) {}")) == TTN_VALVE
    assert registry.choose(uplink("Mine"), DeviceHints(profile_js="function decodeUplink(i) {}")) == \
        REGISTRY_PROFILE_JS


def test_a_codec_tag_without_an_index_fails_the_uplink_with_a_reason():
    registry = DecoderRegistry([])
    decoded = registry.decode(uplink(tags={"codec": TTN_VALVE}))
    assert (decoded.status, decoded.decoder) == (DecodeStatus.FAILED, TTN_VALVE)
    assert "no codec index (run `edge codecs import`)" in decoded.error
    assert registry.choose(uplink(tags={"codec": "lpp"})) == ""  # not a catalogue key: ignored


def test_registry_encodes_with_the_devices_codec(index: CatalogueIndex):
    registry = DecoderRegistry([], catalogue=index)
    codec, result = registry.encode(uplink("ACME Controls Valve One"), {"valve": "On"}, 1) or ("", None)
    assert codec == TTN_VALVE and result is not None
    assert (result.payload, result.fport, result.errors) == (b"\x01", 10, [])
    _, meter = registry.encode(uplink("ACME Controls Water Meter M1"), {"interval": 600}, 5) or ("", None)
    assert meter is not None and (meter.payload, meter.fport) == (bytes([1, 0x58, 2]), 5)
    assert registry.encode(uplink("ACME Controls Thermo T2"), {}, 1) is None  # no encodeDownlink


# -- explain, CLI, doctor, downlink --------------------------------------------------------------

NOW = 1_700_000_000.0


def test_explain_names_the_catalogue_codec_and_why(index: CatalogueIndex):
    registry = DecoderRegistry([], catalogue=index)
    device = CachedDevice("0000000000000001", "d1", "", "app-1", "prof-1", {}, {}, False, NOW)
    profile = CachedProfile("prof-1", "ACME Controls Water Meter M1 US915", "JS", "function decodeUplink(i) {}",
                            {}, NOW)
    chosen, why = explain("0000000000000001", device, profile, None, (), set(), catalogue=registry)
    assert chosen == CS_METER
    assert "Its device profile's name 'ACME Controls Water Meter M1 US915' names a ChirpStack device-profiles" \
           " device" in why and "decodes its uplinks with that codec" in why
    tagged = CachedDevice("0000000000000001", "d1", "", "app-1", "prof-1", {"codec": TTN_VALVE}, {}, False, NOW)
    chosen, why = explain("0000000000000001", tagged, profile, None, (), set(), catalogue=registry)
    assert (chosen, why.split(".")[0]) == (TTN_VALVE, f"The device has the tag codec={TTN_VALVE}")
    plain = CachedProfile("prof-1", "Mine", "JS", "function decodeUplink(i) {}", {}, NOW)
    assert explain("0000000000000001", device, plain, None, (), set(), catalogue=registry)[0] == PROFILE_JS


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
"""


@pytest.fixture
def env(tmp_path: Path) -> SimpleNamespace:
    config = tmp_path / "edge.toml"
    config.write_text(CONFIG.format(buffer=tmp_path / "buffer.sqlite"))
    token = tmp_path / "token"
    token.write_text("secret-token\n")
    return SimpleNamespace(config=config, token=token, buffer=tmp_path / "buffer.sqlite")


def cli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_codecs_import_and_list_cli(env: SimpleNamespace):
    assert cli("codecs", "list", "-c", str(env.config)).exit_code == 1
    done = cli("codecs", "import", "-c", str(env.config), str(FIXTURES / "chirpstack"))
    assert done.exit_code == 0, done.output
    assert "imported chirpstack from" in done.output and "2 devices, 3 firmware versions, 2 codecs, 2 device-profile" \
        " templates" in done.output
    assert index_path(env.buffer).exists() and not env.buffer.exists()  # the buffer itself is not created
    assert cli("codecs", "import", "-c", str(env.config), str(FIXTURES / "ttn")).exit_code == 0
    listed = cli("codecs", "list", "-c", str(env.config))
    lines = listed.output.splitlines()
    assert any(line.startswith(CS_METER) and "uplink+downlink" in line and "Water Meter M1" in line for line in lines)
    assert lines[-1] == "3 codecs"
    data = json.loads(cli("codecs", "list", "-c", str(env.config), "--json", "--catalogue", "ttn").output)
    assert [c["key"] for c in data["codecs"]] == [TTN_VALVE] and data["imports"][0]["catalogue"] == "ttn"
    templates = cli("codecs", "list", "-c", str(env.config), "--profiles").output
    assert "acme/meter-US915" in templates and templates.splitlines()[-1] == "2 profile templates"
    bad = CliRunner().invoke(main, ["codecs", "import", "-c", str(env.config), str(FIXTURES)])
    assert bad.exit_code == 1 and "neither the TTN device repository" in bad.output


@pytest.fixture
def server() -> Iterator[FakeChirpStack]:
    state = fleet(4)
    # Even devices use this profile: named as ChirpStack's template for the TTN fixture's valve.
    state.profiles[PLAIN_PROFILE] = api.DeviceProfile(id=PLAIN_PROFILE, name="ACME Controls Valve One EU868")
    fake = FakeChirpStack(state).start()
    yield fake
    fake.stop()


def test_downlink_json_is_encoded_by_the_devices_catalogue_codec(env: SimpleNamespace, server: FakeChirpStack):
    api_args = ["--api-url", server.url, "--token-file", str(env.token)]
    assert cli("codecs", "import", "-c", str(env.config), str(FIXTURES / "ttn")).exit_code == 0
    assert cli("devices", "sync", "-c", str(env.config), *api_args).exit_code == 0
    explained = cli("devices", "explain", "-c", str(env.config), eui(0))
    assert explained.output.splitlines()[0] == f"{eui(0)}: {TTN_VALVE}"
    result = cli("downlink", "-c", str(env.config), *api_args, eui(0), "--fport", "2", "--json", '{"valve": "On"}')
    assert result.exit_code == 0, result.output
    [seen] = server.state.enqueued
    assert (seen.f_port, seen.data, seen.object) == (10, b"\x01", {})  # bytes, not an object for ChirpStack
    assert f"encoded by {TTN_VALVE}: 01 on FPort 10" in result.output


def test_doctor_warns_about_a_codec_the_index_lacks(env: SimpleNamespace, server: FakeChirpStack):
    from edge.checks import Report
    from edge.cli.doctor_checks import check_codecs
    from edge.config import load_config

    server.state.profiles[PLAIN_PROFILE] = api.DeviceProfile(id=PLAIN_PROFILE, name="x",
                                                             tags={"codec": "chirpstack:acme/gone"})
    assert cli("devices", "sync", "-c", str(env.config), "--api-url", server.url, "--token-file",
               str(env.token)).exit_code == 0
    assert cli("codecs", "import", "-c", str(env.config), str(FIXTURES / "chirpstack")).exit_code == 0
    report = Report(None)
    check_codecs(report, load_config(env.config))
    warn = next(f for f in report.findings if f.status == "WARN")
    assert "2 device(s) name a catalogue codec the index" in warn.detail and "chirpstack:acme/gone" in warn.detail
    assert any(f.status == "OK" and "chirpstack 2 codecs" in f.detail for f in report.findings)
