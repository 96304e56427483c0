"""The upstream sections ([[upstream]], [[http_upstream]]) and their sharing and NGSI-LD tables, declared once.

Declared as in edge/config/sections.py: each key's type, default, bounds and one-line doc on its field.
"""

from dataclasses import dataclass, field
from typing import Annotated, Any

from msgspec import Meta

from edge.config.sections import (
    MAX_INFLIGHT,
    MAX_PACKET_BYTES,
    MAX_WAIT_S,
    DevEuis,
    MqttEndpoint,
    Positive,
    Wait,
    choice,
)

FORMATS = ("senml+json", "senml+cbor")
# A DevEUI's position: latitude and longitude in degrees.
Latitude = Annotated[float, Meta(ge=-90, le=90)]
Longitude = Annotated[float, Meta(ge=-180, le=180)]


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

    devices: Annotated[DevEuis, Meta(description="Only these DevEUIs.")] = ()
    applications: Annotated[tuple[str, ...], Meta(description="Only devices of these application names or"
                                                              " ids.")] = ()
    device_profiles: Annotated[tuple[str, ...], Meta(description="Only devices of these device profile names or"
                                                                 " ids.")] = ()
    tags: Annotated[tuple[tuple[str, str], ...], Meta(description="Only devices with all these ChirpStack tags,"
                                                                  " e.g. { owner = \"contractor-a\" }.")] = ()
    quantities: Annotated[tuple[str, ...], Meta(description="Only these quantities (docs/vocabulary.md).")] = ()
    drop_quantities: Annotated[tuple[str, ...], Meta(description="Never these quantities.")] = ()
    radio: Annotated[bool, Meta(description="false: send no radio metadata (RSSI, SNR, gateway).")] = True
    round: Annotated[tuple[tuple[str, Annotated[int, Meta(ge=0, le=12)]], ...], Meta(description="Decimals per"
                     ' quantity in its vocabulary unit, "*" for every quantity.', extra={"problem": "each value"
                     " must be a number of decimals from 0 to 12"})] = ()
    thin_s: Annotated[float, Meta(ge=0, le=MAX_WAIT_S, description="At most one uplink per device per this many"
                                  " seconds; 0: every uplink.", extra={"problem": "must be 0 (off) or more seconds,"
                                  f" at most {MAX_WAIT_S:g}"})] = 0.0
    enrich: Annotated[tuple[str, ...], Meta(description='Device metadata added as string records: "name",'
                                                        ' "application", "device_profile" or "tag:<key>".')] = ()

    @property
    def selects_devices(self) -> bool:
        """True when some device selector is set."""
        return bool(self.devices or self.applications or self.device_profiles or self.tags)


@dataclass(frozen=True)
class NgsiLdConfig:
    """How an HTTP upstream in NGSI-LD format builds its entities (`ngsi_ld` table)."""

    entity_type: Annotated[str, Meta(description="One entity type for every device; empty: chosen from the"
                                                 " readings.")] = ""
    climate_type: Annotated[str, Meta(pattern=choice("IndoorEnvironmentObserved", "WeatherObserved"),
                                      description="The type for climate-only sensors.", extra={"problem": "must be"
                                      " IndoorEnvironmentObserved or WeatherObserved"})] = "IndoorEnvironmentObserved"
    device_entity: Annotated[bool, Meta(description="Also upsert a Device entity per device and link it.")] = True
    batch_size: Annotated[int, Positive, Meta(description="The most entities in one upsert request.")] = 100
    locations: Annotated[tuple[tuple[str, Latitude, Longitude], ...], Meta(description="Device positions: {"
                         " <dev_eui> = [latitude, longitude] }.", extra={"lower": True, "entry_problem": "must be"
                         " [latitude, longitude] in degrees"})] = ()
    device_types: Annotated[tuple[tuple[str, str], ...], Meta(description="An entity type per device: {"
                            ' <dev_eui> = "WeatherObserved" }.', extra={"lower": True})] = ()
    attributes: Annotated[tuple[dict[str, Any], ...], Meta(description="Extra or replacing reading -> attribute"
                                                                       " mappings.")] = ()


