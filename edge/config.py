"""Reads and validates the TOML configuration into frozen dataclasses; reports every problem."""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
import socket
import stat
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from edge.errors import ConfigError

DEFAULT_PATH = Path("/etc/lorawan-edge/edge.toml")
FORMATS = ("senml+json", "senml+cbor")
TOPIC_PLACEHOLDERS = ("dev_eui", "application", "application_id", "gateway_id", "edge_id")
# Bounds the protocols and the OS set (checked by `edge validate`):
MAX_PORT = 65535  # TCP
MAX_KEEPALIVE_S = 65535  # MQTT Keep Alive is a two-byte integer (MQTT 5 §3.1.2.10)
MAX_INFLIGHT = 65535  # MQTT packet identifiers are two bytes, so no more can be unacknowledged at once
MAX_PACKET_BYTES = 268_435_455  # the largest MQTT packet a Remaining Length can describe (MQTT 5 §1.5.5)
MAX_JS_MEMORY_MB = 4095  # the JS runtime's memory limit is a size_t: 32 bits on a 32-bit Raspberry Pi OS
MAX_WAIT_S = threading.TIMEOUT_MAX  # the longest timeout a thread may wait (larger ones raise OverflowError)
# The gateway's id goes into topics and client ids: letters, digits and a few marks, no MQTT wildcards.
EDGE_ID = re.compile(r"[A-Za-z0-9._:@=~-]{1,128}")


@dataclass(frozen=True)
class MqttEndpoint:
    """Connection settings shared by the ChirpStack source and MQTT upstreams."""

    url: str
    client_id: str
    username: str = ""
    password_file: str = ""
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    protocol: str = "5"
    keepalive_s: int = 30
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 10.0

    @property
    def host(self) -> str:
        """Broker host name or address."""
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        """Broker port, defaulting by scheme."""
        parts = urlsplit(self.url)
        return parts.port or (8883 if parts.scheme == "mqtts" else 1883)

    @property
    def tls(self) -> bool:
        """True for mqtts:// URLs."""
        return urlsplit(self.url).scheme == "mqtts"

    def password(self) -> str | None:
        """The password, read from its file at connect time (never stored in config or logs)."""
        if not self.password_file:
            return None
        return Path(self.password_file).read_text().strip()


@dataclass(frozen=True)
class ChirpStackConfig:
    """The ChirpStack MQTT integration we read uplinks from."""

    mqtt: MqttEndpoint
    topic: str = "application/+/device/+/event/+"
    session_expiry_s: int = 30 * 24 * 3600
    max_packet_size_kb: int = 256
    api_url: str = ""
    api_token_file: str = ""
    tenant_id: str = ""
    api_ca_file: str = ""
    api_timeout_s: float = 10.0
    api_sync_interval_s: int = 3600
    max_payload_bytes: int = 256


@dataclass(frozen=True)
class DecoderRuleConfig:
    """A config rule choosing a decoder for devices."""

    decoder: str
    dev_eui: tuple[str, ...] = ()
    device_profile: tuple[str, ...] = ()
    application: tuple[str, ...] = ()


@dataclass(frozen=True)
class DecodingConfig:
    """How decoders are chosen."""

    use_chirpstack_object: bool = True
    tag: str = "decoder"
    rules: tuple[DecoderRuleConfig, ...] = ()
    plugins_allow: tuple[str, ...] = ()
    plugins_block: tuple[str, ...] = ()
    codec_paths: tuple[str, ...] = ()
    js_time_limit_ms: int = 100
    js_memory_limit_mb: int = 16
    cooldown_timeouts: int = 3
    cooldown_window_s: float = 60.0
    cooldown_s: float = 60.0
    # Device profile name or id -> field map key (`ttn:elsys/elsys`) for ChirpStack's `object`
    # and the profile's own JS codec (docs/field-maps.md).
    object_maps: Mapping[str, str] = field(default_factory=dict)
    # Folders of more field maps (YAML), beside the package's and plugins' maps.
    map_paths: tuple[str, ...] = ()


@dataclass(frozen=True)
class BufferConfig:
    """The SQLite store-and-forward buffer."""

    path: str = "/var/lib/lorawan-edge/buffer.sqlite"
    max_size_mb: float = 1024.0
    batch_max: int = 500
    batch_ms: int = 30


@dataclass(frozen=True)
class ShareRules:
    """What one destination may receive (`share` table of an upstream); empty selectors select all.

    A device passes when it matches every selector that is set: `devices` (DevEUIs),
    `applications` and `device_profiles` (names or ids), `tags` (all must match). Of its readings,
    only `quantities` (if set) and none of `drop_quantities` are sent. `radio = false` sends no
    radio metadata; `round` gives decimals per quantity ("*" for all); `thin_s` sends at most one
    uplink per device per interval. `enrich` adds device metadata as string records ("name",
    "application", "device_profile", "tag:<key>"), so receivers need no second lookup.
    """

    devices: tuple[str, ...] = ()
    applications: tuple[str, ...] = ()
    device_profiles: tuple[str, ...] = ()
    tags: tuple[tuple[str, str], ...] = ()
    quantities: tuple[str, ...] = ()
    drop_quantities: tuple[str, ...] = ()
    radio: bool = True
    round: tuple[tuple[str, int], ...] = ()
    thin_s: float = 0.0
    enrich: tuple[str, ...] = ()

    @property
    def selects_devices(self) -> bool:
        """True when some device selector is set."""
        return bool(self.devices or self.applications or self.device_profiles or self.tags)


