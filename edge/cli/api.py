"""Options and helpers shared by the CLI commands that talk to ChirpStack's gRPC API."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from edge.buffer.registry import DeviceRegistry
from edge.config import Config
from edge.errors import EdgeError
from edge.sources.chirpstack_grpc import ChirpStackApi  # cheap: it imports grpcio only inside its methods

F = TypeVar("F", bound=Callable[..., Any])



def api_options(*, tenant: bool) -> Callable[[F], F]:
    """The options that locate ChirpStack's API; each overrides the config key named in its help."""
    options = [
        click.option("--api-url", help="ChirpStack API: host:port, http://host:port or https://host[:port]"
                     " (default: [chirpstack] api_url)."),
        click.option("--token-file", type=click.Path(dir_okay=False, path_type=Path),
                     help="File holding the API token (default: [chirpstack] api_token_file)."),
        click.option("--ca-file", type=click.Path(dir_okay=False, path_type=Path),
                     help="CA certificate of ChirpStack's TLS endpoint (default: [chirpstack] api_ca_file)."),
        click.option("--timeout", type=click.FloatRange(min=0.1), default=None,
                     help="Deadline of each API call in seconds (default: [chirpstack] api_timeout_s, else 10)."),
    ]
    if tenant:
        options.append(click.option(
            "--tenant-id", help="Sync only this tenant; needed for tenant API keys (default: [chirpstack] tenant_id)."))

    def decorate(fn: F) -> F:
        for option in reversed(options):
            fn = option(fn)
        return fn

    return decorate


def _setting(cfg: Config | None, option: object, key: str) -> str | None:
    # Config keys are read with getattr so this works before config.py knows them.
    if option:
        return str(option)
    value = getattr(cfg.chirpstack, key, None) if cfg is not None else None
    return str(value) if value else None


def _client(cfg: Config | None, api_url: str | None, token_file: Path | None, ca_file: Path | None,
            timeout: float | None) -> ChirpStackApi:
    url = _setting(cfg, api_url, "api_url")
    token_path = _setting(cfg, token_file, "api_token_file")
    if not url or not token_path:
        raise click.UsageError("set --api-url and --token-file (or [chirpstack] api_url and api_token_file)")
    try:
        token = Path(token_path).read_text().strip()
    except OSError as exc:
        raise click.UsageError(f"cannot read the token file {token_path}: {exc.strerror}") from None
    if not token:
        raise click.UsageError(f"the token file {token_path} is empty")
    if timeout is None:
        timeout = float(getattr(cfg.chirpstack, "api_timeout_s", 10.0) if cfg is not None else 10.0)
    try:
        return ChirpStackApi(url, token, ca_file=_setting(cfg, ca_file, "api_ca_file"), timeout_s=timeout,
                             token_file=token_path)
    except OSError as exc:
        raise click.UsageError(f"cannot read the CA file: {exc}") from None


def _dev_eui(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """A DevEUI as 16 hex digits (separators allowed), lowercased; anything else is a usage error."""
    cleaned = value.replace(":", "").replace("-", "").replace(" ", "").lower()
    if len(cleaned) != 16 or any(c not in "0123456789abcdef" for c in cleaned):
        raise click.BadParameter(f"{value!r} is not a DevEUI (16 hexadecimal digits, e.g. 70b3d5e75e000001)")
    return cleaned


def _fail(exc: EdgeError) -> NoReturn:
    click.echo(f"error: {exc}", err=True)
    raise SystemExit(1)


def _registry(cfg: Config, readonly: bool) -> DeviceRegistry:
    try:
        return DeviceRegistry(cfg.buffer.path, readonly=readonly)
    except EdgeError as exc:
        _fail(exc)

