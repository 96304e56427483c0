"""The configuration's sections other than the upstreams, each key declared once: type, default, bounds, one-line doc.

Bounds are msgspec `Meta` constraints, checked when edge/config/tables.py converts a TOML value. A
Meta's `extra` holds what msgspec has no word for:
- "problem": our wording of a value refused (`{value}` is the value given), "low"/"high" of one side of
  a range; without them the wording is made from the bound ("must be at most 4095");
- "entry_problem": a table's entries are converted one by one, a bad one named as `key.entry`;
- "lower": the strings (or a table's keys) are taken lower-case; "int_as_text": an integer is its text.
The rules a bound cannot state (files, URLs, topics, one key against another) are in edge/config/checks.py.
"""

import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from msgspec import Meta

# Bounds the protocols and the OS set (checked by `edge validate`):
MAX_PORT = 65535  # TCP
MAX_KEEPALIVE_S = 65535  # MQTT Keep Alive is a two-byte integer (MQTT 5 §3.1.2.10)
MAX_INFLIGHT = 65535  # MQTT packet identifiers are two bytes, so no more can be unacknowledged at once
MAX_PACKET_BYTES = 268_435_455  # the largest MQTT packet a Remaining Length can describe (MQTT 5 §1.5.5)
MAX_JS_MEMORY_MB = 4095  # the JS runtime's memory limit is a size_t: 32 bits on a 32-bit Raspberry Pi OS
MAX_WAIT_S = threading.TIMEOUT_MAX  # the longest timeout a thread may wait (larger ones raise OverflowError)
# Whole seconds and milliseconds within MAX_WAIT_S, for integer keys (msgspec bounds an int by an int).
MAX_WAIT_WHOLE_S = int(MAX_WAIT_S)
MAX_WAIT_MS = int(MAX_WAIT_S * 1000)
# The gateway's id goes into topics and client ids: letters, digits and a few marks, no MQTT wildcards.
EDGE_ID = re.compile(r"[A-Za-z0-9._:@=~-]{1,128}")


def choice(*values: str) -> str:
    """A pattern matching exactly one of `values` (\\Z, not $, which would also take a trailing newline)."""
    return "^(" + "|".join(re.escape(v) for v in values) + r")\Z"


# Bounds shared by many keys.
Positive = Meta(gt=0)
# A wait in seconds: more than 0 and no longer than a thread may wait.
Wait = Meta(gt=0, le=MAX_WAIT_S)
# A list of DevEUIs, compared lower-case.
DevEuis = Annotated[tuple[str, ...], Meta(extra={"lower": True})]