@dataclass(frozen=True)
class NgsiLdConfig:
    """How an HTTP upstream in NGSI-LD format builds its entities (`ngsi_ld` table)."""

    entity_type: str = ""
    climate_type: str = "IndoorEnvironmentObserved"
    device_entity: bool = True
    batch_size: int = 100
    locations: tuple[tuple[str, float, float], ...] = ()
    device_types: tuple[tuple[str, str], ...] = ()
    attributes: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class UpstreamConfig:
    """One destination broker with its own format, topics and progress."""

    name: str
    mqtt: MqttEndpoint
    format: str = "senml+json"
    topic: str = "lorawan/{dev_eui}"
    link_topic: str = "lorawan/{dev_eui}/link"
    notice_topic: str = "lorawan-edge/{edge_id}/notice"
    health_topic: str = "lorawan/{dev_eui}/health"
    qos: int = 1
    max_inflight: int = 20
    max_message_bytes: int = 65536
    one_uplink_per_message: bool = False  # for receivers that read only a pack's first base values
    read_batch: int = 50000
    share: ShareRules = field(default_factory=ShareRules)
    command_topic: str = ""
    command_devices: tuple[str, ...] = ()
    command_max_age_s: float = 600.0
    command_max_per_hour: int = 12


@dataclass(frozen=True)
class HttpUpstreamConfig:
    """One HTTP destination (`[[http_upstream]]`), e.g. an NGSI-LD context broker.

    Attributes:
        name: unique upstream name; also the buffer cursor's name.
        endpoint: the full URL to POST to; for NGSI-LD
            `<broker>/ngsi-ld/v1/entityOperations/upsert?options=update`.
        format: "ngsi-ld", "senml+json" or "senml+cbor".
        bearer_token_file: a file whose content is sent as `Authorization: Bearer <token>`.
        ca_file: PEM bundle to verify the server with instead of the system store.
        cert_file: client certificate (PEM) for mutual TLS.
        key_file: the client certificate's key, if not in `cert_file`.
        timeout_s: connect, read and write timeout of one request.
        max_batch: the most entries read from the buffer and settled together.
        backoff_min_s: the first retry delay (jittered).
        backoff_max_s: the longest retry delay without a Retry-After.
        retry_after_max_s: the longest Retry-After honoured.
        headers: extra request headers, e.g. (("NGSILD-Tenant", "city"),).
        notice_endpoint: where gap notices are POSTed as JSON; empty to keep them in the buffer.
        proxy: an HTTP(S) proxy URL; the environment's proxy variables are not used.
        one_uplink_per_message: SenML formats: one uplink per request instead of a device's backlog per request.
    """

    name: str
    endpoint: str
    format: str = "ngsi-ld"
    bearer_token_file: str = ""
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    timeout_s: float = 10.0
    max_batch: int = 100
    backoff_min_s: float = 1.0
    backoff_max_s: float = 60.0
    retry_after_max_s: float = 600.0
    headers: tuple[tuple[str, str], ...] = ()
    notice_endpoint: str = ""
    proxy: str = ""
    one_uplink_per_message: bool = False
    share: ShareRules = field(default_factory=lambda: ShareRules())
    ngsi_ld: NgsiLdConfig = field(default_factory=lambda: NgsiLdConfig())


@dataclass(frozen=True)
class WebConfig:
    """The status server (edge.web): Prometheus metrics, /health and the technician's status page."""

    bind: str = "127.0.0.1"
    port: int = 9108
    token_file: str = ""
    stuck_after_s: float = 900.0
    disconnected_after_s: float = 120.0

    def token(self) -> str | None:
        """The access token, read from its file at start (never stored in config or logs)."""
        if not self.token_file:
            return None
        return Path(self.token_file).read_text().strip()


@dataclass(frozen=True)
class HealthIntervalRule:
    """`[[health.interval]]`: the expected uplink interval of the devices it names (instead of learning it)."""

    interval_s: float
    dev_eui: tuple[str, ...] = ()
    device_profile: tuple[str, ...] = ()
    application: tuple[str, ...] = ()
    tag: tuple[str, ...] = ()  # "key=value" of a device tag


@dataclass(frozen=True)
class HealthBatteryRule:
    """`[[health.battery]]`: low-battery thresholds for the devices it names."""

    low_percent: float
    low_voltage: float
    dev_eui: tuple[str, ...] = ()
    device_profile: tuple[str, ...] = ()


@dataclass(frozen=True)
class HealthConfig:
    """`[health]`: sensor health (edge/health.py, docs/health.md)."""

    enabled: bool = True
    silent_factor: float = 3.0
    learn_uplinks: int = 5
    min_interval_s: float = 30.0
    check_interval_s: float = 10.0
    loss_window: int = 100
    lossy_ratio: float = 0.2
    stuck_uplinks: int = 24
    battery_low_percent: float = 20.0
    battery_low_voltage: float = 3.0
    intervals: tuple[HealthIntervalRule, ...] = ()
    batteries: tuple[HealthBatteryRule, ...] = ()


def _loopback(host: str) -> bool:
    # Kept here rather than imported from edge.web: config must not pull in prometheus_client.
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name may resolve to any interface


