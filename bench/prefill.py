"""Fills a buffer with simulated uplinks through Pipeline.handle (parse, decode, commit) without MQTT, fast."""

from __future__ import annotations

import argparse
import sys
import time

from edge.config import load_config
from edge.pipeline import Pipeline
from edge.simulate import Simulator
from edge.sources.chirpstack_mqtt import Message


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--timeout", type=float, default=600.0)
    args = ap.parse_args()

    cfg = load_config(args.config)
    pipeline = Pipeline(cfg)
    sim = Simulator(args.devices, seed=args.seed)
    batch: list[Message] = []
    size = cfg.buffer.batch_max
    start = time.monotonic()
    deadline = start + args.timeout
    done = 0
    for topic, body, _ in sim.events(args.count):
        batch.append(Message(topic, body, time.time()))
        if len(batch) >= size:
            pipeline.handle(batch)
            done += len(batch)
            batch = []
            if done % 100_000 < size:
                print(f"p {done} {done / (time.monotonic() - start):.0f}", flush=True)
            if time.monotonic() > deadline:
                break
    if batch:
        pipeline.handle(batch)
        done += len(batch)
    pipeline.buffer.close()
    print(f"done {done} {time.monotonic() - start:.1f}", flush=True)
    return 0 if done == args.count else 1


if __name__ == "__main__":
    sys.exit(main())
