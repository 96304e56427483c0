"""PUBACK reasons that judge one message (0x90 Topic Name invalid, 0x99 Payload format invalid) set that message
aside as a dead letter; the rest of the window is released. A scripted MQTT 5 broker answers the refusals."""

from __future__ import annotations

import socket
import sqlite3
import threading
from collections.abc import Iterator

import pytest

from edge.config import load_config
from edge.pipeline import Pipeline, wait_until
from edge.simulate import SentUplink, Simulator, dev_eui_of, publish

pytestmark = pytest.mark.mosquitto


def _read_exact(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ConnectionError
        data += chunk
    return data


def _varint(conn: socket.socket) -> int:
    value, shift = 0, 0
    while True:
        byte = _read_exact(conn, 1)[0]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value
        shift += 7


class RefusingBroker:
    """Accepts MQTT 5 connections; answers PUBLISHes to topics holding `refuse` with PUBACK `reason`."""

    def __init__(self, refuse: str, reason: int) -> None:
        self.refuse = refuse.encode()
        self.reason = reason
        self.accepted: list[str] = []
        self.refused: list[str] = []
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                while True:
                    first = _read_exact(conn, 1)[0]
                    body = _read_exact(conn, _varint(conn))
                    kind = first >> 4
                    if kind == 1:  # CONNECT -> CONNACK, no properties
                        conn.sendall(bytes([0x20, 3, 0, 0, 0]))
                    elif kind == 3:  # PUBLISH (QoS 1)
                        topic_len = int.from_bytes(body[:2], "big")
                        topic = body[2:2 + topic_len]
                        packet_id = body[2 + topic_len:4 + topic_len]
                        refused = self.refuse in topic
                        (self.refused if refused else self.accepted).append(topic.decode())
                        conn.sendall(bytes([0x40, 4]) + packet_id + bytes([self.reason if refused else 0, 0]))
                    elif kind == 12:  # PINGREQ
                        conn.sendall(bytes([0xD0, 0]))
                    elif kind == 14:  # DISCONNECT
                        return
            except (ConnectionError, OSError):
                return

    def close(self) -> None:
        self.server.close()


@pytest.fixture(params=[0x90, 0x99])
def refusing(request: pytest.FixtureRequest) -> Iterator[RefusingBroker]:
    broker = RefusingBroker(dev_eui_of(1), request.param)
    yield broker
    broker.close()


def test_mqtt_sink_per_message_refusal_is_a_dead_letter_and_the_window_moves_on(refusing, broker_factory,
                                                                               make_config, tmp_path):
    chirpstack = broker_factory()
    pipeline = Pipeline(load_config(make_config(chirpstack.url, f"mqtt://127.0.0.1:{refusing.port}")))
    sink = pipeline.sinks[0]
    stop = threading.Event()
    runner = threading.Thread(target=pipeline.run, args=(stop,), daemon=True)
    runner.start()
    try:
        assert wait_until(lambda: pipeline.source.connected.is_set() and sink.stats.connected, 10)
        sent: list[SentUplink] = []
        publish(chirpstack.host, chirpstack.port, Simulator(3, seed=6), 30, None, sent.append)
        db = sqlite3.connect(tmp_path / "buffer.sqlite")
        assert wait_until(lambda: db.execute("SELECT cursor FROM sinks WHERE name = 'city'").fetchone()[0] == 30, 15)
        letters = db.execute("SELECT status, topic, detail FROM dead_letters WHERE sink = 'city'").fetchall()
        db.close()
        assert letters and all(status == refusing.reason and dev_eui_of(1) in topic for status, topic, _ in letters)
        assert len(letters) == len(refusing.refused)
        assert f"PUBACK reason {refusing.reason:#04x}" in letters[0][2]
        assert not any(dev_eui_of(1) in t for t in refusing.accepted) and refusing.accepted
        assert sink.stats.extra["dead_letters"] == len(letters) and sink.stats.reconnects == 0
        assert runner.is_alive() and not pipeline.failed
    finally:
        stop.set()
        runner.join(15)