@dataclass(frozen=True)
class Config:
    """The whole configuration."""

    edge_id: str
    chirpstack: ChirpStackConfig
    buffer: BufferConfig
    upstreams: tuple[UpstreamConfig, ...]
    decoding: DecodingConfig = field(default_factory=DecodingConfig)
    http_upstreams: tuple[HttpUpstreamConfig, ...] = ()
    web: WebConfig = field(default_factory=WebConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    log_level: str = "info"
    source_path: str = ""


class _Reader:
    """Walks one TOML table, collecting problems instead of stopping at the first."""

    def __init__(self, table: Any, where: str, problems: list[str]) -> None:
        self.where = where
        self.problems = problems
        if not isinstance(table, dict):
            problems.append(f"{where}: must be a table")
            table = {}
        self.table: dict[str, Any] = table
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def get(self, name: str, kind: type | tuple[type, ...], default: Any, required: bool = False) -> Any:
        self.used.add(name)
        if name not in self.table:
            if required:
                self.problems.append(f"{self.key(name)}: is required")
            return default
        value = self.table[name]
        # TOML integers are acceptable where a float is expected; booleans are never numbers.
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, bool) and kind in (int, float):
            self.problems.append(f"{self.key(name)}: must be a number, not a boolean")
            return default
        if not isinstance(value, kind):
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            self.problems.append(f"{self.key(name)}: must be {names}, got {type(value).__name__}")
            return default
        if isinstance(value, float) and not math.isfinite(value):
            # TOML has inf and nan; neither is a size, a count or a time.
            self.problems.append(f"{self.key(name)}: must be a finite number")
            return default
        return value

    def positive(self, name: str, kind: type, default: Any) -> Any:
        value = self.get(name, kind, default)
        if value <= 0:
            self.problems.append(f"{self.key(name)}: must be greater than 0")
            return default
        return value

    def strings(self, name: str) -> tuple[str, ...]:
        value = self.get(name, (list, str), [])
        if isinstance(value, str):
            value = [value]
        if not all(isinstance(v, str) for v in value):
            self.problems.append(f"{self.key(name)}: must be a list of strings")
            return ()
        return tuple(value)

    def done(self) -> None:
        for name in sorted(set(self.table) - self.used):
            # Every key this section knows was asked for with get(), so `used` is the list to suggest from.
            close = difflib.get_close_matches(name, sorted(self.used), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            self.problems.append(f"{self.key(name)}: unknown key{hint}")


def _ranged(r: _Reader, name: str, default: int, low: int, high: int, why: str) -> int:
    """An integer key that the protocol bounds; out of range is a problem naming the range and why."""
    value: int = r.get(name, int, default)
    if not low <= value <= high:
        r.problems.append(f"{r.key(name)}: must be {low} to {high} ({why}), got {value}")
        return default
    return value


def _check_file(r: _Reader, name: str, value: str) -> None:
    if value and not Path(value).is_file():
        r.problems.append(f"{r.key(name)}: file {value!r} does not exist")


def _mqtt(r: _Reader, url_key: str, default_client: str, edge_id: str) -> MqttEndpoint:
    url = r.get(url_key, str, "", required=True)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in 0-65535
    except ValueError as exc:
        r.problems.append(f"{r.key(url_key)}: not a valid URL ({exc})")
        parts = urlsplit("")
    else:
        # The URL itself is never echoed: it may carry a password that must not reach the journal.
        if url and (parts.scheme not in ("mqtt", "mqtts") or not parts.hostname):
            r.problems.append(f"{r.key(url_key)}: must be mqtt://host[:port] or mqtts://host[:port]"
                              f" (scheme {parts.scheme!r})")
        if parts.username or parts.password:
            r.problems.append(f"{r.key(url_key)}: must not carry credentials; use username and password_file")
        if parts.port == 0:
            r.problems.append(f"{r.key(url_key)}: port must be from 1 to {MAX_PORT}")
    endpoint = MqttEndpoint(
        url=url,
        client_id=r.get("client_id", str, default_client).replace("{edge_id}", edge_id),
        username=r.get("username", str, ""),
        password_file=r.get("password_file", str, ""),
        ca_file=r.get("ca_file", str, ""),
        cert_file=r.get("cert_file", str, ""),
        key_file=r.get("key_file", str, ""),
        protocol=str(r.get("protocol", (str, int), "5")),
        keepalive_s=_ranged(r, "keepalive_s", 30, 0, 65535, "MQTT keeps it in two bytes; 0 turns it off"),
        reconnect_min_s=r.positive("reconnect_min_s", float, 0.5),
        reconnect_max_s=r.positive("reconnect_max_s", float, 10.0),
    )
    if not endpoint.reconnect_min_s <= endpoint.reconnect_max_s <= MAX_WAIT_S:
        r.problems.append(f"{r.key('reconnect_max_s')}: must be at least reconnect_min_s"
                          f" ({endpoint.reconnect_min_s:g}) and at most {MAX_WAIT_S:g}")
    for name in ("password_file", "ca_file", "cert_file", "key_file"):
        _check_file(r, name, getattr(endpoint, name))
    if endpoint.protocol not in ("5", "3.1.1"):
        r.problems.append(f"{r.key('protocol')}: must be \"5\" or \"3.1.1\"")
    if bool(endpoint.cert_file) != bool(endpoint.key_file):
        r.problems.append(f"{r.key('cert_file')}: cert_file and key_file go together (mTLS)")
    if (endpoint.ca_file or endpoint.cert_file) and not endpoint.tls:
        r.problems.append(f"{r.key(url_key)}: TLS files are set but the URL is not mqtts://")
    if endpoint.password_file and not endpoint.username:
        r.problems.append(f"{r.key('password_file')}: needs username")
    return endpoint


def _topic(r: _Reader, name: str, default: str, allow_empty: bool = False) -> str:
    value: str = r.get(name, str, default)
    if not value:
        if not allow_empty:
            r.problems.append(f"{r.key(name)}: must not be empty")
        return value
    if "+" in value or "#" in value:
        r.problems.append(f"{r.key(name)}: wildcards are not allowed in a publish topic")
    if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in value):
        r.problems.append(f"{r.key(name)}: control characters (NUL, newline ...) are not allowed in a topic")
    try:
        value.format(**{p: "x" for p in TOPIC_PLACEHOLDERS})
    except (KeyError, IndexError, ValueError, AttributeError) as exc:
        known = ", ".join("{" + p + "}" for p in TOPIC_PLACEHOLDERS)
        r.problems.append(f"{r.key(name)}: unknown placeholder {exc}; use {known}")
    return value


