"""The rules a bound cannot state: URLs, topics, files that must exist, and one key against another.

Each rule gets a section as read (edge/config/tables.py) and its Scope, reports problems under the
section's keys and returns the section, completed where the rule must ({edge_id} in client ids).
"""

from __future__ import annotations

from dataclasses import fields, replace
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from edge.config.sections import (
    MAX_PORT,
    MAX_WAIT_S,
    ChirpStackConfig,
    DecoderRuleConfig,
    DecodingConfig,
    HealthIntervalRule,
    MqttEndpoint,
    WebConfig,
)
from edge.config.tables import Rule, Scope
from edge.config.upstreams import HttpUpstreamConfig, ShareRules, UpstreamConfig
from edge.net import is_loopback

TOPIC_PLACEHOLDERS = ("dev_eui", "application", "application_id", "gateway_id", "edge_id")
TOPICS = ("topic", "link_topic", "notice_topic", "health_topic", "command_topic")  # of an [[upstream]]


@cache
def _file_keys(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls) if f.name.endswith("_file"))


def files_exist(section: Any, at: Scope) -> None:
    """Every key named *_file that is set must name an existing file (credentials, TLS material, tokens)."""
    cls: type = type(section)
    for name in _file_keys(cls):
        value = getattr(section, name)
        if value and not Path(value).is_file():
            at.problem(name, f"file {value!r} does not exist")


def _mqtt(endpoint: MqttEndpoint, at: Scope) -> MqttEndpoint:
    url = endpoint.url
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in 0-65535
    except ValueError as exc:
        at.problem("url", f"not a valid URL ({exc})")
    else:
        # The URL itself is never echoed: it may carry a password that must not reach the journal.
        if url and (parts.scheme not in ("mqtt", "mqtts") or not parts.hostname):
            at.problem("url", f"must be mqtt://host[:port] or mqtts://host[:port] (scheme {parts.scheme!r})")
        if parts.username or parts.password:
            at.problem("url", "must not carry credentials; use username and password_file")
        if parts.port == 0:
            at.problem("url", f"port must be from 1 to {MAX_PORT}")
    endpoint = replace(endpoint, client_id=endpoint.client_id.replace("{edge_id}", at.context.edge_id))
    if not endpoint.reconnect_min_s <= endpoint.reconnect_max_s <= MAX_WAIT_S:
        at.problem("reconnect_max_s", f"must be at least reconnect_min_s ({endpoint.reconnect_min_s:g}) and at most"
                                      f" {MAX_WAIT_S:g}")
    files_exist(endpoint, at)
    if bool(endpoint.cert_file) != bool(endpoint.key_file):
        at.problem("cert_file", "cert_file and key_file go together (mTLS)")
    if (endpoint.ca_file or endpoint.cert_file) and not endpoint.tls:
        at.problem("url", "TLS files are set but the URL is not mqtts://")
    if endpoint.password_file and not endpoint.username:
        at.problem("password_file", "needs username")
    return endpoint


def _has_credentials(url: str) -> bool:
    try:
        parts = urlsplit(url if "://" in url else f"grpc://{url}")
    except ValueError:
        return False
    return bool(parts.username or parts.password)


def _api_url_ok(url: str) -> bool:
    """host:port (plaintext gRPC), http://host:port, or https://host with an optional port."""
    try:
        parts = urlsplit(url if "://" in url else f"grpc://{url}")
        if not parts.hostname:
            return False
        return parts.scheme == "https" or (parts.scheme in ("grpc", "http") and parts.port is not None)
    except ValueError:
        return False


def _chirpstack(cs: ChirpStackConfig, at: Scope) -> ChirpStackConfig:
    # A subscription filter: '+' only as a whole level, '#' only as the whole last level (MQTT 4.7.1).
    levels = cs.topic.split("/")
    if not cs.topic or "\0" in cs.topic:
        at.problem("topic", "must be a non-empty MQTT topic filter")
    elif any(("+" in lv and lv != "+") or ("#" in lv and lv != "#") for lv in levels) or "#" in levels[:-1]:
        at.problem("topic", "not a valid MQTT topic filter ('+' must stand alone in a level, '#' alone in the last"
                            f" level), e.g. {ChirpStackConfig.topic!r}")
    files_exist(cs, at)
    if cs.api_url and not cs.api_token_file:
        at.problem("api_token_file", "is required with api_url")
    if cs.api_url and _has_credentials(cs.api_url):
        # The URL itself is never echoed: the credentials in it must not reach the journal.
        at.problem("api_url", "must not carry credentials (user:password@); use api_token_file")
    elif cs.api_url and not _api_url_ok(cs.api_url):
        at.problem("api_url", "must be host:port, http://host:port or https://host[:port]")
    return cs


def _decoder_rule(rule: DecoderRuleConfig, at: Scope) -> DecoderRuleConfig:
    if not (rule.dev_eui or rule.device_profile or rule.application):
        at.problem("", "needs dev_eui, device_profile or application")
    return rule


