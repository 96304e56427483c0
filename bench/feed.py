"""Publisher process: pre-generates simulated ChirpStack v4 uplinks, then publishes them QoS 1 as fast as it can."""

from __future__ import annotations

import argparse
import signal
import sys
import time

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from edge.simulate import Simulator


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--window", type=int, default=100, help="QoS 1 messages outstanding at most")
    ap.add_argument("--timeout", type=float, default=300.0, help="give up after this many seconds of publishing")
    args = ap.parse_args()

    stop = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)

    # Pre-generate, so that building events costs nothing while publishing.
    sim = Simulator(args.devices, seed=args.seed)
    events = [(topic, body) for topic, body, _ in sim.events(args.count)]
    print(f"ready {len(events)} {sum(len(b) for _, b in events) / len(events):.0f}", flush=True)
    go = sys.stdin.readline()
    if not go.startswith("go"):
        return 1

    client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"bench-feed-{args.seed}",
                         protocol=paho.MQTTv311, clean_session=True)
    outstanding = 0
    acked = 0

    def on_publish(c: paho.Client, u: object, mid: int, rc: object, p: object) -> None:
        nonlocal outstanding, acked
        outstanding -= 1
        acked += 1

    client.on_publish = on_publish
    client.max_inflight_messages_set(args.window)
    client.connect(args.host, args.port, 30)
    # One thread drives the socket: publish while the window has room, then let loop() read PUBACKs.
    while not client.is_connected():
        client.loop(timeout=0.1)
    start = time.monotonic()
    print(f"start {start:.6f}", flush=True)
    deadline = start + args.timeout
    sent = 0
    failed = 0
    n = len(events)
    while acked + failed < n and not stop and time.monotonic() < deadline:
        while sent < n and outstanding < args.window:
            topic, body = events[sent]
            info = client.publish(topic, body, qos=1)
            sent += 1
            if info.rc != paho.MQTT_ERR_SUCCESS:
                failed += 1
                continue
            outstanding += 1
        if client.loop(timeout=0.01) != paho.MQTT_ERR_SUCCESS:
            break
    end = time.monotonic()
    client.disconnect()
    print(f"done {end:.6f} {acked} {failed} {acked / max(end - start, 1e-9):.0f}", flush=True)
    return 0 if acked == n else 2


if __name__ == "__main__":
    sys.exit(main())
