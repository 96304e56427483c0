"""Subscriber process on the upstream broker: counts arrived messages or distinct SenML uplink ids, with timestamps."""

from __future__ import annotations

import argparse
import re
import signal
import sys
import time

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

# Each uplink's section of a measurement pack carries {"n":"uplink","vs":"urn:uuid:<id>"}.
UPLINK_ID = re.compile(rb'"n":"uplink","vs":"urn:uuid:([0-9a-f-]{36})"')


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--topic", default="#")
    ap.add_argument("--mode", choices=("messages", "senml"), default="messages")
    ap.add_argument("--expect", type=int, required=True, help="exit once this many have arrived")
    ap.add_argument("--step", type=int, default=1000, help="print a timestamped progress line every N")
    ap.add_argument("--client-id", default="bench-counter")
    ap.add_argument("--persistent", action="store_true", help="persistent session (clean_session false)")
    ap.add_argument("--prime", action="store_true", help="only create the persistent subscription, then exit")
    ap.add_argument("--linger", type=float, default=0.0,
                    help="after `done`, keep counting messages until none came for this many seconds (max 10 s)")
    ap.add_argument("--timeout", type=float, default=600.0)
    args = ap.parse_args()

    state = {"stop": False, "count": 0, "messages": 0, "bytes": 0, "packs": 0, "mark": args.step, "last": 0.0}
    ids: set[bytes] = set()

    def on_term(signum: int, frame: object) -> None:
        state["stop"] = True

    signal.signal(signal.SIGTERM, on_term)
    client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=args.client_id,
                         protocol=paho.MQTTv311, clean_session=not args.persistent)

    def on_connect(c: paho.Client, u: object, flags: object, reason: object, p: object) -> None:
        if getattr(flags, "session_present", False) and not args.prime:
            print("ready session", flush=True)
        else:
            c.subscribe(args.topic, qos=1)

    def on_subscribe(c: paho.Client, u: object, mid: int, reasons: object, p: object) -> None:
        print("ready subscribed", flush=True)
        if args.prime:
            state["stop"] = True

    senml = args.mode == "senml"

    def on_message(c: paho.Client, u: object, msg: paho.MQTTMessage) -> None:
        state["last"] = time.monotonic()
        state["messages"] += 1
        payload = msg.payload
        state["bytes"] += len(payload)
        if senml:
            if msg.topic.endswith("/link"):
                return
            found = UPLINK_ID.findall(payload)
            if found:
                state["packs"] += 1
                ids.update(found)
            count = len(ids)
        else:
            count = state["messages"]
        state["count"] = count
        if count >= state["mark"]:
            now = time.monotonic()
            while count >= state["mark"]:
                state["mark"] += args.step
            print(f"p {now:.6f} {count} {state['messages']}", flush=True)
        if count >= args.expect:
            state["stop"] = True

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.connect(args.host, args.port, 30)
    deadline = time.monotonic() + args.timeout
    while not state["stop"] and time.monotonic() < deadline:
        if client.loop(timeout=0.2) != paho.MQTT_ERR_SUCCESS:
            time.sleep(0.1)
            try:
                client.reconnect()
            except OSError:
                pass
    print(f"done {time.monotonic():.6f} {state['count']} {state['messages']} {state['bytes']} {state['packs']}",
          flush=True)
    if args.linger > 0 and state["count"] >= args.expect:
        # Packs still on their way (the link packs of the last batch follow its measurement packs).
        end = time.monotonic() + 10
        while time.monotonic() < min(end, state["last"] + args.linger):
            client.loop(timeout=0.05)
        print(f"final {state['count']} {state['messages']} {state['bytes']} {state['packs']}", flush=True)
    # Let the last PUBACKs go out before leaving a persistent session.
    for _ in range(5):
        client.loop(timeout=0.02)
    client.disconnect()
    return 0


if __name__ == "__main__":
    sys.exit(main())