@dataclass(frozen=True)
class MqttEndpoint:
    """Connection settings shared by the ChirpStack source and MQTT upstreams (keys of [chirpstack], [[upstream]])."""

    url: Annotated[str, Meta(description="The broker: mqtt://host[:port] or mqtts://host[:port] for TLS; never"
                                         " credentials.")]
    client_id: Annotated[str, Meta(description='A fixed client id under which the broker keeps our session;'
                                               ' "{edge_id}" is replaced by [edge] id.')]
    username: Annotated[str, Meta(description="The username.")] = ""
    password_file: Annotated[str, Meta(description="A file holding the password, read at each connect; never"
                                                   " logged.")] = ""
    ca_file: Annotated[str, Meta(description="CA bundle to verify the broker (mqtts://); empty: the system's"
                                             " roots.")] = ""
    cert_file: Annotated[str, Meta(description="Client certificate for mTLS (with key_file).")] = ""
    key_file: Annotated[str, Meta(description="The client certificate's key (with cert_file).")] = ""
    protocol: Annotated[str, Meta(pattern=choice("5", "3.1.1"), description='MQTT protocol version: "5" or'
                                  ' "3.1.1".', extra={"problem": 'must be "5" or "3.1.1"', "int_as_text": True})] = "5"
    keepalive_s: Annotated[int, Meta(ge=0, le=MAX_KEEPALIVE_S, description="Seconds of broker silence taken as"
                                     " gone; 0 turns it off.", extra={"problem": "must be 0 to 65535 (MQTT keeps it"
                                     " in two bytes; 0 turns it off), got {value}"})] = 30
    reconnect_min_s: Annotated[float, Positive, Meta(description="The first reconnect delay (full jitter,"
                                                                 " doubling).")] = 0.5
    reconnect_max_s: Annotated[float, Positive, Meta(description="The longest reconnect delay.")] = 10.0

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

    # The endpoint's keys sit in [chirpstack] itself, its url as mqtt_url.
    mqtt: MqttEndpoint = field(metadata={"inline": {"url": "mqtt_url"},
                                         "templates": {"client_id": "lorawan-edge-{edge_id}"}})
    topic: Annotated[str, Meta(description="Topic filter for ChirpStack's integration events.")] = \
        "application/+/device/+/event/+"
    session_expiry_s: Annotated[int, Meta(ge=0, le=2**32 - 1, description="How long the broker keeps our session"
                                          " and queues events while we are down (MQTT 5).", extra={"problem":
                                          "must be 0 to 4294967295 (MQTT 5 keeps it in four bytes), got {value}"})] \
        = 30 * 24 * 3600
    max_packet_size_kb: Annotated[int, Meta(ge=1, le=262143, description="Largest MQTT packet accepted from the"
                                            " broker, in KiB.", extra={"problem": "must be 1 to 262143 (MQTT's"
                                            " largest packet is 256 MiB; ChirpStack events are 1-2 KB), got"
                                            " {value}"})] = 256
    api_url: Annotated[str, Meta(description="ChirpStack's gRPC API: host:port (plaintext) or https://host[:port];"
                                             " empty: no device cache.")] = ""
    api_token_file: Annotated[str, Meta(description="A file holding a ChirpStack API key; never logged.")] = ""
    tenant_id: Annotated[str, Meta(description="Sync only this tenant; empty: all an admin key sees.")] = ""
    api_ca_file: Annotated[str, Meta(description="CA certificate of the API's TLS endpoint; empty: the system's"
                                                 " roots.")] = ""
    api_timeout_s: Annotated[float, Wait, Meta(description="Deadline of each API call.")] = 10.0
    api_sync_interval_s: Annotated[int, Meta(ge=0, le=MAX_WAIT_WHOLE_S, description="Seconds between full syncs"
                                             " in `edge run`; 0: only at start.", extra={"problem": "must be 0"
                                             f" (only at start) or more, at most {MAX_WAIT_S:g}"})] = 3600
    max_payload_bytes: Annotated[int, Meta(ge=51, le=65535, description="Largest uplink FRMPayload accepted; a"
                                           " larger one is stored as malformed.", extra={"problem": "must be 51 to"
                                           " 65535 bytes (LoRaWAN allows at most 242)"})] = 256


@dataclass(frozen=True)
class DecoderRuleConfig:
    """A config rule choosing a decoder for devices."""

    decoder: Annotated[str, Meta(description="The decoder's id, e.g. elsys/ers.")]
    dev_eui: Annotated[DevEuis, Meta(description="DevEUIs it applies to.")] = ()
    device_profile: Annotated[tuple[str, ...], Meta(description="Device profile names or ids it applies to.")] = ()
    application: Annotated[tuple[str, ...], Meta(description="Application names or ids it applies to.")] = ()


# A field map key: <catalogue>:<id>.
ObjectMapKey = Annotated[str, Meta(pattern=r"^(ttn|chirpstack|native|object):[^\s:]+$")]


