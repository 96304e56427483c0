"""Baseline: a bare paho relay, QoS 1 in from broker A, QoS 1 out to broker B, two clients with loop_start()."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--a-host", default="127.0.0.1")
    ap.add_argument("--a-port", type=int, required=True)
    ap.add_argument("--b-host", default="127.0.0.1")
    ap.add_argument("--b-port", type=int, required=True)
    ap.add_argument("--topic", default="application/+/device/+/event/+")
    ap.add_argument("--inflight", type=int, default=20, help="paho max_inflight_messages on the B client")
    ap.add_argument("--window", type=int, default=100, help="messages outstanding at B at most (queued+in flight)")
    ap.add_argument("--timeout", type=float, default=600.0)
    args = ap.parse_args()

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda s, f: stop.set())
    slots = threading.BoundedSemaphore(args.window)
    errors = [0]

    sub = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="bench-relay-in",
                      protocol=paho.MQTTv311, clean_session=True)
    pub = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="bench-relay-out",
                      protocol=paho.MQTTv311, clean_session=True)
    pub.max_inflight_messages_set(args.inflight)

    def on_publish(c: paho.Client, u: object, mid: int, rc: object, p: object) -> None:
        slots.release()

    def on_message(c: paho.Client, u: object, msg: paho.MQTTMessage) -> None:
        # Bounded window: past it, block A's network thread (PUBACK to A waits too) until B acknowledges.
        if not slots.acquire(timeout=30):
            errors[0] += 1
            return
        info = pub.publish(msg.topic, msg.payload, qos=1)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            slots.release()
            errors[0] += 1

    subscribed = threading.Event()
    sub.on_connect = lambda c, u, f, r, p: c.subscribe(args.topic, qos=1)
    sub.on_subscribe = lambda c, u, m, r, p: subscribed.set()
    sub.on_message = on_message
    pub.on_publish = on_publish

    pub.connect(args.b_host, args.b_port, 30)
    pub.loop_start()
    sub.connect(args.a_host, args.a_port, 30)
    sub.loop_start()
    try:
        if not subscribed.wait(10):
            print("error not subscribed", flush=True)
            return 1
        print("ready", flush=True)
        deadline = time.monotonic() + args.timeout
        while not stop.wait(0.2) and time.monotonic() < deadline:
            pass
    finally:
        sub.disconnect()
        sub.loop_stop()
        pub.disconnect()
        pub.loop_stop()
    print(f"done errors={errors[0]}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
