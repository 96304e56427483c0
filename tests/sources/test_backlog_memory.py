"""A backlog queued at the broker is read no faster than it is committed: batches stay at batch_max, memory flat."""

from __future__ import annotations

import threading
import tracemalloc

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge.config import ChirpStackConfig, MqttEndpoint
from edge.sources.chirpstack_mqtt import ChirpStackSource, Message
from edge.sources.mqtt_subscriber import MqttSubscriber

pytestmark = pytest.mark.mosquitto
QUEUED = 20_000
PAYLOAD = b"x" * 1000  # about a ChirpStack uplink event


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_queued_backlog_is_read_at_the_pace_of_commits(broker_factory, protocol):
    broker = broker_factory()
    endpoint = MqttEndpoint(url=broker.url, client_id=f"backlog-{protocol}", protocol=protocol,
                            reconnect_min_s=0.05, reconnect_max_s=0.1)
    cfg = ChirpStackConfig(mqtt=endpoint, session_expiry_s=600)
    sub = MqttSubscriber(endpoint, session_expiry_s=600, receive_maximum=100)
    sub.connect(cfg.topic)  # the persistent session the backlog is queued for
    sub.close()
    pub = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"pub-{protocol}")
    pub.max_inflight_messages_set(200)
    pub.connect(broker.host, broker.port)
    pub.loop_start()
    infos = [pub.publish(f"application/a/device/{i % 500:016x}/event/up", PAYLOAD, qos=1) for i in range(QUEUED)]
    for info in infos:
        info.wait_for_publish(60)
    pub.disconnect()
    pub.loop_stop()

    sizes: list[int] = []
    peaks: list[int] = []
    stop = threading.Event()
    first = threading.Event()

    def handle(batch: list[Message]) -> None:
        if not first.is_set():
            # A slow first commit: a reader that does not wait for commits would buffer the
            # whole backlog meanwhile.
            first.set()
            stop.wait(0.5)
        sizes.append(len(batch))
        peaks.append(tracemalloc.get_traced_memory()[1])
        if sum(sizes) >= QUEUED:
            stop.set()

    tracemalloc.start()
    try:
        source = ChirpStackSource(cfg, handle, batch_max=100, batch_ms=20)
        thread = threading.Thread(target=source.run, args=(stop,), daemon=True)
        thread.start()
        thread.join(120)
        assert not thread.is_alive()
    finally:
        tracemalloc.stop()
    assert sum(sizes) >= QUEUED
    assert max(sizes) <= 100
    # 20k queued events are about 20 MB; what the source holds at once is one batch and one read.
    assert max(peaks) < 4 * 2**20, f"{max(peaks) / 2**20:.1f} MiB traced"