@dataclass(frozen=True)
class DecodingConfig:
    """How decoders are chosen."""

    use_chirpstack_object: Annotated[bool, Meta(description="Use ChirpStack's own codec output (`object`) for"
                                                            " devices no decoder here is chosen for.")] = True
    tag: Annotated[str, Meta(description="The device tag whose value names a decoder.")] = "decoder"
    rules: tuple[DecoderRuleConfig, ...] = field(default=(), metadata={"toml": "rule"})
    plugins_allow: Annotated[tuple[str, ...], Meta(description="If not empty, only these decoder plugin"
                                                               " distributions load.")] = ()
    plugins_block: Annotated[tuple[str, ...], Meta(description="Decoder plugin distributions that never"
                                                               " load.")] = ()
    codec_paths: Annotated[tuple[str, ...], Meta(description="TTN codec YAML files, or folders of them, run as"
                                                             " JavaScript decoders.")] = ()
    js_time_limit_ms: Annotated[int, Meta(gt=0, le=MAX_WAIT_MS, description="CPU time of one JavaScript decode.",
                                          extra={"high": f"must be at most {MAX_WAIT_S * 1000:g}"})] = 100
    js_memory_limit_mb: Annotated[int, Meta(gt=0, le=MAX_JS_MEMORY_MB, description="Memory of one JavaScript"
                                            " decode.", extra={"high": "must be at most 4095 (a 32-bit"
                                            " size)"})] = 16
    cooldown_timeouts: Annotated[int, Meta(ge=0, le=1000, description="Timeouts within cooldown_window_s that"
                                           " cool a decoder down; 0: never.", extra={"problem": "must be 0 (never"
                                           " cool down) to 1000"})] = 3
    cooldown_window_s: Annotated[float, Meta(gt=0, le=86400, description="The window the timeouts are counted in.",
                                             extra={"high": "must be at most 86400 (a day)"})] = 60.0
    cooldown_s: Annotated[float, Meta(gt=0, le=86400, description="How long a cooled-down decoder's uplinks are"
                                      " stored undecoded.", extra={"high": "must be at most 86400 (a day)"})] = 60.0
    # Device profile name or id -> field map key (`ttn:elsys/elsys`) for ChirpStack's `object`
    # and the profile's own JS codec (docs/field-maps.md).
    object_maps: Annotated[Mapping[str, ObjectMapKey], Meta(description="Field map per device profile name or id"
                           ' for `object` and profile codecs: "<catalogue>:<id>".', extra={"entry_problem":
                           '{value!r} is not a field map key like "ttn:elsys/elsys" (<catalogue>:<id>, catalogue'
                           ' ttn, chirpstack, native or object)'})] = field(default_factory=dict)
    # Folders of more field maps (YAML), beside the package's and plugins' maps.
    map_paths: Annotated[tuple[str, ...], Meta(description="Folders of more field maps (YAML).")] = ()


@dataclass(frozen=True)
class BufferConfig:
    """The SQLite store-and-forward buffer."""

    path: Annotated[str, Meta(description="The SQLite buffer file.")] = "/var/lib/lorawan-edge/buffer.sqlite"
    max_size_mb: Annotated[float, Positive, Meta(description="Upper bound of the database; past it the oldest"
                                                             " uplinks are dropped.")] = 1024.0
    batch_max: Annotated[int, Positive, Meta(description="A commit closes after this many messages (also the MQTT"
                                                         " 5 receive maximum).")] = 500
    batch_ms: Annotated[int, Meta(gt=0, le=MAX_WAIT_MS, description="A commit closes after this many"
                                  " milliseconds at most.",
                                  extra={"high": f"must be at most {MAX_WAIT_S * 1000:g}"})] = 30


@dataclass(frozen=True)
class WebConfig:
    """The status server (edge.web): Prometheus metrics, /health and the technician's status page."""

    bind: Annotated[str, Meta(description="Address to listen on; not loopback needs token_file.")] = "127.0.0.1"
    port: Annotated[int, Meta(ge=0, le=MAX_PORT, description="TCP port; 0 turns the server off.", extra={
                    "problem": "must be 0 (off) or a TCP port up to 65535"})] = 9108
    token_file: Annotated[str, Meta(description="A file holding the access token; never logged.")] = ""
    stuck_after_s: Annotated[float, Wait, Meta(description="/health fails when an upstream's oldest undelivered"
                                                           " uplink is older.")] = 900.0
    disconnected_after_s: Annotated[float, Positive, Meta(description="/health fails when an upstream has been"
                                                                      " unreachable this long.")] = 120.0

    def token(self) -> str | None:
        """The access token, read from its file at start (never stored in config or logs)."""
        if not self.token_file:
            return None
        return Path(self.token_file).read_text().strip()


