"""How an HTTP sink's requests are built: the endpoint checked, the bearer token read, TLS set up, the httpx client."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx

from edge.config import HttpUpstreamConfig


def read_token(path: str) -> str:
    """The bearer token in `path`, surrounding whitespace removed.

    Args:
        path: the token file.

    Returns:
        The token.

    Raises:
        ValueError: the file is missing, unreadable or empty (the message names the file, never the token).
    """
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read the bearer token file {path}: {exc.__class__.__name__}") from None
    if not token:
        raise ValueError(f"the bearer token file {path} is empty")
    return token


def redact(url: str) -> str:
    """The URL without user info and query, for logs (an API key may sit in either)."""
    try:
        u = httpx.URL(url)
    except httpx.InvalidURL:
        return "<invalid URL>"
    port = f":{u.port}" if u.port else ""
    return f"{u.scheme}://{u.host}{port}{u.path}"


def endpoint_url(upstream: str, url: str) -> httpx.URL:
    """`url` parsed, when it is an http(s) URL with a host.

    Raises:
        ValueError: it is not (the message shows the URL redacted).
    """
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        parsed = httpx.URL("")
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"upstream {upstream}: {redact(url)} is not an http(s) URL")
    return parsed


def tls_context(cfg: HttpUpstreamConfig) -> ssl.SSLContext:
    """The upstream's TLS context: its CA (else the system's) and client certificate, verification always on.

    Raises:
        ValueError: a TLS file cannot be read.
    """
    # Verification is always on: no option turns off certificate or host name checks. The client
    # certificate goes into the context too; httpx 0.28 deprecates its separate `cert=`.
    try:
        context = ssl.create_default_context(cafile=cfg.ca_file or None)
        if cfg.cert_file:
            context.load_cert_chain(cfg.cert_file, cfg.key_file or None)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"upstream {cfg.name}: cannot load its TLS files: {exc}") from None
    return context


def build_client(cfg: HttpUpstreamConfig, token: str, tls: ssl.SSLContext,
                 transport: httpx.BaseTransport | None) -> httpx.Client:
    """An httpx client for the upstream: its headers and bearer token, TLS, proxy; no redirects followed."""
    headers = dict(cfg.headers)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    # trust_env=False: no proxy variables or .netrc credentials from the service's environment.
    return httpx.Client(verify=tls, timeout=httpx.Timeout(cfg.timeout_s), headers=headers,
                        transport=transport, trust_env=False, proxy=cfg.proxy or None,
                        follow_redirects=False)
