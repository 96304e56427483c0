"""Sensor health end to end: `edge run` between two Mosquittos, misbehaving simulated sensors, a SIGKILL."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge.formats import senml
from edge.simulate import Simulator, dev_eui_of, publish

pytestmark = pytest.mark.mosquitto

HEALTH = """
[health]
check_interval_s = 0.3
silent_factor = 8  # 4 s at 2 uplinks per second: a lossy run of frames or the SIGKILL restart stays shorter
learn_uplinks = 3
min_interval_s = 0.1
battery_low_voltage = 3.2
"""


class Notices:
    """Every health notice an upstream broker receives, by device (a persistent session)."""

    def __init__(self, host: str, port: int) -> None:
        self.lock = threading.Lock()
        self.by_device: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)  # dev -> notice id -> notice
        self.copies = 0
        self.client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="health-notices",
                                  protocol=paho.MQTTv311, clean_session=False)
        self.client.on_connect = lambda c, u, f, r, p: c.subscribe("lorawan/+/health", qos=1)
        self.client.on_message = self._on_message
        self.client.connect(host, port)
        self.client.loop_start()

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        records = {r["n"].rsplit("_", 1)[1]: r for r in senml.resolve(senml.decode(bytes(msg.payload),
                                                                                   "senml+json"))}
        dev = msg.topic.split("/")[1]
        notice = {"state": records["health"]["vs"], "problems": records["health-problems"]["vs"],
                  "time": records["health"]["t"]}
        with self.lock:
            self.copies += 1
            self.by_device[dev][records["health-notice"]["vs"]] = notice

    def of(self, dev: str) -> list[dict[str, Any]]:
        with self.lock:
            return sorted(self.by_device.get(dev, {}).values(), key=lambda n: n["time"])

    def wait(self, predicate: Any, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if predicate():
                return True
            time.sleep(0.1)
        return bool(predicate())

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_health_notices_once_per_change_across_a_sigkill(broker_factory, make_config, edge_process) -> None:
    chirpstack, upstream = broker_factory(), broker_factory()
    notices = Notices(upstream.host, upstream.port)
    config = make_config(chirpstack.url, upstream.url)
    config.write_text(config.read_text().replace("\n[[upstream]]", HEALTH + "\n[[upstream]]", 1))
    edge = edge_process(config)
    edge.start()
    edge.wait_connected()
    silent, lossy, rejoin, draining, well = (dev_eui_of(i) for i in range(5))
    sim = Simulator(6, seed=5, silent=1, lossy=1, rejoin=1, draining=1, silent_after=4)
    stop = threading.Event()
    producer = threading.Thread(target=publish, args=(chirpstack.host, chirpstack.port, sim, None, 12.0),
                                kwargs={"stop": stop}, daemon=True)
    producer.start()
    try:
        assert notices.wait(lambda: any(n["state"] == "silent" for n in notices.of(silent)), 30), notices.by_device
        edge.kill()  # the silence is stored with its notice: a restart must not report it again
        time.sleep(0.5)
        edge.start()
        assert notices.wait(lambda: any("low-battery" in n["problems"] for n in notices.of(draining))
                            and any("lossy" in n["problems"] for n in notices.of(lossy)), 45), notices.by_device
        time.sleep(3)  # several more health rounds after the restart
    finally:
        stop.set()
        producer.join(30)
    try:
        assert [n["state"] for n in notices.of(silent)] == ["silent"]  # exactly one notice for the change
        assert not any("lossy" in n["problems"] for n in notices.of(rejoin))  # a rejoin is not a loss
        assert notices.of(well) == []
        assert all(n["state"] == "ok" for n in notices.of(lossy) + notices.of(draining))
    finally:
        notices.close()
    assert edge.terminate() == 0
