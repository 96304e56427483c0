"""Simulated ChirpStack v4 traffic: `up` events built with the chirpstack-api classes, published over MQTT."""

from __future__ import annotations

import base64
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

APPLICATION_ID = "5e0c2a4e-9d1b-4f7a-8c3e-2b6f1d0a9c11"
PROFILE_ID = "a4c1e7b2-3f5d-4e8a-9b0c-6d2e1f3a5b77"
TENANT_ID = "52f14cd4-c6f1-4fbd-8f87-4025e1d49242"
GATEWAY_IDS = ("0016c001f153a14c", "0016c001f153a14d")


def dev_eui_of(index: int) -> str:
    """The DevEUI of simulated device `index` (Elsys OUI a81758)."""
    return f"a81758fffe{index:06x}"


def elsys_payload(rng: random.Random, vdd_mv: int | None = None) -> bytes:
    """A realistic Elsys ERS payload: temperature, humidity, light, motion, supply voltage."""
    temp = round(rng.uniform(15.0, 28.0) * 10)
    vdd = rng.randint(3300, 3650) if vdd_mv is None else vdd_mv
    return (b"\x01" + temp.to_bytes(2, "big", signed=True) + b"\x02" + bytes([rng.randint(20, 80)])
            + b"\x04" + rng.randint(0, 2000).to_bytes(2, "big") + b"\x05" + bytes([rng.randint(0, 30)])
            + b"\x07" + vdd.to_bytes(2, "big"))


# Simulated misbehaviour, for sensor health (docs/health.md): a device that stops sending after a
# few uplinks, one whose every third frame is lost on the air, one that rejoins (its frame counter
# starts again) and one whose battery drains 40 mV an uplink.
SILENT, LOSSY, REJOIN, DRAINING = "silent", "lossy", "rejoin", "draining"


@dataclass(frozen=True, slots=True)
class SentUplink:
    """What the simulator published (tests compare upstream records against it)."""

    uplink_id: str
    dev_eui: str
    time: float
    payload: bytes
    fcnt: int


def _template(index: int, protobuf: bool) -> Any:
    # The chirpstack-api classes define the event; the template is serialised as ChirpStack v4
    # (pbjson since v4.1) does: every top-level scalar present, nested defaults left out.
    from chirpstack_api import common, gw, integration
    from google.protobuf import json_format

    event = integration.UplinkEvent(
        deduplication_id=str(uuid.UUID(int=0)),
        device_info=integration.DeviceInfo(
            tenant_id=TENANT_ID, tenant_name="ChirpStack", application_id=APPLICATION_ID,
            application_name="municipal-sensors", device_profile_id=PROFILE_ID,
            device_profile_name="Elsys ERS", device_name=f"ers-{index:04d}", dev_eui=dev_eui_of(index),
            device_class_enabled=common.DeviceClass.CLASS_A, tags={"decoder": "elsys/ers", "site": "demo"},
        ),
        dev_addr=f"{0x26000000 + index:08x}", adr=True, dr=5, f_cnt=0, f_port=5, confirmed=False,
        region_config_id="eu868",
        tx_info=gw.UplinkTxInfo(frequency=868100000, modulation=gw.Modulation(lora=gw.LoraModulationInfo(
            bandwidth=125000, spreading_factor=7, code_rate=gw.CodeRate.CR_4_5))),
    )
    event.rx_info.append(gw.UplinkRxInfo(gateway_id=GATEWAY_IDS[index % 2], uplink_id=1, rssi=-80, snr=7.5,
                                         channel=1, crc_status=gw.CRCStatus.CRC_OK,
                                         metadata={"region_config_id": "eu868", "region_common_name": "EU868"}))
    if protobuf:
        return event
    doc = json_format.MessageToDict(event, always_print_fields_with_no_presence=True)
    doc["rxInfo"] = [json_format.MessageToDict(event.rx_info[0])]
    doc["txInfo"] = json_format.MessageToDict(event.tx_info)
    return doc


