"""Configuration: a valid file loads; every problem is reported at once with its exact key; no secret leaks."""

from __future__ import annotations

import copy
import json
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edge.config import Config, describe, load_config, parse_config
from edge.errors import ConfigError

CONFIGS = Path(__file__).resolve().parent / "fixtures" / "config"
SECRET = "hunter2-do-not-print"


def minimal() -> dict[str, Any]:
    doc: dict[str, Any] = tomllib.loads((CONFIGS / "minimal.toml").read_text())
    return doc


def problems_of(doc: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(doc)
    assert str(info.value) == "; ".join(info.value.problems)
    return info.value.problems


@pytest.fixture
def files(tmp_path: Path) -> Path:
    """Existing credential and TLS files in tmp_path."""
    for name in ("ca.pem", "client.pem", "client.key"):
        (tmp_path / name).write_text(f"-----BEGIN {name}-----\n")
    for name in ("chirpstack.pw", "city.pw"):
        (tmp_path / name).write_text(SECRET + "\n")
    return tmp_path


def full_config(files: Path) -> Path:
    path = files / "edge.toml"
    path.write_text((CONFIGS / "full.toml").read_text().replace("@DIR@", str(files)))
    return path


# -- valid configurations ---------------------------------------------------------------------------

def test_config_minimal_is_valid_with_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_ID", "gw-env")
    cfg = load_config(CONFIGS / "minimal.toml")
    assert isinstance(cfg, Config)
    assert cfg.edge_id == "gw-env"
    assert cfg.source_path == str(CONFIGS / "minimal.toml")
    assert cfg.log_level == "info"
    cs = cfg.chirpstack
    assert (cs.mqtt.host, cs.mqtt.port, cs.mqtt.tls) == ("127.0.0.1", 1883, False)
    assert cs.mqtt.client_id == "lorawan-edge-gw-env"
    assert cs.topic == "application/+/device/+/event/+"
    assert cfg.buffer.path == "/var/lib/lorawan-edge/buffer.sqlite"
    assert cfg.decoding.use_chirpstack_object is True and cfg.decoding.tag == "decoder"
    (up,) = cfg.upstreams
    assert (up.name, up.format, up.qos) == ("city", "senml+json", 1)
    assert (up.topic, up.link_topic) == ("lorawan/{dev_eui}", "lorawan/{dev_eui}/link")
    assert up.mqtt.client_id == "lorawan-edge-gw-env-city"
    assert up.mqtt.password() is None


def test_config_full_file_every_section(files: Path) -> None:
    cfg = load_config(full_config(files))
    assert cfg.edge_id == "gw-01"
    assert cfg.log_level == "debug"
    cs = cfg.chirpstack.mqtt
    assert (cs.host, cs.port, cs.tls, cs.protocol) == ("chirpstack.local", 8883, True, "3.1.1")
    assert cs.client_id == "edge-gw-01"
    assert cs.reconnect_min_s == 1.0 and isinstance(cs.reconnect_min_s, float)
    assert cs.password() == SECRET
    assert cfg.chirpstack.session_expiry_s == 86400
    assert cfg.decoding.use_chirpstack_object is False
    assert cfg.decoding.tag == "codec"
    r0, r1 = cfg.decoding.rules
    assert (r0.decoder, r0.dev_eui) == ("elsys/ers", ("a81758fffe0346f1",))  # lower-cased
    assert (r1.decoder, r1.device_profile) == ("dragino/lht65", ("Dragino LHT65",))  # one string -> tuple
    assert (cfg.buffer.max_size_mb, cfg.buffer.batch_max, cfg.buffer.batch_ms) == (64.0, 100, 50)
    city, backup = cfg.upstreams
    assert (city.format, city.qos, city.link_topic, city.max_message_bytes) == ("senml+cbor", 2, "", 4096)
    assert city.mqtt.key_file.endswith("client.key")
    assert backup.name == "backup_2" and backup.mqtt.port == 1883


# -- every validation path reports its key ----------------------------------------------------------

Patch = Callable[[dict[str, Any], Path], None]


def _resolve(value: Any, d: Path) -> Any:
    """Values may be functions of the test's directory (paths of existing files)."""
    if callable(value):
        return value(d)
    if isinstance(value, dict):
        return {k: _resolve(v, d) for k, v in value.items()}
    return value


def _set(path: str, value: Any) -> Patch:
    """Set a dotted path ('upstream.0.qos') in the document; missing tables are created."""

    def patch(doc: dict[str, Any], d: Path) -> None:
        parts = path.split(".")
        node: Any = doc
        for part in parts[:-1]:
            node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
        val = _resolve(value, d)
        if isinstance(node, list):
            node[int(parts[-1])] = val
        else:
            node[parts[-1]] = val

    return patch


def _del(key: str) -> Patch:
    def patch(doc: dict[str, Any], d: Path) -> None:
        del doc[key]

    return patch


def _second_upstream(**extra: Any) -> Patch:
    def patch(doc: dict[str, Any], d: Path) -> None:
        doc["upstream"].append({"name": "city", "url": "mqtt://other.example.org"} | extra)

    return patch


def _rule(**rule: Any) -> Patch:
    def patch(doc: dict[str, Any], d: Path) -> None:
        doc["decoding"] = {"rule": [rule]}

    return patch


def _file(name: str) -> Callable[[Path], str]:
    return lambda d: str(d / name)


CASES: list[tuple[str, Patch, str, str]] = [
    # id, patch, key, message fragment
    ("unknown-top", _set("extras", 1), "extras", "unknown key"),
    ("unknown-edge", _set("edge.name", "gw"), "edge.name", "unknown key"),
    ("unknown-chirpstack", _set("chirpstack.url", "mqtt://x"), "chirpstack.url", "unknown key"),
    ("unknown-decoding", _set("decoding.rules", []), "decoding.rules", "unknown key"),
    ("unknown-rule", _rule(decoder="elsys/ers", dev_eui=["a81758fffe0346f1"], deveui="x"),
     "decoding.rule[0].deveui", "unknown key"),
    ("unknown-buffer", _set("buffer.max_size", 1), "buffer.max_size", "unknown key"),
    ("unknown-upstream", _set("upstream.0.endpoint", "mqtt://x"), "upstream[0].endpoint", "unknown key"),
    ("type-edge-id", _set("edge.id", 5), "edge.id", "must be str, got int"),
    ("type-float", _set("buffer.max_size_mb", "big"), "buffer.max_size_mb", "must be float, got str"),
    ("type-int", _set("buffer.batch_max", 1.5), "buffer.batch_max", "must be int, got float"),
    ("type-url", _set("upstream.0.url", 1883), "upstream[0].url", "must be str, got int"),
    ("type-chirpstack-table", _set("chirpstack", "mqtt://x"), "chirpstack", "must be dict, got str"),
    ("type-upstream-list", _set("upstream", {"name": "city", "url": "mqtt://x"}), "upstream",
     "must be list, got dict"),
    ("type-upstream-entry", _set("upstream.0", "city"), "upstream[0]", "must be a table"),
    ("type-rule-list", _rule(decoder="elsys/ers", dev_eui=[1]), "decoding.rule[0].dev_eui",
     "must be a list of strings"),
    ("type-protocol", _set("chirpstack.protocol", 3.1), "chirpstack.protocol", "must be str or int"),
    ("bool-as-number-qos", _set("upstream.0.qos", True), "upstream[0].qos", "must be a number, not a boolean"),
    ("bool-as-number-float", _set("buffer.max_size_mb", True), "buffer.max_size_mb",
     "must be a number, not a boolean"),
    ("number-as-bool", _set("decoding.use_chirpstack_object", 1), "decoding.use_chirpstack_object",
     "must be bool, got int"),
    ("not-positive-int", _set("buffer.batch_max", 0), "buffer.batch_max", "must be greater than 0"),
    ("keepalive-range", _set("chirpstack.keepalive_s", 70000), "chirpstack.keepalive_s", "must be 0 to 65535"),
    ("keepalive-negative", _set("upstream.0.keepalive_s", -1), "upstream[0].keepalive_s", "must be 0 to 65535"),
    ("session-expiry-range", _set("chirpstack.session_expiry_s", 2**33), "chirpstack.session_expiry_s",
     "must be 0 to 4294967295"),
    ("packet-size-zero", _set("chirpstack.max_packet_size_kb", 0), "chirpstack.max_packet_size_kb",
     "must be 1 to 262143"),
    ("packet-size-range", _set("chirpstack.max_packet_size_kb", 300000), "chirpstack.max_packet_size_kb",
     "must be 1 to 262143"),
    ("not-positive-float", _set("buffer.max_size_mb", -1), "buffer.max_size_mb", "must be greater than 0"),
    ("log-level", _set("edge.log_level", "verbose"), "edge.log_level", "must be debug, info, warning or error"),
    ("scheme-http", _set("chirpstack.mqtt_url", "http://127.0.0.1"), "chirpstack.mqtt_url",
     "must be mqtt://host[:port] or mqtts://host[:port]"),
    ("scheme-ws", _set("upstream.0.url", "ws://broker.example.org"), "upstream[0].url",
     "must be mqtt://host[:port] or mqtts://host[:port]"),
    ("no-host", _set("upstream.0.url", "mqtt://"), "upstream[0].url", "must be mqtt://host[:port]"),
    ("credentials", _set("upstream.0.url", "mqtt://edge:pw@broker.example.org"), "upstream[0].url",
     "must not carry credentials"),
    ("user-in-url", _set("chirpstack.mqtt_url", "mqtt://edge@127.0.0.1"), "chirpstack.mqtt_url",
     "must not carry credentials"),
    ("protocol", _set("chirpstack.protocol", "4"), "chirpstack.protocol", 'must be "5" or "3.1.1"'),
    ("cert-without-key", _set("upstream.0", {"name": "city", "url": "mqtts://b.example.org",
                                             "cert_file": _file("client.pem")}),
     "upstream[0].cert_file", "cert_file and key_file go together"),
    ("key-without-cert", _set("upstream.0", {"name": "city", "url": "mqtts://b.example.org",
                                             "key_file": _file("client.key")}),
     "upstream[0].cert_file", "cert_file and key_file go together"),
    ("tls-files-plain-url", _set("chirpstack.ca_file", _file("ca.pem")), "chirpstack.mqtt_url",
     "TLS files are set but the URL is not mqtts://"),
    ("password-without-username", _set("upstream.0.password_file", _file("city.pw")),
     "upstream[0].password_file", "needs username"),
    ("missing-password-file", _set("chirpstack", {"mqtt_url": "mqtt://127.0.0.1", "username": "u",
                                                  "password_file": "/nonexistent/edge.pw"}),
     "chirpstack.password_file", "file '/nonexistent/edge.pw' does not exist"),
    ("missing-ca-file", _set("upstream.0", {"name": "city", "url": "mqtts://b.example.org",
                                            "ca_file": "/nonexistent/ca.pem"}),
     "upstream[0].ca_file", "does not exist"),
    ("missing-key-file", _set("upstream.0", {"name": "city", "url": "mqtts://b.example.org",
                                             "cert_file": _file("client.pem"), "key_file": "/nonexistent/k"}),
     "upstream[0].key_file", "does not exist"),
    ("format", _set("upstream.0.format", "json"), "upstream[0].format", "must be one of senml+json, senml+cbor"),
    ("qos-0", _set("upstream.0.qos", 0), "upstream[0].qos", "must be 1 or 2"),
    ("qos-3", _set("upstream.0.qos", 3), "upstream[0].qos", "must be 1 or 2"),
    ("message-too-small", _set("upstream.0.max_message_bytes", 512), "upstream[0].max_message_bytes",
     "must be at least 1024"),
    ("duplicate-name", _second_upstream(), "upstream[1].name", "'city' is used twice"),
    ("name-chars", _set("upstream.0.name", "city/north"), "upstream[0].name", "letters, digits"),
    ("topic-plus", _set("upstream.0.topic", "lorawan/+/up"), "upstream[0].topic", "wildcards are not allowed"),
    ("topic-hash", _set("upstream.0.link_topic", "lorawan/#"), "upstream[0].link_topic",
     "wildcards are not allowed"),
    ("topic-placeholder", _set("upstream.0.topic", "lorawan/{deveui}"), "upstream[0].topic",
     "unknown placeholder 'deveui'"),
    ("link-topic-placeholder", _set("upstream.0.link_topic", "lorawan/{device}/link"), "upstream[0].link_topic",
     "unknown placeholder 'device'"),
    ("notice-topic-placeholder", _set("upstream.0.notice_topic", "edge/{gateway}"), "upstream[0].notice_topic",
     "unknown placeholder 'gateway'"),
    ("topic-unclosed", _set("upstream.0.topic", "lorawan/{dev_eui"), "upstream[0].topic", "unknown placeholder"),
    ("topic-positional", _set("upstream.0.topic", "lorawan/{}"), "upstream[0].topic", "unknown placeholder"),
    ("topic-empty", _set("upstream.0.topic", ""), "upstream[0].topic", "must not be empty"),
    ("notice-topic-empty", _set("upstream.0.notice_topic", ""), "upstream[0].notice_topic", "must not be empty"),
    ("missing-chirpstack", _del("chirpstack"), "chirpstack", "is required"),
    ("missing-mqtt-url", _set("chirpstack", {}), "chirpstack.mqtt_url", "is required"),
    ("missing-upstream", _del("upstream"), "upstream", "is required"),
    ("empty-upstream", _set("upstream", []), "upstream", "at least one [[upstream]] (MQTT) or [[http_upstream]]"),
    ("missing-upstream-name", _set("upstream.0", {"url": "mqtt://b.example.org"}), "upstream[0].name",
     "is required"),
    ("rule-without-criteria", _rule(decoder="elsys/ers"), "decoding.rule[0]",
     "needs dev_eui, device_profile or application"),
    ("rule-without-decoder", _rule(dev_eui=["a81758fffe0346f1"]), "decoding.rule[0].decoder", "is required"),
    ("ngsi-ld-replace", _set("http_upstream", [{"name": "broker", "endpoint":
                                                "https://cb.example/ngsi-ld/v1/entityOperations/upsert"}]),
     "http_upstream[0].endpoint", "add ?options=update"),
    ("ngsi-ld-base-url", _set("http_upstream", [{"name": "broker", "endpoint": "https://cb.example:1026"}]),
     "http_upstream[0].endpoint", "give the batch upsert URL"),
    # Sharing rules (issue #6): every mistake is named, none silently selects nothing.
    ("share-unknown", _set("upstream.0.share", {"device": ["a81758fffe0346f1"]}), "upstream[0].share.device",
     "unknown key"),
    ("share-devices-not-eui", _set("upstream.0.share", {"devices": ["a81758fffe0346f", "sensor-1"]}),
     "upstream[0].share.devices", "not DevEUIs (16 hex digits): a81758fffe0346f, sensor-1"),
    ("share-quantity", _set("upstream.0.share", {"quantities": ["temprature"]}), "upstream[0].share.quantities",
     "not in the vocabulary (docs/vocabulary.md): temprature"),
    ("share-drop-quantity", _set("upstream.0.share", {"drop_quantities": ["rssi"]}),
     "upstream[0].share.drop_quantities", "not in the vocabulary"),
    ("share-round-decimals", _set("upstream.0.share", {"round": {"temperature": 1.5}}), "upstream[0].share.round",
     "number of decimals from 0 to 12"),
    ("share-round-quantity", _set("upstream.0.share", {"round": {"temprature": 1}}), "upstream[0].share.round",
     "not in the vocabulary (docs/vocabulary.md): temprature"),
    ("share-thin", _set("upstream.0.share", {"thin_s": -60}), "upstream[0].share.thin_s", "must be 0 (off) or more"),
    ("share-radio", _set("upstream.0.share", {"radio": "no"}), "upstream[0].share.radio", "must be bool, got str"),
    ("share-tags", _set("upstream.0.share", {"tags": ["owner"]}), "upstream[0].share.tags", "must be dict, got list"),
    ("share-enrich", _set("upstream.0.share", {"enrich": ["tag:"]}), "upstream[0].share.enrich",
     "use name, application, device_profile or tag:<key>"),
]


@pytest.mark.parametrize(("patch", "key", "fragment"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_config_problem_reports_key(files: Path, patch: Patch, key: str, fragment: str) -> None:
    doc = minimal()
    patch(doc, files)
    problems = problems_of(doc)
    mine = [p for p in problems if p.startswith(f"{key}: ")]
    assert mine, problems
    assert any(fragment in p for p in mine), problems


def test_config_link_topic_may_be_empty() -> None:
    doc = minimal()
    doc["upstream"][0]["link_topic"] = ""
    assert parse_config(doc).upstreams[0].link_topic == ""


def test_config_every_known_placeholder_is_accepted() -> None:
    doc = minimal()
    doc["upstream"][0]["topic"] = "x/{dev_eui}/{application}/{application_id}/{gateway_id}/{edge_id}"
    assert parse_config(doc).upstreams[0].topic.startswith("x/{dev_eui}")


def test_config_several_problems_reported_at_once() -> None:
    doc = minimal()
    doc["edge"] = {"colour": "blue"}
    doc["chirpstack"]["mqtt_url"] = "http://127.0.0.1"
    doc["buffer"] = {"max_size_mb": 0}
    doc["upstream"][0].update(qos=0, format="xml", topic="a/#")
    doc["upstream"].append({"name": "city", "url": "mqtt://b"})
    problems = problems_of(doc)
    for key in ("edge.colour", "chirpstack.mqtt_url", "buffer.max_size_mb", "upstream[0].qos",
                "upstream[0].format", "upstream[0].topic", "upstream[1].name"):
        assert any(p.startswith(f"{key}: ") for p in problems), (key, problems)
    assert len(problems) == 7


def test_config_problems_do_not_stop_at_first_upstream() -> None:
    doc = minimal()
    doc["upstream"] = [{"name": "a", "url": "mqtt://a", "qos": 0}, {"name": "b", "url": "mqtt://b", "qos": 0}]
    problems = problems_of(doc)
    assert [p.split(":")[0] for p in problems] == ["upstream[0].qos", "upstream[1].qos"]


# -- bugs -------------------------------------------------------------------------------------------

def test_config_topic_attribute_placeholder_is_a_config_error() -> None:
    doc = minimal()
    doc["upstream"][0]["topic"] = "lorawan/{dev_eui.foo}"
    problems = problems_of(doc)
    assert any(p.startswith("upstream[0].topic: ") for p in problems)


def test_config_unparseable_url_is_a_config_error() -> None:
    doc = minimal()
    doc["chirpstack"]["mqtt_url"] = "mqtt://[::1"
    problems = problems_of(doc)
    assert any(p.startswith("chirpstack.mqtt_url: ") for p in problems)


@pytest.mark.parametrize("url", ["mqtt://127.0.0.1:99999", "mqtt://127.0.0.1:port"])
def test_config_bad_port_is_a_config_error(url: str) -> None:
    doc = minimal()
    doc["chirpstack"]["mqtt_url"] = url
    problems = problems_of(doc)
    assert any(p.startswith("chirpstack.mqtt_url: ") for p in problems)


def test_config_problem_text_never_echoes_a_url_password() -> None:
    doc = minimal()
    doc["chirpstack"]["mqtt_url"] = f"http://edge:{SECRET}@127.0.0.1"
    problems = problems_of(doc)
    assert any("must not carry credentials" in p for p in problems)
    assert not any(SECRET in p for p in problems)


def test_config_credentials_problem_does_not_echo_password() -> None:
    doc = minimal()
    doc["chirpstack"]["mqtt_url"] = f"mqtt://edge:{SECRET}@127.0.0.1"
    problems = problems_of(doc)
    assert problems and not any(SECRET in p for p in problems)


# -- load_config ------------------------------------------------------------------------------------

def test_config_load_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (problem,) = info.value.problems
    assert problem.startswith(f"{path}: cannot read")


def test_config_load_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path)


def test_config_load_invalid_toml(tmp_path: Path) -> None:
    path = tmp_path / "edge.toml"
    path.write_text('[chirpstack]\nmqtt_url = "mqtt://127.0.0.1\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (problem,) = info.value.problems
    assert problem.startswith(f"{path}: not valid TOML")


def test_config_load_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "edge.toml"
    path.write_bytes(b'[edge]\nid = "\xff\xfe"\n')
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)


def test_config_load_reports_validation_problems(tmp_path: Path) -> None:
    path = tmp_path / "edge.toml"
    path.write_text((CONFIGS / "minimal.toml").read_text() + "qos = 0\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == ["upstream[0].qos: must be 1 or 2 (QoS 0 cannot be acknowledged)"]


# -- describe ---------------------------------------------------------------------------------------

def _keys(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in _keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in _keys(v)}
    return set()


def test_config_describe_never_includes_a_password(files: Path) -> None:
    cfg = load_config(full_config(files))
    assert cfg.upstreams[0].mqtt.password() == SECRET  # the secret is there to be leaked
    shown = describe(cfg)
    text = json.dumps(shown)
    assert SECRET not in text
    assert "password" not in _keys(shown)
    assert shown["chirpstack"]["mqtt"]["password_file"] == str(files / "chirpstack.pw")
    assert shown["upstreams"][0]["mqtt"]["password_file"] == str(files / "city.pw")
    assert shown["upstreams"][0]["mqtt"]["username"] == "gw-01"


def test_config_describe_is_plain_json_data(files: Path) -> None:
    cfg = load_config(full_config(files))
    shown = describe(cfg)
    again = json.loads(json.dumps(shown))
    assert again == shown
    assert shown["edge_id"] == "gw-01"
    assert [u["name"] for u in shown["upstreams"]] == ["city", "backup_2"]
    assert shown["decoding"]["rules"][0]["dev_eui"] == ["a81758fffe0346f1"]


def test_config_parse_does_not_mutate_document() -> None:
    doc = minimal()
    before = copy.deepcopy(doc)
    parse_config(doc)
    assert doc == before


@pytest.mark.parametrize("topic", ["", "application/+/device/#/event/+", "application/x+/device/+/event/+",
                                   "application/+/device/+/event/up#"])
def test_config_chirpstack_topic_must_be_a_valid_filter(topic: str) -> None:
    doc = minimal()
    doc["chirpstack"]["topic"] = topic
    assert any(p.startswith("chirpstack.topic: ") for p in problems_of(doc))


@pytest.mark.parametrize("topic", ["application/+/device/+/event/+", "application/#",
                                   "application/4b3c/device/+/event/up"])
def test_config_chirpstack_topic_accepts_filters(topic: str) -> None:
    doc = minimal()
    doc["chirpstack"]["topic"] = topic
    assert parse_config(doc).chirpstack.topic == topic


# -- the schema -------------------------------------------------------------------------------------

def test_config_schema_is_valid_for_msgspec_and_words_every_pattern() -> None:
    """Every key's type and bounds are declarations msgspec accepts (a JSON Schema can be made of them), and a
    key bounded by a pattern has its own wording, so no regular expression reaches the user."""
    import msgspec

    from edge.config.tables import extra, keys, split

    assert msgspec.json.schema(Config)["$ref"] == "#/$defs/Config"
    for key in keys(Config):
        if any(meta.pattern for meta in split(key.hint)[1]):
            assert "problem" in extra(key.hint), key.name
