"""Controlled sharing end to end: three destinations with their own rules, an NGSI-LD context broker
over HTTP that fails for a while, and the edge SIGKILLed in between; every destination gets exactly
what its rules allow, at least once."""

from __future__ import annotations

import time

import pytest

from edge.simulate import SentUplink, Simulator, dev_eui_of, publish
from tests.http_server import HttpServer, wait_for

pytestmark = pytest.mark.mosquitto

SHARING = """
[upstream.share]
devices = ["{contractor_dev}"]
drop_quantities = ["battery-voltage"]
radio = false

[[http_upstream]]
name = "opendata"
endpoint = "{http}/ngsi-ld/v1/entityOperations/upsert?options=update"
backoff_min_s = 0.05
backoff_max_s = 0.2

[http_upstream.share]
devices = ["{dev0}", "{dev1}"]
quantities = ["temperature", "humidity"]
round = {{ temperature = 0 }}
radio = false
"""


def test_sharing_each_destination_gets_only_what_its_rules_allow(broker_factory, make_config, edge_process,
                                                                 recorder, tmp_path):
    chirpstack, upstream = broker_factory(), broker_factory()
    server = HttpServer().start()
    try:
        # The first requests fail: 500, then 429 with Retry-After; the sink must retry, not drop.
        server.script(500, count=2)
        server.script(429, count=1, headers={"Retry-After": "1"})
        rec = recorder(upstream)
        cfg = make_config(chirpstack.url, upstream.url)
        # "city" (from make_config) gets everything; this file adds a second MQTT upstream "contractor".
        text = cfg.read_text() + (
            '\n[[upstream]]\nname = "contractor"\nurl = "' + upstream.url + '"\n'
            'topic = "contractor/{dev_eui}"\nlink_topic = "contractor/{dev_eui}/link"\n'
            'reconnect_min_s = 0.1\nreconnect_max_s = 1.0\n'
            + SHARING.format(contractor_dev=dev_eui_of(2), http=server.url, dev0=dev_eui_of(0), dev1=dev_eui_of(1)))
        cfg.write_text(text)
        edge = edge_process(cfg)
        edge.start()
        edge.wait_connected()
        sent: list[SentUplink] = []
        publish(chirpstack.host, chirpstack.port, Simulator(4, seed=21), 40, None, sent.append)
        edge.kill()  # SIGKILL mid-delivery: nothing may be lost or leak to the wrong destination
        edge.start()
        publish(chirpstack.host, chirpstack.port, Simulator(4, seed=22), 40, None, sent.append)

        ids = {s.uplink_id for s in sent}
        assert rec.wait_for(ids, 30)  # "city": every uplink
        contractor_ids = {s.uplink_id for s in sent if s.dev_eui == dev_eui_of(2)}
        open_devs = {dev_eui_of(0), dev_eui_of(1)}
        open_count = sum(1 for s in sent if s.dev_eui in open_devs)

        def opendata_observations() -> list[dict]:
            return [e for r in server.answered(2) for e in r.json if e["type"] != "Device"]

        # NGSI-LD entities carry no uplink id (and uplinks of one burst share a millisecond), so
        # at-least-once shows as: at least one accepted observation per selected uplink.
        assert wait_for(lambda: len(opendata_observations()) >= open_count, 40), \
            (len(opendata_observations()), open_count)
        with rec.lock:
            messages = list(rec.messages)
        contractor = [m for m in messages if m.topic.startswith("contractor/")]
        # The contractor gets its own device only, without battery and without radio metadata.
        assert contractor and all(m.topic == f"contractor/{dev_eui_of(2)}" for m in contractor)
        seen = set()
        for m in contractor:
            body = m.payload.decode()
            assert "battery-voltage" not in body
            seen |= {u for u in contractor_ids if u in body}
        assert seen == contractor_ids
        # The open-data portal gets the two selected devices, temperature and humidity only, rounded.
        observations = opendata_observations()
        assert {e["id"].rsplit(":", 1)[-1] for e in observations} == open_devs
        for e in observations:
            attributes = {k for k in e if k not in ("id", "type", "@context", "dateObserved", "refDevice")}
            assert attributes <= {"temperature", "relativeHumidity"}, attributes
            assert e["temperature"]["value"] == int(e["temperature"]["value"])
        statuses = [r.status for r in server.snapshot()]
        assert statuses[:3] == [500, 500, 429] and statuses[3] in (200, 201, 204)
    finally:
        server.close()
    time.sleep(0)