def _decoding(decoding: DecodingConfig, at: Scope) -> DecodingConfig:
    for i, map_path in enumerate(decoding.map_paths):
        if not Path(map_path).is_dir():
            at.problem(f"map_paths[{i}]", f"{map_path!r} is not a folder")
    for i, codec_path in enumerate(decoding.codec_paths):
        if not Path(codec_path).exists():
            at.problem(f"codec_paths[{i}]", f"{codec_path!r} does not exist")
    return decoding


def _web(web: WebConfig, at: Scope) -> WebConfig:
    files_exist(web, at)
    if not web.token_file and not is_loopback(web.bind):
        at.problem("token_file", "is required when web.bind is not a loopback address (127.0.0.1, ::1)")
    return web


def _health_interval(rule: HealthIntervalRule, at: Scope) -> HealthIntervalRule:
    if not (rule.dev_eui or rule.device_profile or rule.application or rule.tag):
        at.problem("", "needs dev_eui, device_profile, application or tag")
    if any("=" not in t for t in rule.tag):
        at.problem("tag", "each must be key=value")
    return rule


def _topic(value: str, name: str, at: Scope) -> None:
    """A publish topic: no wildcards, no control characters, only our placeholders."""
    if "+" in value or "#" in value:
        at.problem(name, "wildcards are not allowed in a publish topic")
    if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in value):
        at.problem(name, "control characters (NUL, newline ...) are not allowed in a topic")
    try:
        value.format(**{p: "x" for p in TOPIC_PLACEHOLDERS})
    except (KeyError, IndexError, ValueError, AttributeError) as exc:
        known = ", ".join("{" + p + "}" for p in TOPIC_PLACEHOLDERS)
        at.problem(name, f"unknown placeholder {exc}; use {known}")


def _upstream(up: UpstreamConfig, at: Scope) -> UpstreamConfig:
    for name in TOPICS:
        _topic(getattr(up, name), name, at)
    if up.command_topic and not up.command_devices:
        at.problem("command_devices", "downlink commands need an allow-list of DevEUIs")
    return up


def _http_upstream(http: HttpUpstreamConfig, at: Scope) -> HttpUpstreamConfig:
    if http.endpoint and urlsplit(http.endpoint).scheme not in ("http", "https"):
        at.problem("endpoint", "must be an http:// or https:// URL")
    files_exist(http, at)
    if http.format == "ngsi-ld" and http.endpoint:
        # NGSI-LD upstreams post batches of entities: only the batch upsert URL, with options=update, takes them.
        parts = urlsplit(http.endpoint)
        want = "<broker>/ngsi-ld/v1/entityOperations/upsert?options=update"
        if parts.path.rstrip("/") in ("", "/ngsi-ld/v1", "/ngsi-ld/v1/entities"):
            at.problem("endpoint", f"give the batch upsert URL, {want}")
        elif parts.path.rstrip("/").endswith("/entityOperations/upsert") and "options=update" not in parts.query:
            # Without it the broker replaces whole entities, deleting attributes other systems wrote.
            at.problem("endpoint", f"add ?options=update ({want})")
    if not http.backoff_min_s <= http.backoff_max_s:
        at.problem("backoff_max_s", f"must be at least backoff_min_s ({http.backoff_min_s:g})")
    if http.endpoint.startswith("http://") and (http.ca_file or http.cert_file):
        at.problem("endpoint", "TLS files are set but the endpoint is not https://")
    return http


def _share(rules: ShareRules, at: Scope) -> ShareRules:
    bad = [e for e in rules.enrich if e not in ("name", "application", "device_profile") and not
           (e.startswith("tag:") and len(e) > 4)]
    if bad:
        at.problem("enrich", f"use name, application, device_profile or tag:<key>; not {bad}")
    not_eui = [d for d in rules.devices if len(d) != 16 or any(c not in "0123456789abcdef" for c in d)]
    if not_eui:
        # A mistyped DevEUI would silently select nothing.
        at.problem("devices", f"not DevEUIs (16 hex digits): {', '.join(not_eui)}")
    if not (rules.quantities or rules.drop_quantities or rules.round):
        return rules
    from edge.vocabulary import BY_NAME  # imported only for configs that name quantities

    for name, quantities in (("quantities", rules.quantities), ("drop_quantities", rules.drop_quantities),
                             ("round", [q for q, _ in rules.round if q != "*"])):
        unknown = [q for q in quantities if q not in BY_NAME]
        if unknown:
            at.problem(name, f"not in the vocabulary (docs/vocabulary.md): {', '.join(unknown)}")
    return rules


RULES: dict[type, Rule] = {
    MqttEndpoint: _mqtt, ChirpStackConfig: _chirpstack, DecoderRuleConfig: _decoder_rule, DecodingConfig: _decoding,
    WebConfig: _web, HealthIntervalRule: _health_interval, UpstreamConfig: _upstream,
    HttpUpstreamConfig: _http_upstream, ShareRules: _share,
}