def _topic_filter(r: _Reader, name: str, default: str) -> str:
    """A subscription filter: '+' only as a whole level, '#' only as the whole last level (MQTT 4.7.1)."""
    value: str = r.get(name, str, default)
    levels = value.split("/")
    if not value or "\0" in value:
        r.problems.append(f"{r.key(name)}: must be a non-empty MQTT topic filter")
    elif any(("+" in lv and lv != "+") or ("#" in lv and lv != "#") for lv in levels) or "#" in levels[:-1]:
        r.problems.append(f"{r.key(name)}: not a valid MQTT topic filter ('+' must stand alone in a level, '#' alone"
                          f" in the last level), e.g. {default!r}")
    return value


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


def parse_config(doc: dict[str, Any], source_path: str = "") -> Config:
    """Validate a parsed TOML document; raises ConfigError listing every problem."""
    problems: list[str] = []
    top = _Reader(doc, "", problems)

    edge = _Reader(top.get("edge", dict, {}), "edge", problems)
    edge_id = edge.get("id", str, "") or os.environ.get("EDGE_ID", "") or socket.gethostname()
    if not EDGE_ID.fullmatch(edge_id):
        problems.append("edge.id: use 1-128 letters, digits and . _ : @ = ~ - (it goes into topics and client ids)")
    log_level = edge.get("log_level", str, "info").lower()
    if log_level not in ("debug", "info", "warning", "error"):
        problems.append("edge.log_level: must be debug, info, warning or error")
    edge.done()

    cs = _Reader(top.get("chirpstack", dict, {}, required=True), "chirpstack", problems)
    chirpstack = ChirpStackConfig(
        mqtt=_mqtt(cs, "mqtt_url", "lorawan-edge-{edge_id}", edge_id),
        topic=_topic_filter(cs, "topic", "application/+/device/+/event/+"),
        session_expiry_s=_ranged(cs, "session_expiry_s", 30 * 24 * 3600, 0, 2**32 - 1,
                                 "MQTT 5 keeps it in four bytes"),
        max_packet_size_kb=_ranged(cs, "max_packet_size_kb", 256, 1, 262143,
                                   "MQTT's largest packet is 256 MiB; ChirpStack events are 1-2 KB"),
        api_url=cs.get("api_url", str, ""),
        api_token_file=cs.get("api_token_file", str, ""),
        tenant_id=cs.get("tenant_id", str, ""),
        api_ca_file=cs.get("api_ca_file", str, ""),
        api_timeout_s=cs.positive("api_timeout_s", float, 10.0),
        api_sync_interval_s=cs.get("api_sync_interval_s", int, 3600),
        max_payload_bytes=cs.get("max_payload_bytes", int, 256),
    )
    if not 51 <= chirpstack.max_payload_bytes <= 65535:
        problems.append("chirpstack.max_payload_bytes: must be 51 to 65535 bytes (LoRaWAN allows at most 242)")
    _check_file(cs, "api_token_file", chirpstack.api_token_file)
    _check_file(cs, "api_ca_file", chirpstack.api_ca_file)
    if chirpstack.api_url and not chirpstack.api_token_file:
        problems.append("chirpstack.api_token_file: is required with api_url")
    if chirpstack.api_url and _has_credentials(chirpstack.api_url):
        # The URL itself is never echoed: the credentials in it must not reach the journal.
        problems.append("chirpstack.api_url: must not carry credentials (user:password@); use api_token_file")
    elif chirpstack.api_url and not _api_url_ok(chirpstack.api_url):
        problems.append("chirpstack.api_url: must be host:port, http://host:port or https://host[:port]")
    if not 0 <= chirpstack.api_sync_interval_s <= MAX_WAIT_S:
        problems.append(f"chirpstack.api_sync_interval_s: must be 0 (only at start) or more, at most {MAX_WAIT_S:g}")
    if chirpstack.api_timeout_s > MAX_WAIT_S:
        problems.append(f"chirpstack.api_timeout_s: must be at most {MAX_WAIT_S:g}")
    cs.done()

    dec = _Reader(top.get("decoding", dict, {}), "decoding", problems)
    rules: list[DecoderRuleConfig] = []
    for i, raw in enumerate(dec.get("rule", list, [])):
        rr = _Reader(raw, f"decoding.rule[{i}]", problems)
        rule = DecoderRuleConfig(
            decoder=rr.get("decoder", str, "", required=True),
            dev_eui=tuple(e.lower() for e in rr.strings("dev_eui")),
            device_profile=rr.strings("device_profile"),
            application=rr.strings("application"),
        )
        if not (rule.dev_eui or rule.device_profile or rule.application):
            problems.append(f"decoding.rule[{i}]: needs dev_eui, device_profile or application")
        rr.done()
        rules.append(rule)
    decoding = DecodingConfig(
        use_chirpstack_object=dec.get("use_chirpstack_object", bool, True),
        tag=dec.get("tag", str, "decoder"),
        rules=tuple(rules),
        plugins_allow=dec.strings("plugins_allow"),
        plugins_block=dec.strings("plugins_block"),
        codec_paths=dec.strings("codec_paths"),
        js_time_limit_ms=dec.positive("js_time_limit_ms", int, 100),
        js_memory_limit_mb=dec.positive("js_memory_limit_mb", int, 16),
        cooldown_timeouts=dec.get("cooldown_timeouts", int, 3),
        cooldown_window_s=dec.positive("cooldown_window_s", float, 60.0),
        cooldown_s=dec.positive("cooldown_s", float, 60.0),
        object_maps=_object_maps(dec.get("object_maps", dict, {}), problems),
        map_paths=dec.strings("map_paths"),
    )
    if not 0 <= decoding.cooldown_timeouts <= 1000:
        problems.append("decoding.cooldown_timeouts: must be 0 (never cool down) to 1000")
    for key in ("cooldown_window_s", "cooldown_s"):
        if getattr(decoding, key) > 86400:
            problems.append(f"decoding.{key}: must be at most 86400 (a day)")
    if decoding.js_time_limit_ms / 1000 > MAX_WAIT_S:
        problems.append(f"decoding.js_time_limit_ms: must be at most {MAX_WAIT_S * 1000:g}")
    if decoding.js_memory_limit_mb > MAX_JS_MEMORY_MB:
        problems.append(f"decoding.js_memory_limit_mb: must be at most {MAX_JS_MEMORY_MB} (a 32-bit size)")
    for i, map_path in enumerate(decoding.map_paths):
        if not Path(map_path).is_dir():
            problems.append(f"decoding.map_paths[{i}]: {map_path!r} is not a folder")
    for i, codec_path in enumerate(decoding.codec_paths):
        if not Path(codec_path).exists():
            problems.append(f"decoding.codec_paths[{i}]: {codec_path!r} does not exist")
    dec.done()

    buf = _Reader(top.get("buffer", dict, {}), "buffer", problems)
    buffer = BufferConfig(
        path=buf.get("path", str, BufferConfig.path),
        max_size_mb=buf.positive("max_size_mb", float, BufferConfig.max_size_mb),
        batch_max=buf.positive("batch_max", int, BufferConfig.batch_max),
        batch_ms=buf.positive("batch_ms", int, BufferConfig.batch_ms),
    )
    if buffer.batch_ms / 1000 > MAX_WAIT_S:
        problems.append(f"buffer.batch_ms: must be at most {MAX_WAIT_S * 1000:g}")
    buf.done()

    wr = _Reader(top.get("web", dict, {}), "web", problems)
    web = WebConfig(
        bind=wr.get("bind", str, WebConfig.bind),
        port=wr.get("port", int, WebConfig.port),
        token_file=wr.get("token_file", str, ""),
        stuck_after_s=wr.positive("stuck_after_s", float, WebConfig.stuck_after_s),
        disconnected_after_s=wr.positive("disconnected_after_s", float, WebConfig.disconnected_after_s),
    )
    _check_file(wr, "token_file", web.token_file)
    if web.stuck_after_s > MAX_WAIT_S:
        problems.append(f"web.stuck_after_s: must be at most {MAX_WAIT_S:g}")
    if not 0 <= web.port <= 65535:
        problems.append("web.port: must be 0 (off) or a TCP port up to 65535")
    if not web.token_file and not _loopback(web.bind):
        problems.append("web.token_file: is required when web.bind is not a loopback address (127.0.0.1, ::1)")
    wr.done()

    health = _health(top, problems)

    upstreams: list[UpstreamConfig] = []
    raw_ups = top.get("upstream", list, [])
    raw_http = top.get("http_upstream", list, [])
    if not raw_ups and not raw_http:
        problems.append("upstream: at least one [[upstream]] (MQTT) or [[http_upstream]] is required")
    names: set[str] = set()

    def upstream_name(ur: _Reader, i: int) -> str:
        name: str = ur.get("name", str, f"upstream{i}", required=True)
        if name in names:
            problems.append(f"{ur.key('name')}: {name!r} is used twice (names key each upstream's progress)")
        if not name.replace("-", "").replace("_", "").isalnum():
            problems.append(f"{ur.key('name')}: use letters, digits, '-' and '_' only")
        names.add(name)
        return name

    for i, raw in enumerate(raw_ups):
        ur = _Reader(raw, f"upstream[{i}]", problems)
        name = upstream_name(ur, i)
        up = UpstreamConfig(
            name=name,
            mqtt=_mqtt(ur, "url", f"lorawan-edge-{{edge_id}}-{name}", edge_id),
            format=ur.get("format", str, "senml+json"),
            topic=_topic(ur, "topic", UpstreamConfig.topic),
            link_topic=_topic(ur, "link_topic", UpstreamConfig.link_topic, allow_empty=True),
            notice_topic=_topic(ur, "notice_topic", UpstreamConfig.notice_topic),
            health_topic=_topic(ur, "health_topic", UpstreamConfig.health_topic, allow_empty=True),
            qos=ur.get("qos", int, 1),
            max_inflight=ur.positive("max_inflight", int, UpstreamConfig.max_inflight),
            max_message_bytes=ur.positive("max_message_bytes", int, UpstreamConfig.max_message_bytes),
            one_uplink_per_message=ur.get("one_uplink_per_message", bool, False),
            read_batch=ur.positive("read_batch", int, UpstreamConfig.read_batch),
            share=_share(ur),
            command_topic=_topic(ur, "command_topic", "", allow_empty=True),
            command_devices=tuple(e.lower() for e in ur.strings("command_devices")),
            command_max_age_s=ur.positive("command_max_age_s", float, UpstreamConfig.command_max_age_s),
            command_max_per_hour=ur.positive("command_max_per_hour", int, UpstreamConfig.command_max_per_hour),
        )
        if up.command_topic and not up.command_devices:
            problems.append(f"upstream[{i}].command_devices: downlink commands need an allow-list of DevEUIs")
        if up.command_topic and not chirpstack.api_url:
            problems.append(f"upstream[{i}].command_topic: downlink commands go through ChirpStack's API;"
                            " set chirpstack.api_url and api_token_file")
        if up.format not in FORMATS:
            problems.append(f"upstream[{i}].format: must be one of {', '.join(FORMATS)}")
        if up.qos not in (1, 2):
            problems.append(f"upstream[{i}].qos: must be 1 or 2 (QoS 0 cannot be acknowledged)")
        if up.max_message_bytes < 1024:
            problems.append(f"upstream[{i}].max_message_bytes: must be at least 1024")
        elif up.max_message_bytes > MAX_PACKET_BYTES:
            problems.append(f"upstream[{i}].max_message_bytes: must be at most {MAX_PACKET_BYTES}"
                            " (the largest MQTT packet)")
        if up.max_inflight > MAX_INFLIGHT:
            problems.append(f"upstream[{i}].max_inflight: must be at most {MAX_INFLIGHT} (MQTT packet identifiers)")
        if up.command_max_age_s > MAX_WAIT_S:
            problems.append(f"upstream[{i}].command_max_age_s: must be at most {MAX_WAIT_S:g}")
        ur.done()
        upstreams.append(up)
    http_upstreams: list[HttpUpstreamConfig] = []
    for i, raw in enumerate(raw_http):
        hr = _Reader(raw, f"http_upstream[{i}]", problems)
        name = upstream_name(hr, i)
        endpoint = hr.get("endpoint", str, "", required=True)
        if endpoint and urlsplit(endpoint).scheme not in ("http", "https"):
            problems.append(f"{hr.key('endpoint')}: must be an http:// or https:// URL")
        headers = hr.get("headers", dict, {})
        http = HttpUpstreamConfig(
            name=name, endpoint=endpoint, format=hr.get("format", str, "ngsi-ld"),
            bearer_token_file=hr.get("bearer_token_file", str, ""), ca_file=hr.get("ca_file", str, ""),
            cert_file=hr.get("cert_file", str, ""), key_file=hr.get("key_file", str, ""),
            timeout_s=hr.positive("timeout_s", float, 10.0), max_batch=hr.positive("max_batch", int, 100),
            backoff_min_s=hr.positive("backoff_min_s", float, 1.0),
            backoff_max_s=hr.positive("backoff_max_s", float, 60.0),
            retry_after_max_s=hr.positive("retry_after_max_s", float, 600.0),
            headers=tuple((str(k), str(v)) for k, v in headers.items()),
            notice_endpoint=hr.get("notice_endpoint", str, ""), proxy=hr.get("proxy", str, ""),
            one_uplink_per_message=hr.get("one_uplink_per_message", bool, False),
            share=_share(hr), ngsi_ld=_ngsi_ld(hr),
        )
        for key in ("bearer_token_file", "ca_file", "cert_file", "key_file"):
            _check_file(hr, key, getattr(http, key))
        if http.format not in (*FORMATS, "ngsi-ld"):
            problems.append(f"{hr.key('format')}: must be ngsi-ld, senml+json or senml+cbor")
        if http.format == "ngsi-ld" and endpoint:
            _ngsi_ld_endpoint(hr, endpoint)
        if not http.backoff_min_s <= http.backoff_max_s:
            problems.append(f"{hr.key('backoff_max_s')}: must be at least backoff_min_s ({http.backoff_min_s:g})")
        for key in ("timeout_s", "backoff_max_s", "retry_after_max_s"):
            if getattr(http, key) > MAX_WAIT_S:
                problems.append(f"{hr.key(key)}: must be at most {MAX_WAIT_S:g}")
        if http.endpoint.startswith("http://") and (http.ca_file or http.cert_file):
            problems.append(f"{hr.key('endpoint')}: TLS files are set but the endpoint is not https://")
        hr.done()
        http_upstreams.append(http)
    top.done()
    if problems:
        raise ConfigError(problems)
    return Config(edge_id=edge_id, chirpstack=chirpstack, buffer=buffer, upstreams=tuple(upstreams),
                  decoding=decoding, log_level=log_level, source_path=source_path,
                  http_upstreams=tuple(http_upstreams), web=web, health=health)


