"""Subscriber process: drains a queued QoS 1 backlog with one MQTT implementation and reports its CPU per message.

The candidates for the ChirpStack source (issue #11): `ours` (edge/sources/mqtt_subscriber.py: the mqtt5 codec for
MQTT 5, paho's decoders for 3.1.1, under our read loop), `paho` (paho-mqtt's Client with manual_ack=True, driven
by its own loop() on this thread) and `legacy` (the hand-written subscriber this replaced, imported from the
baseline tree given with --tree). Each receives `--count` messages in batches of `--batch` and acknowledges a
batch after it is "committed" (here: counted), as the source does; nothing else runs in the process.
"""

from __future__ import annotations

import argparse
import importlib
import resource
import sys
import time
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

TOPIC = "application/+/device/+/event/+"


def cpu_s() -> float:
    """utime + stime of this process so far."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def drain_wire(module: Any, endpoint: Any, count: int, batch: int, *, prime: bool) -> int:
    """ours and legacy share the subscriber interface: connect, poll, ack, close."""
    kwargs = {"max_packet_size": 256 * 1024} if hasattr(module, "ProtocolError") else {}
    sub = module.MqttSubscriber(endpoint, session_expiry_s=3600, receive_maximum=batch, **kwargs)
    sub.connect(TOPIC)
    if prime:
        sub.close()
        return 0
    got = 0
    acks: list[tuple[int, int]] = []
    end = time.monotonic() + 300
    while got < count and time.monotonic() < end:
        want = batch - len(acks)
        msgs = sub.poll(0.05, limit=want) if hasattr(module, "ProtocolError") else sub.poll(0.05)
        for m in msgs:
            acks.append((m.mid, m.qos))
        got += len(msgs)
        if len(acks) >= batch or (acks and not msgs):
            sub.ack(acks)
            acks = []
    sub.ack(acks)
    sub.close()
    return got


def drain_paho(host: str, port: int, client_id: str, v5: bool, count: int, batch: int, *, prime: bool) -> int:
    """paho's Client with manual acknowledgement, one thread, acks after each batch."""
    client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=paho.MQTTv5 if v5 else paho.MQTTv311, clean_session=None if v5 else False,
                         manual_ack=True)
    pending: list[int] = []
    ready = [False]

    def on_message(c: paho.Client, u: object, msg: paho.MQTTMessage) -> None:
        pending.append(msg.mid)

    client.on_message = on_message
    client.on_subscribe = lambda *a: ready.__setitem__(0, True)
    if v5:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 3600
        props.ReceiveMaximum = batch
        client.connect(host, port, 30, clean_start=False, properties=props)
    else:
        client.connect(host, port, 30)
    client.subscribe(TOPIC, qos=1)
    got = 0
    end = time.monotonic() + 300
    while time.monotonic() < end and (not ready[0] if prime else got + len(pending) < count):
        client.loop(timeout=0.05)
        if len(pending) >= batch or (pending and not prime):
            for mid in pending:
                client.ack(mid, 1)
            got += len(pending)
            pending.clear()
    for mid in pending:
        client.ack(mid, 1)
    got += len(pending)
    client.loop(timeout=0.05)
    client.disconnect()
    return got


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--impl", choices=("ours", "paho", "legacy"), required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--count", type=int, default=0)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--protocol", default="5")
    ap.add_argument("--tree", default="", help="the baseline source tree, for --impl legacy")
    ap.add_argument("--prime", action="store_true", help="only create the persistent session and leave")
    args = ap.parse_args()
    client_id = f"probe-{args.impl}-{args.protocol}"
    if args.impl == "legacy":
        sys.path.insert(0, args.tree)
        for name in [m for m in sys.modules if m == "edge" or m.startswith("edge.")]:
            del sys.modules[name]
    from edge.config import MqttEndpoint  # after choosing the tree

    start = cpu_s()
    t0 = time.monotonic()
    if args.impl == "paho":
        got = drain_paho("127.0.0.1", args.port, client_id, args.protocol == "5", args.count, args.batch,
                         prime=args.prime)
    else:
        try:
            module = importlib.import_module("edge.sources.mqtt_subscriber")
        except ModuleNotFoundError:  # a baseline tree from before the split (issue #16)
            module = importlib.import_module("edge.sources.mqtt_wire")
        endpoint = MqttEndpoint(url=f"mqtt://127.0.0.1:{args.port}", client_id=client_id, protocol=args.protocol)
        got = drain_wire(module, endpoint, args.count, args.batch, prime=args.prime)
    used = cpu_s() - start
    if args.prime:
        print("primed", flush=True)
        return 0
    print(f"done {got} {used / max(got, 1) * 1e6:.1f} {got / (time.monotonic() - t0):.0f}"
          f" {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f}", flush=True)
    return 0 if got >= args.count else 1


if __name__ == "__main__":
    sys.exit(main())
