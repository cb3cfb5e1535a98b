"""A provider's key: read from the environment (`api_key`), scrubbed from anything it returns
(`redact`)."""

from __future__ import annotations

import os
from typing import Any

from ..errors import ModelError


def api_key(config: Any, default_env: str | None) -> str | None:
    """The key from the variable the config names (api_key_env), else from the provider's usual
    one (`default_env`) when it talks to the provider's own API. Unset while that API is the
    target is an error before any call; a custom base_url (a local server) may need none."""
    env = config.api_key_env or (default_env if config.base_url is None else None)
    key = os.environ.get(env) if env else None
    if env and not key and config.base_url is None:
        raise ModelError(f"environment variable {env} is not set (needed by model "
                         f"{config.model!r})", kind="auth")
    return key


def redact(value: Any, secrets: tuple[str, ...] | list[str]) -> Any:
    """`value` with every occurrence of a secret replaced by "***" (strings, dicts, lists)."""
    secrets = tuple(s for s in secrets if s and len(s) >= 4)
    if not secrets:
        return value
    if isinstance(value, str):
        for s in secrets:
            value = value.replace(s, "***")
        return value
    if isinstance(value, dict):
        return {redact(k, secrets): redact(v, secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v, secrets) for v in value)
    return value