def _health(top: _Reader, problems: list[str]) -> HealthConfig:
    hr = _Reader(top.get("health", dict, {}), "health", problems)
    d = HealthConfig
    intervals = []
    for i, raw in enumerate(hr.get("interval", list, [])):
        ir = _Reader(raw, f"health.interval[{i}]", problems)
        rule = HealthIntervalRule(interval_s=ir.get("interval_s", float, 0.0, required=True),
                                  dev_eui=tuple(e.lower() for e in ir.strings("dev_eui")),
                                  device_profile=ir.strings("device_profile"), application=ir.strings("application"),
                                  tag=ir.strings("tag"))
        if rule.interval_s <= 0:
            problems.append(f"health.interval[{i}].interval_s: must be greater than 0")
        if not (rule.dev_eui or rule.device_profile or rule.application or rule.tag):
            problems.append(f"health.interval[{i}]: needs dev_eui, device_profile, application or tag")
        if any("=" not in t for t in rule.tag):
            problems.append(f"health.interval[{i}].tag: each must be key=value")
        ir.done()
        intervals.append(rule)
    batteries = []
    for i, raw in enumerate(hr.get("battery", list, [])):
        br = _Reader(raw, f"health.battery[{i}]", problems)
        batteries.append(HealthBatteryRule(
            low_percent=br.get("low_percent", float, d.battery_low_percent),
            low_voltage=br.get("low_voltage", float, d.battery_low_voltage),
            dev_eui=tuple(e.lower() for e in br.strings("dev_eui")), device_profile=br.strings("device_profile")))
        br.done()
    health = HealthConfig(
        enabled=hr.get("enabled", bool, True),
        silent_factor=hr.positive("silent_factor", float, d.silent_factor),
        learn_uplinks=hr.positive("learn_uplinks", int, d.learn_uplinks),
        min_interval_s=hr.positive("min_interval_s", float, d.min_interval_s),
        check_interval_s=hr.positive("check_interval_s", float, d.check_interval_s),
        loss_window=hr.positive("loss_window", int, d.loss_window),
        lossy_ratio=hr.positive("lossy_ratio", float, d.lossy_ratio),
        stuck_uplinks=hr.positive("stuck_uplinks", int, d.stuck_uplinks),
        battery_low_percent=hr.get("battery_low_percent", float, d.battery_low_percent),
        battery_low_voltage=hr.get("battery_low_voltage", float, d.battery_low_voltage),
        intervals=tuple(intervals), batteries=tuple(batteries))
    if health.silent_factor < 1:
        problems.append("health.silent_factor: must be at least 1 (a multiple of the expected interval)")
    if health.learn_uplinks < 2:
        problems.append("health.learn_uplinks: must be at least 2 (an interval needs two uplinks)")
    if not 0 < health.lossy_ratio < 1:
        problems.append("health.lossy_ratio: must be between 0 and 1")
    if health.loss_window > 100000:
        problems.append("health.loss_window: must be at most 100000 uplinks")
    hr.done()
    return health