def test_cli_shares_explain_and_deadletters(make_config, tmp_path):
    """`edge shares explain` shows a destination's view; `edge deadletter` lists and replays refusals."""
    import orjson
    from click.testing import CliRunner

    from edge.buffer import Buffer
    from edge.cli import main
    from edge.config import load_config
    from edge.pipeline import Pipeline
    from edge.sources.chirpstack_mqtt import Message

    server = HttpServer().start()
    try:
        cfg = make_config("mqtt://127.0.0.1:1", "mqtt://127.0.0.1:2")
        cfg.write_text(cfg.read_text() + SHARING.format(contractor_dev=dev_eui_of(2), http=server.url,
                                                        dev0=dev_eui_of(0), dev1=dev_eui_of(1)))
        pipeline = Pipeline(load_config(cfg))
        pipeline.handle([Message(t, b, 0.0) for t, b, _ in Simulator(3, seed=5).events(3)])
        run = CliRunner().invoke
        out = run(main, ["shares", "explain", "-c", str(cfg), "--upstream", "opendata", dev_eui_of(0)])
        assert out.exit_code == 0, out.output
        assert "receives 2 of 5 readings" in out.output and "no radio metadata" in out.output
        body = orjson.loads(out.output.split("\n", 2)[2])
        assert {e["type"] for e in body} == {"IndoorEnvironmentObserved", "Device"}
        out = run(main, ["shares", "explain", "-c", str(cfg), "--upstream", "opendata", dev_eui_of(2)])
        assert "receives nothing" in out.output
        # Here the [upstream.share] table belongs to "city", the only MQTT upstream.
        out = run(main, ["shares", "explain", "-c", str(cfg), "--upstream", "city", dev_eui_of(2)])
        assert "receives 4 of 5 readings" in out.output and "(not: battery-voltage)" in out.output
        assert "/link" not in out.output

        Buffer(load_config(cfg).buffer.path).add_dead_letter("opendata", 400, "application/ld+json", "", b"[]",
                                                             "bad entity")
        out = run(main, ["deadletter", "list", "-c", str(cfg)])
        assert "opendata" in out.output and "HTTP 400" in out.output and "1 dead letter(s)" in out.output
        out = run(main, ["deadletter", "replay", "-c", str(cfg), "--upstream", "opendata"])
        assert out.exit_code == 0, out.output
        assert "1 delivered, 0 still failing" in out.output
        assert server.snapshot()[-1].body == b"[]"
        assert "0 dead letter(s)" in run(main, ["deadletter", "list", "-c", str(cfg)]).output
    finally:
        server.close()


