"""The HTTP sink's own health check: server reachable, credentials not refused, on request a test notice accepted."""

from __future__ import annotations

import threading
from collections.abc import Generator

import httpx

from edge import probe
from edge.config import HttpUpstreamConfig
from edge.model import Check
from edge.sinks.base import Backlog, CheckContext
from edge.sinks.http import HttpSink
from edge.sinks.http_request import redact


def probe_url(endpoint: str, fmt: str) -> str:
    """What doctor GETs to see whether an HTTP upstream accepts our credentials, without writing.

    For NGSI-LD the broker's type list (`/ngsi-ld/v1/types`), which every broker serves and guards
    like its writes; otherwise the endpoint itself, where any answer but 401/403 means the
    credentials passed.
    """
    if fmt == "ngsi-ld" and "/ngsi-ld/v1/" in endpoint:
        return endpoint.split("/ngsi-ld/v1/", 1)[0] + "/ngsi-ld/v1/types"
    return endpoint


def _no_backlog() -> Backlog:
    raise AssertionError("doctor only borrows an HTTP sink's client; it never runs the sink")


def check(up: HttpUpstreamConfig, context: CheckContext) -> Generator[Check, None, None]:
    """DNS, TCP and TLS to the server (or its proxy), then a GET with the sink's own client to see its
    credentials pass; with `publish_test`, a test notice POSTed to `notice_endpoint` (never the data endpoint)."""
    label, section = f"upstream {up.name}", f"http_upstream[{context.index}]"
    parts = httpx.URL(up.endpoint)
    if up.proxy:
        proxy = httpx.URL(up.proxy)
        ep = probe.Endpoint(proxy.host, proxy.port or (443 if proxy.scheme == "https" else 80), False)
        if not (yield from probe.network(f"{label} proxy", section, ep, f"{section}.proxy")):
            return
    else:
        ep = probe.Endpoint(parts.host, parts.port or (443 if parts.scheme == "https" else 80),
                            parts.scheme == "https", up.ca_file, up.cert_file, up.key_file)
        if not (yield from probe.network(label, section, ep, f"{section}.endpoint")):
            return
    try:
        # The sink itself builds the client: the same token, headers, TLS context and proxy as `edge run`.
        sink = HttpSink(up, _no_backlog, lambda entries: [], threading.Event())
    except ValueError as exc:
        yield Check(f"{label} auth", "FAIL", str(exc), "run doctor as the service's user or root (sudo), or fix the"
                    f" files named in [{section}]")
        return
    probe_at = probe_url(up.endpoint, up.format)
    token_fix = (f"put a valid token in {up.bearer_token_file}" if up.bearer_token_file
                 else f"the server wants credentials: set bearer_token_file (or headers) in [{section}]")
    try:
        with sink.client() as client:
            client.timeout = httpx.Timeout(probe.MQTT_TIMEOUT)
            answer = client.get(probe_at, headers={"Accept": "application/json"})
            if answer.status_code in (401, 403):
                yield Check(f"{label} auth", "FAIL", f"GET {redact(probe_at)} answered HTTP {answer.status_code}",
                            token_fix)
                return
            if answer.status_code >= 500:
                yield Check(f"{label} auth", "WARN", f"GET {redact(probe_at)} answered HTTP {answer.status_code}",
                            f"the server at {parts.host} has a problem of its own; see its logs")
            elif probe_at != up.endpoint and answer.status_code == 404:
                yield Check(f"{label} auth", "FAIL", f"GET {redact(probe_at)} answered 404: no NGSI-LD broker there",
                            f"check the path of {section}.endpoint (…/ngsi-ld/v1/entityOperations/upsert)")
                return
            else:
                yield Check(f"{label} auth", "OK", f"GET {redact(probe_at)} answered HTTP {answer.status_code}"
                            " (credentials not refused)")
            if not context.publish_test:
                return
            if not up.notice_endpoint:
                yield Check(f"{label} publish", "OK", "skipped: no notice_endpoint (doctor never posts test data to"
                            " the data endpoint)")
                return
            posted = client.post(up.notice_endpoint, json=context.test_message(up.name))
    except httpx.HTTPError as exc:
        yield Check(f"{label} auth", "FAIL", f"request to {redact(probe_at)} failed: {probe.why(exc)}",
                    f"check {section}.endpoint, the proxy and that the server speaks HTTP{'S' if ep.tls else ''}")
        return
    if posted.is_success:
        yield Check(f"{label} publish", "OK",
                    f"test notice POSTed to {redact(up.notice_endpoint)}: HTTP {posted.status_code}")
    else:
        yield Check(f"{label} publish", "FAIL", f"test notice POSTed to {redact(up.notice_endpoint)}: HTTP"
                    f" {posted.status_code}", token_fix if posted.status_code in (401, 403)
                    else f"check {section}.notice_endpoint and the server's logs")