def _ngsi_ld_endpoint(r: _Reader, endpoint: str) -> None:
    """An NGSI-LD upstream posts batches of entities: only the batch upsert URL, with options=update, takes them."""
    parts = urlsplit(endpoint)
    want = "<broker>/ngsi-ld/v1/entityOperations/upsert?options=update"
    if parts.path.rstrip("/") in ("", "/ngsi-ld/v1", "/ngsi-ld/v1/entities"):
        r.problems.append(f"{r.key('endpoint')}: give the batch upsert URL, {want}")
    elif parts.path.rstrip("/").endswith("/entityOperations/upsert") and "options=update" not in parts.query:
        # Without it the broker replaces whole entities, deleting attributes other systems wrote.
        r.problems.append(f"{r.key('endpoint')}: add ?options=update ({want})")


def _share(parent: _Reader) -> ShareRules:
    """The optional `share` table of an upstream."""
    if "share" not in parent.table:
        parent.used.add("share")
        return ShareRules()
    r = _Reader(parent.get("share", dict, {}), parent.key("share"), parent.problems)
    tags = r.get("tags", dict, {})
    rounding = r.get("round", dict, {})
    rules = ShareRules(
        devices=tuple(e.lower() for e in r.strings("devices")),
        applications=r.strings("applications"),
        device_profiles=r.strings("device_profiles"),
        tags=tuple((str(k), str(v)) for k, v in tags.items()),
        quantities=r.strings("quantities"),
        drop_quantities=r.strings("drop_quantities"),
        radio=r.get("radio", bool, True),
        round=tuple((str(k), v) for k, v in rounding.items() if isinstance(v, int) and not isinstance(v, bool)),
        thin_s=r.get("thin_s", float, 0.0),
        enrich=r.strings("enrich"),
    )
    bad = [e for e in rules.enrich if e not in ("name", "application", "device_profile") and not
           (e.startswith("tag:") and len(e) > 4)]
    if bad:
        r.problems.append(f"{r.key('enrich')}: use name, application, device_profile or tag:<key>; not {bad}")
    if len(rules.round) != len(rounding) or any(not 0 <= d <= 12 for _, d in rules.round):
        r.problems.append(f"{r.key('round')}: each value must be a number of decimals from 0 to 12")
    not_eui = [d for d in rules.devices if len(d) != 16 or any(c not in "0123456789abcdef" for c in d)]
    if not_eui:
        # A mistyped DevEUI would silently select nothing.
        r.problems.append(f"{r.key('devices')}: not DevEUIs (16 hex digits): {', '.join(not_eui)}")
    if not 0 <= rules.thin_s <= MAX_WAIT_S:
        r.problems.append(f"{r.key('thin_s')}: must be 0 (off) or more seconds, at most {MAX_WAIT_S:g}")
    from edge.vocabulary import BY_NAME

    for key, names in (("quantities", rules.quantities), ("drop_quantities", rules.drop_quantities),
                       ("round", [q for q, _ in rules.round if q != "*"])):
        unknown = [q for q in names if q not in BY_NAME]
        if unknown:
            r.problems.append(f"{r.key(key)}: not in the vocabulary (docs/vocabulary.md): {', '.join(unknown)}")
    r.done()
    return rules