# A multiple of 600 s, so intervals start at uplink 0; a day ago, because thinning trusts event
# times only within a window around the receive time (edge.model.control_time).
T0 = float(int(time.time() - 86400) // 600 * 600)
THIN = """
[[http_upstream]]
name = "portal"
endpoint = "{http}/senml"
format = "senml+json"
timeout_s = 0.5
max_batch = 5
backoff_min_s = 0.05
backoff_max_s = 0.2

[http_upstream.share]
devices = ["{dev0}", "{dev1}"]
quantities = ["temperature"]
thin_s = 600
"""


class TimedSimulator:
    """Simulator events whose ChirpStack time advances 100 s per uplink (one device every 300 s)."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.n = 0

    def events(self, count: int):
        import dataclasses
        from datetime import UTC, datetime

        import orjson

        for topic, body, sent in self.sim.events(count):
            t = T0 + 100 * self.n
            self.n += 1
            doc = orjson.loads(body)
            doc["time"] = datetime.fromtimestamp(t, UTC).isoformat()
            yield topic, orjson.dumps(doc), dataclasses.replace(sent, time=t)


def test_thinned_http_destination_gets_each_interval_once_across_failures_and_a_sigkill(
        broker_factory, make_config, edge_process, tmp_path):
    """A thinned, filtered SenML-over-HTTP destination behind timeouts, 500s, 429s and a SIGKILL gets
    exactly the first uplink of each device and 600 s interval (at least once) and nothing else."""
    import orjson
    from click.testing import CliRunner

    from edge.buffer import Buffer
    from edge.cli import main
    from edge.formats import senml
    from tests.http_server import Reply

    chirpstack, upstream = broker_factory(), broker_factory()
    server = HttpServer().start()
    selected = {dev_eui_of(0), dev_eui_of(1)}
    try:
        cfg = make_config(chirpstack.url, upstream.url)
        cfg.write_text(cfg.read_text() + THIN.format(http=server.url, dev0=dev_eui_of(0), dev1=dev_eui_of(1)))
        buffer_path = tmp_path / "buffer.sqlite"

        def accepted() -> list[tuple[str, str, list[str]]]:
            """(uplink id, dev_eui, reading names) of every uplink in a request answered 2xx."""
            out = []
            for request in server.answered(2):
                uplink_id = dev = ""
                names: dict[str, list[str]] = {}
                for rec in senml.resolve(senml.decode(request.body, "senml+json")):
                    prefix, _, name = rec["n"].rpartition("_")
                    if name == "uplink":
                        uplink_id, dev = rec["vs"].removeprefix("urn:uuid:"), prefix.removeprefix("urn:dev:mac:")
                        names[uplink_id] = []
                        out.append((uplink_id, dev, names[uplink_id]))
                    else:
                        names[uplink_id].append(name)
            return out

        def portal_backlog() -> int:
            buf = Buffer(buffer_path, readonly=True)
            try:
                return next(s["backlog"] for s in buf.sinks() if s["name"] == "portal")
            except StopIteration:
                return -1
            finally:
                buf.close()

        sim = TimedSimulator(Simulator(3, seed=31))
        sent: list[SentUplink] = []
        # A timeout (the late answer is a 503 the client never sees), a 500 and a 429 first.
        server.stall(2.0, status=503)
        server.script(500)
        server.script(429, headers={"Retry-After": "1"})
        edge = edge_process(cfg)
        edge.start()
        edge.wait_connected()
        # 28 uplinks: device 1's interval [2400 s, 3000 s) starts with uplink 25 here and
        # continues with uplink 28, sent after the restart.
        publish(chirpstack.host, chirpstack.port, sim, 28, None, sent.append)
        assert wait_for(lambda: portal_backlog() == 0, 40), portal_backlog()

        # The portal fails from now on; more uplinks queue up, and the edge is SIGKILLed.
        server.default = Reply(500)
        publish(chirpstack.host, chirpstack.port, sim, 28, None, sent.append)
        failures = len(server.snapshot())
        assert wait_for(lambda: len(server.snapshot()) > failures + 1, 20)
        edge.kill()
        edge.start()
        edge.wait_connected()
        publish(chirpstack.host, chirpstack.port, sim, 28, None, sent.append)
        server.stall(2.0, status=503)
        server.script(429, headers={"Retry-After": "1"})
        server.default = Reply(204)
        assert wait_for(lambda: portal_backlog() == 0, 60), portal_backlog()

        # The model: per selected device, the first uplink of each 600 s interval.
        expected: set[str] = set()
        served: dict[str, int] = {}
        for s in sent:
            bucket = int(s.time // 600)
            if s.dev_eui in selected and bucket > served.get(s.dev_eui, -1):
                served[s.dev_eui] = bucket
                expected.add(s.uplink_id)
        got = accepted()
        assert {u for u, _, _ in got} == expected  # at least once, and nothing the rules hold back
        assert {d for _, d, _ in got} == selected
        assert all(names == ["temperature"] for _, _, names in got)
        # An interval served before the SIGKILL was not opened again after it: the first uplinks
        # published after batch 1 that fall into their device's last interval of batch 1.
        last_bucket = {s.dev_eui: int(s.time // 600) for s in sent[:28]}
        continuing = [s for s in sent[28:] if s.dev_eui in selected and int(s.time // 600) == last_bucket[s.dev_eui]]
        assert continuing and not {s.uplink_id for s in continuing} & expected

        # `edge shares explain` agrees with what `edge run` decided.
        out = CliRunner().invoke(main, ["shares", "explain", "-c", str(cfg), "--upstream", "portal", dev_eui_of(1)])
        last = [s for s in sent if s.dev_eui == dev_eui_of(1)][-1]
        if last.uplink_id in expected:
            assert "receives 1 of 5 readings" in out.output, out.output
            assert orjson.loads(out.output.split("\n", 2)[2])[0]["vs"] == f"urn:uuid:{last.uplink_id}"
        else:
            assert "thinned out" in out.output, out.output
        statuses = [r.status for r in server.snapshot()]
        assert {503, 500, 429} <= set(statuses)
        edge.terminate()
    finally:
        server.close()


def test_rejected_batch_goes_to_the_dead_letter_table_and_replays(make_config, tmp_path):
    """A 400 from the context broker puts the real pipeline's upsert into the dead-letter table, the
    cursor moves on, and `edge deadletter list|replay` shows and re-sends it."""
    import threading

    import orjson
    from click.testing import CliRunner

    from edge.buffer import Buffer
    from edge.cli import main
    from edge.config import load_config
    from edge.pipeline import Pipeline
    from edge.sources.chirpstack_mqtt import Message

    server = HttpServer().start()
    try:
        server.script(400, body=b'{"type":"https://uri.etsi.org/ngsi-ld/errors/BadRequestData"}')
        cfg = make_config("mqtt://127.0.0.1:1", "mqtt://127.0.0.1:2")
        cfg.write_text(cfg.read_text() + f'\n[[http_upstream]]\nname = "broker"\n'
                       f'endpoint = "{server.url}/ngsi-ld/v1/entityOperations/upsert?options=update"\n'
                       'max_batch = 2\nbackoff_min_s = 0.05\n')
        pipeline = Pipeline(load_config(cfg))
        pipeline.handle([Message(t, b, 0.0) for t, b, _ in Simulator(2, seed=9).events(4)])
        stop = threading.Event()
        runner = threading.Thread(target=pipeline.run, args=(stop,), daemon=True)
        runner.start()
        try:
            assert wait_for(lambda: len(server.answered(2)) >= 1, 15)  # the second batch went through
        finally:
            stop.set()
            runner.join(15)
        buf = Buffer(load_config(cfg).buffer.path, readonly=True)
        letters = buf.dead_letters("broker")
        assert [(d["status"], d["content_type"]) for d in letters] == [(400, "application/ld+json")]
        assert letters[0]["payload"] == server.snapshot()[0].body
        assert "BadRequestData" in letters[0]["detail"]
        assert next(s for s in buf.sinks() if s["name"] == "broker")["backlog"] == 0
        buf.close()

        run = CliRunner().invoke
        listed = run(main, ["deadletter", "list", "-c", str(cfg), "--json"])
        assert [d["status"] for d in orjson.loads(listed.output)] == [400]
        out = run(main, ["deadletter", "replay", "-c", str(cfg), "--upstream", "broker"])
        assert out.exit_code == 0 and "1 delivered, 0 still failing" in out.output, out.output
        assert server.snapshot()[-1].body == letters[0]["payload"]
        assert "0 dead letter(s)" in run(main, ["deadletter", "list", "-c", str(cfg)]).output
    finally:
        server.close()
