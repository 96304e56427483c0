"""The MQTT sink's own health check: broker reachable, login accepted and, on request, a test message acknowledged."""

from __future__ import annotations

import json
from collections.abc import Generator

from edge import probe
from edge.config import UpstreamConfig
from edge.model import Check
from edge.sinks.base import CheckContext


def check(up: UpstreamConfig, context: CheckContext) -> Generator[Check, None, None]:
    """DNS, TCP, TLS and login at the upstream's broker; with `publish_test`, a QoS 1 message on its notice topic."""
    label, section = f"upstream {up.name}", f"upstream[{context.index}]"
    if not (yield from probe.network(label, section, up.mqtt, f"{section}.url")):
        return
    session = yield from probe.mqtt_session(label, section, up.mqtt)
    if session is None or not context.publish_test:
        if session is not None:
            session.close()
        return
    # Formatted the way the pipeline formats gap notices, so the test lands where they do.
    topic = up.notice_topic.format(edge_id=context.edge_id, dev_eui="", application="", application_id="",
                                   gateway_id="")
    body = json.dumps(context.test_message(up.name))
    info = session.client.publish(topic, body, qos=1)
    code = session.wait(session.pubacks, info.mid, probe.MQTT_TIMEOUT)
    session.close()
    if code is None:
        yield Check(f"{label} publish", "FAIL",
                    f"no PUBACK for the test message on {topic} within {probe.MQTT_TIMEOUT:.0f} s",
                    f"check the broker's ACL for user {up.mqtt.username or '(anonymous)'} and its logs")
    elif code.is_failure:
        yield Check(f"{label} publish", "FAIL", f"test message on {topic} refused: {code}",
                    f"allow user {up.mqtt.username or '(anonymous)'} to publish to {topic} in the broker's ACL")
    else:
        yield Check(f"{label} publish", "OK", f"test message on {topic} acknowledged (QoS 1)")