def _ngsi_ld(parent: _Reader) -> NgsiLdConfig:
    """The optional `ngsi_ld` table of an HTTP upstream."""
    if "ngsi_ld" not in parent.table:
        parent.used.add("ngsi_ld")
        return NgsiLdConfig()
    r = _Reader(parent.get("ngsi_ld", dict, {}), parent.key("ngsi_ld"), parent.problems)
    locations = []
    for dev, pos in r.get("locations", dict, {}).items():
        if (isinstance(pos, list) and len(pos) == 2 and all(isinstance(x, int | float) for x in pos)
                and -90 <= pos[0] <= 90 and -180 <= pos[1] <= 180):
            locations.append((str(dev).lower(), float(pos[0]), float(pos[1])))
        else:
            r.problems.append(f"{r.key('locations')}.{dev}: must be [latitude, longitude] in degrees")
    attributes = r.get("attributes", list, [])
    if not all(isinstance(a, dict) for a in attributes):
        r.problems.append(f"{r.key('attributes')}: must be a list of tables")
        attributes = []
    cfg = NgsiLdConfig(
        entity_type=r.get("entity_type", str, ""),
        climate_type=r.get("climate_type", str, "IndoorEnvironmentObserved"),
        device_entity=r.get("device_entity", bool, True),
        batch_size=r.positive("batch_size", int, 100),
        locations=tuple(locations),
        device_types=tuple((str(k).lower(), str(v)) for k, v in r.get("device_types", dict, {}).items()),
        attributes=tuple(attributes),
    )
    if cfg.climate_type not in ("IndoorEnvironmentObserved", "WeatherObserved"):
        r.problems.append(f"{r.key('climate_type')}: must be IndoorEnvironmentObserved or WeatherObserved")
    r.done()
    return cfg


