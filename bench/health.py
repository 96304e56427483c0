"""Sensor health's cost on the hot path: `Pipeline.handle` CPU per uplink with [health] on and off, in one run.

Both pipelines parse, decode and commit the same simulated uplinks (1,000 Elsys ERS devices, batches of
`buffer.batch_max`) into their own durable buffer; rounds alternate off/on so that drift in the machine's
speed hits both alike. CPU is the process's utime+stime over each round. Prints `name: value` lines.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

from edge.config import parse_config
from edge.pipeline import Pipeline
from edge.simulate import Simulator
from edge.sources.chirpstack_mqtt import Message

CONFIG = """
[edge]
id = "bench"
[chirpstack]
mqtt_url = "mqtt://127.0.0.1:1"
[buffer]
path = "{buffer}"
[web]
port = 0
[health]
enabled = {enabled}
[[upstream]]
name = "city"
url = "mqtt://127.0.0.1:2"
"""


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--count", type=int, default=20000, help="uplinks per round")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edge-bench-health-"))
    try:
        pipelines = {}
        for enabled in (False, True):
            doc = CONFIG.format(buffer=work / f"{enabled}.sqlite", enabled=str(enabled).lower())
            import tomllib

            pipelines[enabled] = Pipeline(parse_config(tomllib.loads(doc)))
        # The tracker's own CPU, measured where it is spent (less noisy than the on/off difference).
        spent = [0.0]
        tracker = pipelines[True].health
        assert tracker is not None
        observe_all = tracker.observe_all

        def timed(uplinks):
            t = time.process_time()
            observe_all(uplinks)
            spent[0] += time.process_time() - t

        tracker.observe_all = timed  # type: ignore[method-assign]
        sim = Simulator(1000, seed=11)
        cpu = {False: 0.0, True: 0.0}
        listening = time.time()
        for round_ in range(args.rounds):
            # Alternate which goes first, so neither always runs on a warmer cache.
            for enabled in (False, True) if round_ % 2 == 0 else (True, False):
                p = pipelines[enabled]
                raw = [(t, b) for t, b, _ in sim.events(args.count)]
                size = p.cfg.buffer.batch_max
                start = _cpu()
                # Parsed as the source parses them on arrival, inside the measured work as before (#16).
                events = [Message(t, b, time.time()) for t, b in raw]
                for i in range(0, len(events), size):
                    p.handle(events[i:i + size])
                if p.health is not None:
                    # The service's health round (judge readings and silence, store changes), counted
                    # here once per round although the service runs it only every check_interval_s.
                    # Every device's statistics are stored only every HEALTH_SAVE_S (300 s): about
                    # 20 ms for 1,000 devices, well under 1 % at any rate worth measuring.
                    t = time.process_time()
                    p.health_round(time.time(), listening)
                    spent[0] += time.process_time() - t
                cpu[enabled] += _cpu() - start
        n = args.count * args.rounds
        off, on = cpu[False] / n * 1e6, cpu[True] / n * 1e6
        print(f"cpu_us_per_uplink_health_off: {off:.1f}")
        print(f"cpu_us_per_uplink_health_on: {on:.1f}")
        print(f"health_overhead: {100 * (on - off) / off:+.1f} % (target < 5 %; {n} uplinks each,"
              f" {args.rounds} alternating rounds)")
        own = spent[0] / n * 1e6
        print(f"health_own_cpu_us_per_uplink: {own:.2f} ({100 * own / off:.1f} % of the pipeline's"
              " cpu_us_per_uplink with health off; observe on the hot path plus the rounds)")
        for p in pipelines.values():
            p.buffer.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