class Simulator:
    """Builds uplink events for `devices` simulated Elsys ERS sensors."""

    def __init__(self, devices: int, *, protobuf: bool = False, seed: int | None = None, silent: int = 0,
                 lossy: int = 0, rejoin: int = 0, draining: int = 0, silent_after: int = 3) -> None:
        """Simulated devices, some of them misbehaving for sensor-health tests.

        Args:
            devices: how many devices in all; the first `silent`, then `lossy`, `rejoin` and
                `draining` ones misbehave that way, the rest are well.
            silent_after: uplinks a silent device sends before it stops.
        """
        self.devices = devices
        self.protobuf = protobuf
        self.rng = random.Random(seed)
        self._templates = [_template(i, protobuf) for i in range(devices)]
        self._fcnt = [0] * devices
        self._sent = [0] * devices
        self.behaviour: dict[int, str] = {}
        kinds = [SILENT] * silent + [LOSSY] * lossy + [REJOIN] * rejoin + [DRAINING] * draining
        if len(kinds) > devices:
            raise ValueError("more misbehaving devices than devices")
        self.behaviour = dict(enumerate(kinds))
        self.silent_after = silent_after

    def events(self, count: int | None = None) -> Iterator[tuple[str, bytes, SentUplink]]:
        """Yield (topic, payload, what was sent), cycling through the devices."""
        n = slot = 0
        if self.behaviour and all(self.behaviour.get(i) == SILENT for i in range(self.devices)) and count is None:
            raise ValueError("every device is silent: nothing would ever be sent")
        while count is None or n < count:
            i = slot % self.devices
            slot += 1
            kind = self.behaviour.get(i)
            if kind == SILENT and self._sent[i] >= self.silent_after:
                if all(self.behaviour.get(d) == SILENT and self._sent[d] >= self.silent_after
                       for d in range(self.devices)):
                    return  # everyone fell silent
                continue
            self._fcnt[i] += 1
            if kind == LOSSY and self._fcnt[i] % 3 == 0:
                continue  # lost on the air: the counter moved on, nothing reaches ChirpStack
            if kind == REJOIN and self._sent[i] == 5:
                self._fcnt[i] = 1  # a rejoin: the frame counter starts again
            n += 1
            self._sent[i] += 1
            fcnt = self._fcnt[i]
            vdd = max(2500, 3600 - 40 * self._sent[i]) if kind == DRAINING else None
            payload = elsys_payload(self.rng, vdd)
            # Built from the uplink's random bits, so a seeded run repeats its ids.
            uplink_id = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
            now = time.time()
            rssi = self.rng.randint(-120, -60)
            snr = round(self.rng.uniform(-10, 12), 1)
            template = self._templates[i]
            if self.protobuf:
                template.deduplication_id = uplink_id
                template.time.FromNanoseconds(int(now * 1e9))
                template.f_cnt = fcnt
                template.data = payload
                template.rx_info[0].rssi = rssi
                template.rx_info[0].snr = snr
                body = template.SerializeToString()
            else:
                doc = dict(template)
                doc["deduplicationId"] = uplink_id
                doc["time"] = datetime.fromtimestamp(now, UTC).isoformat()
                doc["fCnt"] = fcnt
                doc["data"] = base64.b64encode(payload).decode()
                rx = dict(doc["rxInfo"][0])
                rx["rssi"], rx["snr"] = rssi, snr
                doc["rxInfo"] = [rx]
                body = orjson.dumps(doc)
            dev = dev_eui_of(i)
            topic = f"application/{APPLICATION_ID}/device/{dev}/event/up"
            yield topic, body, SentUplink(uplink_id, dev, now, payload, fcnt)


def publish(url_host: str, port: int, sim: Simulator, count: int | None, rate: float | None,
            on_sent: Callable[[SentUplink], None] | None = None, stop: threading.Event | None = None,
            window: int = 100) -> int:
    """Publish `count` uplinks with QoS 1 at `rate` per second (None: as fast as possible).

    Waits for every PUBACK before returning, so what it reports as sent is at the broker.
    Returns the number of uplinks acknowledged by the broker.
    """
    client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                         client_id=f"edge-simulator-{uuid.uuid4().hex[:8]}", protocol=paho.MQTTv311)
    acked = 0
    # Polled, not called back: a callback that takes a lock the publishing thread holds while
    # inside paho's publish() deadlocks on paho's own mutex.
    pending: deque[tuple[paho.MQTTMessageInfo, SentUplink]] = deque()

    def published(info: paho.MQTTMessageInfo) -> bool:
        try:
            return info.is_published()
        except RuntimeError:
            # Queued while the broker was away (rc = no connection): paho sends it after the
            # reconnect and still records the PUBACK; is_published() refuses to say so.
            return bool(getattr(info, "_published", False))

    def settle() -> None:
        nonlocal acked
        while pending and published(pending[0][0]):
            acked += 1
            sent = pending.popleft()[1]
            if on_sent is not None:
                on_sent(sent)

    client.max_inflight_messages_set(window)
    client.connect(url_host, port, 30)
    client.loop_start()
    start = time.monotonic()
    try:
        for n, (topic, body, sent) in enumerate(sim.events(count)):
            if stop is not None and stop.is_set():
                break
            if rate:
                delay = start + n / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            settle()
            while len(pending) >= window * 2:
                time.sleep(0.001)
                settle()
            info = client.publish(topic, body, qos=1)
            if info.rc != paho.MQTT_ERR_SUCCESS and info.rc != paho.MQTT_ERR_NO_CONN:
                raise RuntimeError(f"publish failed: {paho.error_string(info.rc)}")
            pending.append((info, sent))
        deadline = time.monotonic() + 30
        while pending and time.monotonic() < deadline:
            time.sleep(0.01)
            settle()
    finally:
        client.disconnect()
        client.loop_stop()
    return acked