def secret_files(cfg: Config) -> list[tuple[str, str]]:
    """(config key, path) of every file that holds a secret: passwords, tokens, private keys."""
    found: list[tuple[str, str]] = []

    def add(key: str, path: str) -> None:
        if path:
            found.append((key, path))

    for where, endpoint in (("chirpstack", cfg.chirpstack.mqtt),
                            *((f"upstream {u.name}", u.mqtt) for u in cfg.upstreams)):
        add(f"{where}: password_file", endpoint.password_file)
        add(f"{where}: key_file", endpoint.key_file)
    add("chirpstack.api_token_file", cfg.chirpstack.api_token_file)
    for http in cfg.http_upstreams:
        add(f"http_upstream {http.name}: bearer_token_file", http.bearer_token_file)
        add(f"http_upstream {http.name}: key_file", http.key_file)
    add("web.token_file", cfg.web.token_file)
    return found


def secret_file_warnings(cfg: Config) -> list[str]:
    """A sentence per secret file that users other than its owner may read (group or others)."""
    out = []
    for key, path in secret_files(cfg):
        try:
            mode = os.stat(path).st_mode
        except OSError:
            continue  # a missing file is a validation problem of its own
        if mode & (stat.S_IRGRP | stat.S_IROTH):
            who = " and ".join(w for w, bit in (("its group", stat.S_IRGRP), ("all users", stat.S_IROTH)) if mode & bit)
            out.append(f"{key}: {path} holds a secret but {who} may read it (mode {stat.S_IMODE(mode):04o});"
                       f" `chmod 600 {path}` (owned by the service's user)")
    return out


def _object_maps(raw: Mapping[str, Any], problems: list[str]) -> dict[str, str]:
    """decoding.object_maps: profile name or id -> `<catalogue>:<id>` of a field map."""
    out: dict[str, str] = {}
    for profile, key in raw.items():
        if not isinstance(key, str) or not re.match(r"^(ttn|chirpstack|native|object):[^\s:]+$", key):
            problems.append(f"decoding.object_maps.{profile}: {key!r} is not a field map key like"
                            " \"ttn:elsys/elsys\" (<catalogue>:<id>, catalogue ttn, chirpstack, native or object)")
            continue
        out[str(profile)] = key
    return out


def load_config(path: str | Path) -> Config:
    """Read the TOML file at `path`, its drop-in directory and EDGE__ overrides, and validate.

    Layering (edge/config_layers.py, deploy/fleet.md): `edge.toml`, then `edge.d/*.toml` in name
    order, then environment variables such as EDGE__EDGE__ID or EDGE__UPSTREAM__CITY__QOS.
    """
    from edge.config_layers import load_layers  # layering is only needed when reading files

    return parse_config(load_layers(Path(path)), str(path))


def describe(cfg: Config) -> dict[str, Any]:
    """The effective configuration as plain data, without secrets (for `edge validate --show`)."""

    def plain(obj: Any) -> Any:
        if hasattr(obj, "__dataclass_fields__"):
            return {f.name: plain(getattr(obj, f.name)) for f in fields(obj)}
        if isinstance(obj, tuple | list):
            return [plain(v) for v in obj]
        return obj

    result: dict[str, Any] = plain(cfg)
    return result
