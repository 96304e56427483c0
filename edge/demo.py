"""The built-in demo: two local brokers, simulated ChirpStack traffic, the pipeline, records upstream."""

from __future__ import annotations

import shlex
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import click
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from edge import present
from edge.broker import Mosquitto
from edge.config import load_config
from edge.formats import senml
from edge.pipeline import Pipeline, wait_until
from edge.simulate import SentUplink, Simulator, publish
from edge.telemetry import setup_logging

CONFIG = """\
[edge]
id = "demo"

[chirpstack]
mqtt_url = "{chirpstack}"
client_id = "lorawan-edge-demo"

[buffer]
path = "{buffer}"
max_size_mb = 64

[[upstream]]
name = "city"
url = "{upstream}"
format = "{fmt}"
topic = "lorawan/{{dev_eui}}"
"""


def run_demo(*, seconds: float, devices: int, rate: float, fmt: str) -> int:
    """Run the demo; returns the exit status (0 when every uplink arrived upstream)."""
    setup_logging("warning")
    work = Path(tempfile.mkdtemp(prefix="edge-demo-"))
    with Mosquitto() as chirpstack, Mosquitto() as upstream:
        cfg_path = work / "edge.toml"
        cfg_path.write_text(CONFIG.format(chirpstack=chirpstack.url, upstream=upstream.url,
                                          buffer=work / "buffer.sqlite", fmt=fmt))
        click.echo(f"ChirpStack broker {chirpstack.url}  upstream broker {upstream.url}  config {cfg_path}")
        arrived: set[str] = set()
        lock = threading.Lock()

        def on_message(c: paho.Client, u: object, msg: paho.MQTTMessage) -> None:
            records = senml.resolve(senml.decode(bytes(msg.payload), fmt))
            link = msg.topic.endswith("/link")
            uplink = next((r["vs"] for r in records if r["n"].endswith("_uplink")), "?")
            with lock:
                if not link:
                    arrived.add(uplink.removeprefix("urn:uuid:"))
            shown = [r for r in records if not r["n"].endswith("_uplink")]
            text = "  ".join(f"{name}={present.reading(name, _value(r), r.get('u'))}" for r in shown
                             for name in [r["n"].rsplit("_", 1)[-1]])
            click.echo(f"  upstream {msg.topic:<32} {text}")

        sub = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="demo-upstream-viewer")
        sub.on_message = on_message
        sub.on_connect = lambda c, u, f, r, p: c.subscribe("lorawan/#", qos=1)
        sub.connect(upstream.host, upstream.port)
        sub.loop_start()

        pipeline = Pipeline(load_config(cfg_path))
        stop = threading.Event()
        runner = threading.Thread(target=pipeline.run, args=(stop,), daemon=True)
        runner.start()
        wait_until(pipeline.source.connected.is_set, 10)

        sent: list[SentUplink] = []
        count = max(1, int(seconds * rate))
        click.echo(f"Sending {count} simulated Elsys ERS uplinks from {devices} devices at {rate}/s ...")
        publish(chirpstack.host, chirpstack.port, Simulator(devices), count, rate, sent.append)
        ok = wait_until(lambda: arrived >= {s.uplink_id for s in sent}, 20)
        stop.set()
        runner.join(15)
        sub.loop_stop()
        sub.disconnect()
        missing = {s.uplink_id for s in sent} - arrived
        click.echo(f"sent {len(sent)}  arrived upstream {len(arrived & {s.uplink_id for s in sent})}"
                   f"  missing {len(missing)}")
        # `edge` is in the virtualenv that runs this demo, not necessarily on PATH (scripts/demo).
        invoked = Path(sys.argv[0])
        edge = invoked.absolute() if invoked.name == "edge" else Path(sys.executable).with_name("edge")
        click.echo(f"Inspect the buffer: {shlex.quote(str(edge))} status --config {cfg_path}"
                   "  (brokers are gone after the demo)")
    if ok and not missing:
        # The work directory is kept (it is small, in the temp dir) so the `edge status` hint above works.
        click.echo("demo OK: every uplink arrived upstream as SenML.")
        return 0
    click.echo("demo FAILED: some uplinks did not arrive.", err=True)
    return 1


def _value(record: dict[str, Any]) -> Any:
    for key in ("v", "vs", "vb"):
        if key in record:
            return record[key]
    return ""
