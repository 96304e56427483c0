"""Finds the files of a configuration that hold secrets, and warns about those others may read."""

from __future__ import annotations

import os
import stat

from edge.config.schema import Config


def secret_files(cfg: Config) -> list[tuple[str, str]]:
    """(config key, path) of every file that holds a secret: passwords, tokens, private keys."""
    found: list[tuple[str, str]] = []

    def add(key: str, path: str) -> None:
        if path:
            found.append((key, path))

    for where, endpoint in (("chirpstack", cfg.chirpstack.mqtt),
                            *((f"upstream {u.name}", u.mqtt) for u in cfg.upstreams)):
        add(f"{where}: password_file", endpoint.password_file)
        add(f"{where}: key_file", endpoint.key_file)
    add("chirpstack.api_token_file", cfg.chirpstack.api_token_file)
    for http in cfg.http_upstreams:
        add(f"http_upstream {http.name}: bearer_token_file", http.bearer_token_file)
        add(f"http_upstream {http.name}: key_file", http.key_file)
    add("web.token_file", cfg.web.token_file)
    return found


def secret_file_warnings(cfg: Config) -> list[str]:
    """A sentence per secret file that users other than its owner may read (group or others)."""
    out = []
    for key, path in secret_files(cfg):
        try:
            mode = os.stat(path).st_mode
        except OSError:
            continue  # a missing file is a validation problem of its own
        if mode & (stat.S_IRGRP | stat.S_IROTH):
            who = " and ".join(w for w, bit in (("its group", stat.S_IRGRP), ("all users", stat.S_IROTH)) if mode & bit)
            out.append(f"{key}: {path} holds a secret but {who} may read it (mode {stat.S_IMODE(mode):04o});"
                       f" `chmod 600 {path}` (owned by the service's user)")
    return out
