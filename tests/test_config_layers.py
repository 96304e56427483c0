"""Config layers: main file, then edge.d/*.toml in lexical order, then EDGE__* overrides; errors name their source."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.config import parse_config
from edge.config.layers import describe_sources, drop_in_dir, load_layers
from edge.errors import ConfigError

BASE = """\
[edge]
log_level = "info"

[chirpstack]
mqtt_url = "mqtt://127.0.0.1:1883"

[buffer]
path = "/var/lib/lorawan-edge/buffer.sqlite"

[decoding]
plugins_block = ["a", "b"]

[[decoding.rule]]
decoder = "elsys/ers"
device_profile = ["Elsys ERS"]

[[upstream]]
name = "city"
url = "mqtt://city.example:1883"
qos = 1

[upstream.share]
quantities = ["temperature"]

[[upstream]]
name = "open-data"
url = "mqtt://open.example:1883"
"""


@pytest.fixture(autouse=True)
def _no_edge_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Overrides set in the developer's shell must not leak into these tests."""
    import os

    for name in list(os.environ):
        if name.upper().startswith("EDGE__"):
            monkeypatch.delenv(name)


@pytest.fixture
def base(tmp_path: Path) -> Path:
    path = tmp_path / "edge.toml"
    path.write_text(BASE)
    return path


def drop_in(base: Path, name: str, text: str) -> Path:
    directory = base.parent / "edge.d"
    directory.mkdir(exist_ok=True)
    path = directory / name
    path.write_text(text)
    return path


def test_config_layers_drop_in_dir_naming() -> None:
    assert drop_in_dir("/etc/lorawan-edge/edge.toml") == Path("/etc/lorawan-edge/edge.d")
    assert drop_in_dir("edge") == Path("edge.d")
    assert drop_in_dir("/srv/site.conf.toml") == Path("/srv/site.conf.d")


def test_config_layers_main_file_alone_is_unchanged(base: Path) -> None:
    import tomllib

    assert load_layers(base) == tomllib.loads(BASE)
    assert describe_sources(base) == [str(base)]


def test_config_layers_drop_ins_merge_in_lexical_order(base: Path) -> None:
    drop_in(base, "50-site.toml", '[edge]\nid = "gw-50"\n[buffer]\nmax_size_mb = 512\n')
    drop_in(base, "10-common.toml", '[edge]\nid = "gw-10"\nlog_level = "debug"\n')
    drop_in(base, "90-local.toml", '[edge]\nid = "gw-90"\n')
    doc = load_layers(base)
    assert doc["edge"] == {"id": "gw-90", "log_level": "debug"}
    # Tables merge key by key: the base's buffer path survives the drop-in's size.
    assert doc["buffer"] == {"path": "/var/lib/lorawan-edge/buffer.sqlite", "max_size_mb": 512}
    assert describe_sources(base) == [
        str(base),
        f"{base.parent / 'edge.d' / '10-common.toml'}: edge.id, edge.log_level",
        f"{base.parent / 'edge.d' / '50-site.toml'}: edge.id, buffer.max_size_mb",
        f"{base.parent / 'edge.d' / '90-local.toml'}: edge.id",
    ]


def test_config_layers_skip_hidden_and_non_toml_files(base: Path) -> None:
    drop_in(base, ".50-site.toml.swp", "not toml at all [")
    drop_in(base, ".#50-site.toml", "not toml at all [")
    drop_in(base, "50-site.toml.dpkg-old", "not toml at all [")
    drop_in(base, "README.md", "# notes\n")
    assert load_layers(base)["edge"] == {"log_level": "info"}


def test_config_layers_arrays_replace(base: Path) -> None:
    drop_in(base, "50.toml", '[decoding]\nplugins_block = ["c"]\n')
    assert load_layers(base)["decoding"]["plugins_block"] == ["c"]


def test_config_layers_upstream_with_same_name_is_updated(base: Path) -> None:
    drop_in(base, "50-site.toml", '[[upstream]]\nname = "city"\nurl = "mqtts://city.example:8883"\n'
                                  '[upstream.share]\nradio = false\n')
    ups = load_layers(base)["upstream"]
    assert [u["name"] for u in ups] == ["city", "open-data"]
    assert ups[0] == {"name": "city", "url": "mqtts://city.example:8883", "qos": 1,
                      "share": {"quantities": ["temperature"], "radio": False}}
    assert ups[1] == {"name": "open-data", "url": "mqtt://open.example:1883"}
    assert describe_sources(base)[1].endswith(": upstream.city.url, upstream.city.share.radio")