@dataclass(frozen=True)
class HealthIntervalRule:
    """`[[health.interval]]`: the expected uplink interval of the devices it names (instead of learning it)."""

    interval_s: Annotated[float, Positive, Meta(description="The expected uplink interval.")]
    dev_eui: Annotated[DevEuis, Meta(description="DevEUIs it applies to.")] = ()
    device_profile: Annotated[tuple[str, ...], Meta(description="Device profile names or ids it applies to.")] = ()
    application: Annotated[tuple[str, ...], Meta(description="Application names or ids it applies to.")] = ()
    tag: Annotated[tuple[str, ...], Meta(description='Device tags it applies to, each "key=value".')] = ()


# The low-battery thresholds of [health], which [[health.battery]] rules override.
BATTERY_LOW_PERCENT = 20.0
BATTERY_LOW_VOLTAGE = 3.0


@dataclass(frozen=True)
class HealthBatteryRule:
    """`[[health.battery]]`: low-battery thresholds for the devices it names."""

    low_percent: Annotated[float, Meta(description="Low below this `battery` reading (%).")] = BATTERY_LOW_PERCENT
    low_voltage: Annotated[float, Meta(description="Low below this `battery-voltage` reading (V).")] = \
        BATTERY_LOW_VOLTAGE
    dev_eui: Annotated[DevEuis, Meta(description="DevEUIs it applies to.")] = ()
    device_profile: Annotated[tuple[str, ...], Meta(description="Device profile names or ids it applies to.")] = ()


@dataclass(frozen=True)
class HealthConfig:
    """`[health]`: sensor health (edge/health.py, docs/health.md)."""

    enabled: Annotated[bool, Meta(description="Track sensor health and send notices.")] = True
    silent_factor: Annotated[float, Meta(ge=1, description="A device is silent after this many expected"
                                         " intervals without an uplink.", extra={"low": "must be at least 1 (a"
                                         " multiple of the expected interval)"})] = 3.0
    learn_uplinks: Annotated[int, Meta(ge=2, description="Uplinks before a device's interval is learned.",
                                       extra={"low": "must be at least 2 (an interval needs two uplinks)"})] = 5
    min_interval_s: Annotated[float, Positive, Meta(description="The shortest interval ever assumed.")] = 30.0
    check_interval_s: Annotated[float, Positive, Meta(description="How often silence is judged and states"
                                                                  " written.")] = 10.0
    loss_window: Annotated[int, Meta(gt=0, le=100000, description="The loss ratio is over this many uplinks.",
                                     extra={"high": "must be at most 100000 uplinks"})] = 100
    lossy_ratio: Annotated[float, Meta(gt=0, lt=1, description="Above this loss ratio a device is lossy.",
                                       extra={"high": "must be between 0 and 1"})] = 0.2
    stuck_uplinks: Annotated[int, Positive, Meta(description="A reading unchanged for this many uplinks is"
                                                             " stuck.")] = 24
    battery_low_percent: Annotated[float, Meta(description="Low battery below this `battery` reading (%).")] = \
        BATTERY_LOW_PERCENT
    battery_low_voltage: Annotated[float, Meta(description="Low battery below this `battery-voltage` reading"
                                                           " (V).")] = BATTERY_LOW_VOLTAGE
    intervals: tuple[HealthIntervalRule, ...] = field(default=(), metadata={"toml": "interval"})
    batteries: tuple[HealthBatteryRule, ...] = field(default=(), metadata={"toml": "battery"})