@dataclass(frozen=True)
class UpstreamConfig:
    """One destination broker with its own format, topics and progress."""

    name: Annotated[str, Meta(description="A short name keying the upstream's progress: letters, digits, '-' and"
                                          " '_'.")]
    # The endpoint's keys sit in the [[upstream]] entry itself.
    mqtt: MqttEndpoint = field(metadata={"inline": {}, "templates": {"client_id": "lorawan-edge-{edge_id}-<name>"}})
    format: Annotated[str, Meta(pattern=choice(*FORMATS), description='"senml+json" or "senml+cbor".',
                                extra={"problem": f"must be one of {', '.join(FORMATS)}"})] = "senml+json"
    topic: Annotated[str, Meta(min_length=1, description="Topic of the measurements.")] = "lorawan/{dev_eui}"
    link_topic: Annotated[str, Meta(description='Topic of the radio metadata; "" sends none.')] = \
        "lorawan/{dev_eui}/link"
    notice_topic: Annotated[str, Meta(min_length=1, description="Topic of gap notices (JSON).")] = \
        "lorawan-edge/{edge_id}/notice"
    health_topic: Annotated[str, Meta(description='Topic of sensor health notices; "" sends none.')] = \
        "lorawan/{dev_eui}/health"
    qos: Annotated[int, Meta(ge=1, le=2, description="QoS 1 or 2.", extra={"problem": "must be 1 or 2 (QoS 0 cannot"
                                                                                      " be acknowledged)"})] = 1
    max_inflight: Annotated[int, Meta(gt=0, le=MAX_INFLIGHT, description="Unacknowledged messages in flight at"
                                      " once.", extra={"high": "must be at most 65535 (MQTT packet"
                                                               " identifiers)"})] = 20
    max_message_bytes: Annotated[int, Meta(ge=1024, le=MAX_PACKET_BYTES, description="Consecutive uplinks of a"
                                           " device share a pack up to this size.", extra={"high": "must be at most"
                                           f" {MAX_PACKET_BYTES} (the largest MQTT packet)"})] = 65536
    one_uplink_per_message: Annotated[bool, Meta(description="One uplink per message, for receivers that read"
                                                             " only a pack's first base values.")] = False
    read_batch: Annotated[int, Positive, Meta(description="The most uplinks one read of the backlog covers.")] = 50000
    share: ShareRules = field(default_factory=ShareRules)
    command_topic: Annotated[str, Meta(description="Topic of downlink commands from this destination; empty:"
                                                   " off.")] = ""
    command_devices: Annotated[DevEuis, Meta(description="DevEUIs downlink commands may go to.")] = ()
    command_max_age_s: Annotated[float, Wait, Meta(description="Older commands are refused.")] = 600.0
    command_max_per_hour: Annotated[int, Positive, Meta(description="Commands per device per hour at most.")] = 12


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

    name: Annotated[str, Meta(description="A short name keying the upstream's progress: letters, digits, '-' and"
                                          " '_'.")]
    endpoint: Annotated[str, Meta(description="The http:// or https:// URL to POST to.")]
    format: Annotated[str, Meta(pattern=choice("ngsi-ld", *FORMATS), description='"ngsi-ld", "senml+json" or'
                                ' "senml+cbor".', extra={"problem": "must be ngsi-ld, senml+json or"
                                                                    " senml+cbor"})] = "ngsi-ld"
    bearer_token_file: Annotated[str, Meta(description="A file holding a bearer token; re-read after a 401.")] = ""
    ca_file: Annotated[str, Meta(description="CA bundle to verify the server; empty: the system's roots.")] = ""
    cert_file: Annotated[str, Meta(description="Client certificate for mTLS.")] = ""
    key_file: Annotated[str, Meta(description="The client certificate's key, if not in cert_file.")] = ""
    timeout_s: Annotated[float, Wait, Meta(description="Timeout of one request.")] = 10.0
    max_batch: Annotated[int, Positive, Meta(description="Uplinks read and settled together.")] = 100
    backoff_min_s: Annotated[float, Positive, Meta(description="The first retry delay (jittered).")] = 1.0
    backoff_max_s: Annotated[float, Wait, Meta(description="The longest retry delay without a Retry-After.")] = 60.0
    retry_after_max_s: Annotated[float, Wait, Meta(description="The longest Retry-After honoured.")] = 600.0
    headers: Annotated[tuple[tuple[str, str], ...], Meta(description="Extra request headers, e.g. {"
                                                                     ' NGSILD-Tenant = "city" }.')] = ()
    notice_endpoint: Annotated[str, Meta(description="Where gap notices are POSTed as JSON; empty: they stay in the"
                                                     " buffer.")] = ""
    proxy: Annotated[str, Meta(description="An HTTP(S) proxy URL; the environment's proxy variables are not"
                                           " used.")] = ""
    one_uplink_per_message: Annotated[bool, Meta(description="SenML formats: one uplink per request.")] = False
    share: ShareRules = field(default_factory=lambda: ShareRules())
    ngsi_ld: NgsiLdConfig = field(default_factory=lambda: NgsiLdConfig())