def test_config_layers_upstream_with_new_name_is_appended(base: Path) -> None:
    drop_in(base, "60-extra.toml", '[[upstream]]\nname = "utility"\nurl = "mqtt://utility.example:1883"\n'
                                   '[[http_upstream]]\nname = "broker"\nendpoint = "https://ngsi.example/x"\n')
    doc = load_layers(base)
    assert [u["name"] for u in doc["upstream"]] == ["city", "open-data", "utility"]
    assert doc["http_upstream"] == [{"name": "broker", "endpoint": "https://ngsi.example/x"}]
    assert describe_sources(base)[1].endswith(": upstream.utility, http_upstream")


def test_config_layers_tables_without_name_are_appended(base: Path) -> None:
    drop_in(base, "50.toml", '[[decoding.rule]]\ndecoder = "acme/th-1"\ndev_eui = ["0011223344556677"]\n')
    rules = load_layers(base)["decoding"]["rule"]
    assert [r["decoder"] for r in rules] == ["elsys/ers", "acme/th-1"]


def test_config_layers_env_overrides_win_over_drop_ins(base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    drop_in(base, "50-site.toml", '[edge]\nid = "gw-file"\n[chirpstack]\nmqtt_url = "mqtt://10.0.0.1:1883"\n')
    monkeypatch.setenv("EDGE__EDGE__ID", "gw-env")
    monkeypatch.setenv("EDGE__CHIRPSTACK__MQTT_URL", "mqtts://chirpstack.local:8883")
    monkeypatch.setenv("EDGE__BUFFER__MAX_SIZE_MB", "2048")
    monkeypatch.setenv("edge__decoding__use_chirpstack_object", "false")  # names are case-insensitive
    monkeypatch.setenv("EDGE__DECODING__PLUGINS_BLOCK", '["x", "y"]')
    monkeypatch.setenv("EDGE_ID", "not-an-override")  # a single underscore is edge.config's own variable
    doc = load_layers(base)
    assert doc["edge"]["id"] == "gw-env"
    assert doc["chirpstack"]["mqtt_url"] == "mqtts://chirpstack.local:8883"
    assert doc["buffer"]["max_size_mb"] == 2048
    assert doc["decoding"]["use_chirpstack_object"] is False
    assert doc["decoding"]["plugins_block"] == ["x", "y"]
    sources = describe_sources(base)
    assert sources[2:] == ["EDGE__BUFFER__MAX_SIZE_MB: buffer.max_size_mb",
                           "EDGE__CHIRPSTACK__MQTT_URL: chirpstack.mqtt_url",
                           "EDGE__DECODING__PLUGINS_BLOCK: decoding.plugins_block",
                           "EDGE__EDGE__ID: edge.id",
                           "edge__decoding__use_chirpstack_object: decoding.use_chirpstack_object"]
    assert not any("gw-env" in s or "chirpstack.local" in s for s in sources), "values are never described"


def test_config_layers_env_creates_missing_tables(base: Path) -> None:
    doc = load_layers(base, {"EDGE__CHIRPSTACK__API_URL": "127.0.0.1:8080", "EDGE__HEALTH__PORT": "9000"})
    assert doc["chirpstack"]["api_url"] == "127.0.0.1:8080"
    assert doc["health"] == {"port": 9000}  # layered as asked; parse_config then calls it an unknown key


def test_config_layers_env_values_parse_as_toml_or_text(base: Path) -> None:
    env = {
        "EDGE__EDGE__ID": "0042",               # the files have no id: a TOML integer would lose its zeros...
        "EDGE__EDGE__LOG_LEVEL": "123",         # ...but where the files hold text, it stays text
        "EDGE__BUFFER__BATCH_MS": "45",
        "EDGE__BUFFER__MAX_SIZE_MB": "0.5",
        "EDGE__UPSTREAM__CITY__TOPIC": "city/{dev_eui}",
        "EDGE__UPSTREAM__CITY__CLIENT_ID": '"quoted"',
        "EDGE__UPSTREAM__OPEN_DATA__NOTICE_TOPIC": "2024-05-01",   # a TOML date: stays text
        "EDGE__UPSTREAM__OPEN_DATA__LINK_TOPIC": "",
        "EDGE__UPSTREAM__OPEN_DATA__USERNAME": '1\nurl = "mqtt://evil:1"',  # no key injection
    }
    doc = load_layers(base, env)
    assert doc["edge"] == {"log_level": "123", "id": "0042"}
    assert doc["buffer"]["batch_ms"] == 45
    assert doc["buffer"]["max_size_mb"] == 0.5
    city, open_data = doc["upstream"]
    assert city["topic"] == "city/{dev_eui}"
    assert city["client_id"] == "quoted"
    assert open_data["notice_topic"] == "2024-05-01"
    assert open_data["link_topic"] == ""
    assert open_data["username"] == '1\nurl = "mqtt://evil:1"'
    assert open_data["url"] == "mqtt://open.example:1883"


def test_config_layers_env_upstream_by_name(base: Path) -> None:
    # `open-data` is written OPEN_DATA: shells allow no '-' in variable names.
    doc = load_layers(base, {"EDGE__UPSTREAM__OPEN_DATA__URL": "mqtts://open.example:8883",
                             "EDGE__UPSTREAM__CITY__SHARE__RADIO": "false",
                             "EDGE__UPSTREAM__CITY__QOS": "2"})
    city, open_data = doc["upstream"]
    assert open_data["url"] == "mqtts://open.example:8883"
    assert city["qos"] == 2
    assert city["share"] == {"quantities": ["temperature"], "radio": False}
    assert describe_sources(base, {"EDGE__UPSTREAM__OPEN_DATA__URL": "x"})[1] == \
        "EDGE__UPSTREAM__OPEN_DATA__URL: upstream.open-data.url"


def test_config_layers_env_upstream_added_by_drop_in(base: Path) -> None:
    drop_in(base, "60.toml", '[[http_upstream]]\nname = "broker"\nendpoint = "https://a.example/x"\n')
    doc = load_layers(base, {"EDGE__HTTP_UPSTREAM__BROKER__ENDPOINT": "https://b.example/x"})
    assert doc["http_upstream"][0]["endpoint"] == "https://b.example/x"


@pytest.mark.parametrize(("var", "expected"), [
    ("EDGE__UPSTREAM__TOWN__URL", "EDGE__UPSTREAM__TOWN__URL: names no [[upstream]] entry 'town' "
                                  "(names: city, open-data)"),
    ("EDGE__HTTP_UPSTREAM__BROKER__ENDPOINT", "EDGE__HTTP_UPSTREAM__BROKER__ENDPOINT: names no [[http_upstream]]"
                                              " entry 'broker' (names: none)"),
    ("EDGE__UPSTREAM__CITY", "EDGE__UPSTREAM__CITY: name an entry and its key, e.g. EDGE__UPSTREAM__<NAME>__<KEY>"),
    ("EDGE__CHIRPSTACK", "EDGE__CHIRPSTACK: expected EDGE__<SECTION>__<KEY>, e.g. EDGE__CHIRPSTACK__MQTT_URL"),
    ("EDGE__CHIRPSTACK____URL", "EDGE__CHIRPSTACK____URL: expected EDGE__<SECTION>__<KEY>, "
                                "e.g. EDGE__CHIRPSTACK__MQTT_URL"),
    ("EDGE__UPSTREAM__CITY__SHARE", "EDGE__UPSTREAM__CITY__SHARE: upstream.city.share is a table;"
                                    " override one of its keys"),
    ("EDGE__CHIRPSTACK__MQTT_URL__HOST", "EDGE__CHIRPSTACK__MQTT_URL__HOST: chirpstack.mqtt_url is a str,"
                                         " not a table"),
])
def test_config_layers_env_errors_name_the_variable(base: Path, var: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_layers(base, {var: "x"})
    assert info.value.problems == [expected]


def test_config_layers_env_ambiguous_upstream_name(tmp_path: Path) -> None:
    path = tmp_path / "edge.toml"
    path.write_text('[[upstream]]\nname = "a-b"\n[[upstream]]\nname = "a_b"\n')
    with pytest.raises(ConfigError, match=r"EDGE__UPSTREAM__A_B__URL: names more than one \[\[upstream\]\] entry"):
        load_layers(path, {"EDGE__UPSTREAM__A_B__URL": "x"})


def test_config_layers_every_problem_is_reported(base: Path) -> None:
    bad = drop_in(base, "20-bad.toml", "[edge\nid = 1\n")
    clash = drop_in(base, "30-clash.toml", 'chirpstack = "mqtt://x"\n[buffer.path]\nfile = "x"\n')
    with pytest.raises(ConfigError) as info:
        load_layers(base, {"EDGE__UPSTREAM__NOPE__URL": "x"})
    first, *rest = info.value.problems
    assert first.startswith(f"{bad}: not valid TOML: ")
    assert rest == [
        f"{clash}: chirpstack: is a str here but a table in an earlier file",
        f"{clash}: buffer.path: is a table here but a str in an earlier file",
        "EDGE__UPSTREAM__NOPE__URL: names no [[upstream]] entry 'nope' (names: city, open-data)",
    ]


def test_config_layers_drop_in_dir_that_is_a_file(base: Path) -> None:
    (base.parent / "edge.d").write_text("")
    with pytest.raises(ConfigError, match=r"edge\.d: is not a directory"):
        load_layers(base)


def test_config_layers_main_file_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_layers(missing)
    assert info.value.problems[0].startswith(f"{missing}: cannot read")
    broken = tmp_path / "edge.toml"
    broken.write_text("[chirpstack\n")
    with pytest.raises(ConfigError) as info:
        load_layers(broken)
    assert info.value.problems[0].startswith(f"{broken}: not valid TOML")


def test_config_layers_result_passes_parse_config(base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    drop_in(base, "50-site.toml", '[edge]\nid = "gw-sundsvall-07"\n'
                                  '[[upstream]]\nname = "city"\nurl = "mqtts://city.example:8883"\n'
                                  '[[upstream]]\nname = "utility"\nurl = "mqtt://utility.example:1883"\n')
    monkeypatch.setenv("EDGE__UPSTREAM__OPEN_DATA__QOS", "2")
    monkeypatch.setenv("EDGE__BUFFER__PATH", str(base.parent / "buffer.sqlite"))
    cfg = parse_config(load_layers(base), str(base))
    assert cfg.edge_id == "gw-sundsvall-07"
    assert [(u.name, u.mqtt.url, u.qos) for u in cfg.upstreams] == [
        ("city", "mqtts://city.example:8883", 1),
        ("open-data", "mqtt://open.example:1883", 2),
        ("utility", "mqtt://utility.example:1883", 1),
    ]
    assert cfg.upstreams[0].share.quantities == ("temperature",)
    assert cfg.upstreams[0].mqtt.client_id == "lorawan-edge-gw-sundsvall-07-city"
    assert cfg.buffer.path == str(base.parent / "buffer.sqlite")
    assert [r.decoder for r in cfg.decoding.rules] == ["elsys/ers"]


def test_config_layers_used_by_load_config(base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`edge run`, `validate`, `status` and SIGHUP reloads read the layers through edge.config.load_config."""
    from edge.config import load_config

    drop_in(base, "50-site.toml", '[edge]\nid = "gw-from-drop-in"\n')
    monkeypatch.setenv("EDGE__UPSTREAM__CITY__QOS", "2")
    cfg = load_config(base)
    assert cfg.edge_id == "gw-from-drop-in"
    assert cfg.upstreams[0].qos == 2
    assert cfg.source_path == str(base)


def test_config_layers_shipped_example_with_readme_drop_ins(tmp_path: Path) -> None:
    """deploy/edge.toml.example plus the example drop-ins of deploy/edge.d/README.md validate together."""
    import re
    import shutil

    repo = Path(__file__).resolve().parents[1]
    readme = (repo / "deploy" / "edge.d" / "README.md").read_text()
    blocks = re.findall(r"```toml\n# (\S+\.toml)\n(.*?)```", readme, re.S)
    assert len(blocks) >= 2, "deploy/edge.d/README.md shows its example drop-ins in ```toml blocks named by a comment"
    main = tmp_path / "edge.toml"
    shutil.copy(repo / "deploy" / "edge.toml.example", main)
    for name, text in blocks:
        drop_in(main, name, text)
    cfg = parse_config(load_layers(main, {}), str(main))
    assert cfg.edge_id == "gw-sundsvall-07"
    assert len(describe_sources(main, {})) == 1 + len(blocks)
