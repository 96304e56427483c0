"""The source and an upstream against RabbitMQ 3.10's MQTT plugin (MQTT 3.1.1 only): restarts lose nothing."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from edge.simulate import SentUplink, Simulator, publish
from tests.rabbitmq import RabbitMq, available

pytestmark = pytest.mark.mosquitto


@pytest.fixture
def rabbit() -> Iterator[RabbitMq]:
    if not available():
        pytest.skip("rabbitmq-server is not installed (scripts/setup --test installs it)")
    with RabbitMq() as broker:
        yield broker


def test_rabbitmq_as_chirpstack_broker_and_upstream_survives_restarts(rabbit, make_config, edge_process, recorder):
    config = make_config(rabbit.url, rabbit.url)
    # RabbitMQ 3.10 refuses MQTT 5 (deploy/chirpstack.md): both sides speak 3.1.1.
    text = config.read_text().replace("reconnect_max_s = 1.0\n\n[buffer]",
                                      'reconnect_max_s = 1.0\nprotocol = "3.1.1"\n\n[buffer]', 1)
    config.write_text(text + 'protocol = "3.1.1"\n')
    rec = recorder(rabbit, topic="lorawan/#", protocol="3.1.1")
    edge = edge_process(config)
    edge.start()
    edge.wait_connected(30)
    sent: list[SentUplink] = []
    simulator = Simulator(20, seed=3)
    publish(rabbit.host, rabbit.port, simulator, 300, 500.0, sent.append)
    assert rec.wait_for({s.uplink_id for s in sent}, 60), "the first uplinks did not arrive"

    rabbit.stop()  # both the source's and the upstream's broker restart
    time.sleep(1)
    rabbit.start()
    publish(rabbit.host, rabbit.port, simulator, 300, 500.0, sent.append)
    edge.kill()  # and the edge dies while events queue for it in its durable session queue
    publish(rabbit.host, rabbit.port, simulator, 200, 500.0, sent.append)
    edge.start()
    wanted = {s.uplink_id for s in sent}
    assert len(wanted) == 800
    assert rec.wait_for(wanted, 90), f"{len(wanted - rec.ids())} of 800 uplinks never arrived upstream"
    assert edge.terminate() == 0
