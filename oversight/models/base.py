"""The one async interface every provider implements: the config and request/response it
speaks, and how every provider reads an attempt's timeout and a reply's token counts."""

from __future__ import annotations

import abc
import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Options that change a model's output (the rest size servers or set timeouts).
_OUTPUT_OPTIONS = ("reasoning_effort", "seed", "extra_body", "top_p", "stop", "script", "rules",
                   "chat_template")


class Price(BaseModel):
    """USD per million tokens."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    input: float = Field(ge=0, allow_inf_nan=False)
    output: float = Field(ge=0, allow_inf_nan=False)
    cached_input: float | None = Field(default=None, ge=0, allow_inf_nan=False)  # default: input
    # Provider batch prices (models/batching): default, the provider's published rule applied
    # to the prices above (half, for OpenAI and Anthropic; pricing.batch_price).
    batch_input: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    batch_output: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    batch_cached_input: float | None = Field(default=None, ge=0, allow_inf_nan=False)


class RetryPolicy(BaseModel):
    """Finite by default: a dead endpoint costs minutes, not a night."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    max_attempts: int = Field(default=6, ge=1, le=100, strict=True)
    max_seconds: float = Field(default=300.0, gt=0, allow_inf_nan=False)  # no attempt starts after
    backoff_initial: float = Field(default=1.0, ge=0, le=3600, allow_inf_nan=False)
    backoff_max: float = Field(default=60.0, ge=0, le=3600, allow_inf_nan=False)


class BatchPolicy(BaseModel):
    """`batch = true` (or a table of these) on an openai or anthropic model: its calls go to
    the provider's batch API (half price), gathered across episodes (models/batching).

    The queue is sent as one batch when no new request arrived for `linger` seconds (every
    episode's round-k turn arrives together), when its oldest request has waited `max_gather`
    seconds, or when it holds `max_requests`. A batch the provider has not finished after
    `max_seconds` is cancelled; its unanswered requests then go through the ordinary path and
    retry policy, as do requests that failed, expired or were cancelled in a batch."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    linger: float = Field(default=2.0, ge=0, le=3600, allow_inf_nan=False)
    max_gather: float = Field(default=60.0, ge=0, le=86_400, allow_inf_nan=False)
    max_requests: int = Field(default=10_000, ge=1, le=100_000, strict=True)
    max_seconds: float = Field(default=86_400.0, gt=0, allow_inf_nan=False)
    poll: float = Field(default=30.0, gt=0, le=3600, allow_inf_nan=False)  # seconds between looks


# Credentials in a spec's model options: a spec is stored with its run (text and JSON), so a
# key written in it would land in the store. Keys come from the environment (api_key_env).
# Checked: option names; names and values inside header/body/query options; and key-shaped
# values anywhere. Not free text such as the mock's scripted replies, where "Bearer bonds"
# or a rule keyed "password" are prompts, not secrets.
_SECRET_NAME = re.compile(r"^(authorization|proxy-authorization|cookie|(x-)?api[-_]?key|apikey|key"
                          r"|(access|secret|private)[-_]?key|client[-_]?secret"
                          r"|(access|auth|bearer|session|id)[-_]?token|token|password|secret"
                          r"|.*[-_](api[-_]?key|secret|password))$", re.IGNORECASE)
_AUTH_VALUE = re.compile(r"^\s*(bearer|basic)\s+\S", re.IGNORECASE)
# Key shapes, wherever they appear in a spec (batch/specread.py scans every string and table name).
_KEY_VALUE = re.compile(
    r"(?<![A-Za-z0-9])(sk-[A-Za-z0-9_-]{20,}|sk-ant-[A-Za-z0-9_-]{10,}"  # OpenAI, Anthropic
    r"|[rs]k_(live|test)_[A-Za-z0-9]{16,}"  # Stripe
    r"|(AKIA|ASIA)[0-9A-Z]{16}"  # AWS access key id
    r"|gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{20,}|glpat-[A-Za-z0-9_-]{20,}"  # GitHub, GitLab
    r"|xox[abposr]-[A-Za-z0-9-]{10,}"  # Slack
    r"|AIza[0-9A-Za-z_-]{30,}"  # Google
    r"|hf_[A-Za-z0-9]{30,}|gsk_[A-Za-z0-9]{40,}|r8_[A-Za-z0-9]{30,}"  # Hugging Face, Groq, Replicate
    r"|eyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,})")  # a JWT
_WIRE_OPTIONS = ("extra_headers", "default_headers", "headers", "extra_body", "extra_query")
_KEY_FIELDS = ("api_key", "key", "token", "secret", "password")


def _walk(value: Any, path: str):
    """(path, name or None, value) for every entry under a nested option value."""
    if isinstance(value, dict):
        for name, inner in value.items():
            yield f"{path}.{name}", str(name), inner
            yield from _walk(inner, f"{path}.{name}")
    elif isinstance(value, (list, tuple)):
        for i, inner in enumerate(value):
            yield f"{path}[{i}]", None, inner
            yield from _walk(inner, f"{path}[{i}]")


def _find_secret(options: Any) -> str | None:
    """The path of the first credential-like option, if any."""
    if not isinstance(options, dict):
        return None
    for name, value in options.items():
        if _SECRET_NAME.match(str(name)) and value not in (None, ""):
            return f"options.{name}"
        if name in _WIRE_OPTIONS:
            for path, inner_name, inner in _walk(value, f"options.{name}"):
                if inner_name is not None and _SECRET_NAME.match(inner_name) and inner not in (None, ""):
                    return path
                if isinstance(inner, str) and _AUTH_VALUE.match(inner):
                    return path
    for path, _, inner in _walk(options, "options"):
        if isinstance(inner, str) and _KEY_VALUE.search(inner):
            return path
    return None


class ModelConfig(BaseModel):
    """Per-model settings from a spec. Frozen so it hashes into episode keys."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _no_secrets(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name in _KEY_FIELDS:
                if name in data:
                    raise ValueError(f"'{name}': never write a key in a spec (the spec is stored "
                                     "with the run); put it in an environment variable and name "
                                     "that variable with api_key_env")
            if (where := _find_secret(data.get("options"))) is not None:
                raise ValueError(f"{where} looks like a credential: a spec is stored with its run, "
                                 "so keys and auth headers must come from the environment "
                                 "(api_key_env), never from the spec")
        return data

    @field_validator("batch", mode="before")
    @classmethod
    def _batch_flag(cls, value: Any) -> Any:
        """`batch = true` is the default policy, `batch = false` none."""
        if value is True:
            return BatchPolicy()
        if value is False:
            return None
        return value

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, name: str | None) -> str | None:
        if name is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,127}", name):
            raise ValueError("expected the NAME of an environment variable holding the key "
                             "(letters, digits and _, such as OPENAI_API_KEY), not the key itself")
        return name

    @field_validator("base_url")
    @classmethod
    def _plain_url(cls, url: str | None) -> str | None:
        """An endpoint, never a credential; the value is not echoed (it may hold a key)."""
        if url is None:
            return None
        from urllib.parse import urlsplit
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 -- raises ValueError for a malformed port
        except ValueError:
            parts = None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("expected an http(s) URL such as http://127.0.0.1:8000/v1")
        if "@" in parts.netloc:
            raise ValueError("must not hold a user name or password (user:KEY@host): the spec "
                             "is stored with the run; name the key's variable with api_key_env")
        if "?" in url or "#" in url:
            raise ValueError("must not have a query string or fragment (a key such as ?key=... "
                             "would be stored with the run); name the key's variable with "
                             "api_key_env, and put other parameters in options.extra_query")
        return url

    provider: str
    model: str = ""
    base_url: str | None = None
    # The *name* of the environment variable holding the key; the key itself is never stored.
    api_key_env: str | None = None
    temperature: float = Field(default=0.0, ge=0, le=2, strict=True, allow_inf_nan=False)
    max_tokens: int = Field(default=256, ge=1, le=10_000_000, strict=True)
    concurrency: int = Field(default=4, ge=1, le=100_000, strict=True)  # calls in flight
    # Calls in flight to one endpoint (provider + base_url), shared by every model using it.
    endpoint_concurrency: int | None = Field(default=None, ge=1, le=100_000, strict=True)
    rpm: int | None = Field(default=None, ge=1, strict=True)  # requests per minute
    tpm: int | None = Field(default=None, ge=1, strict=True)  # tokens per minute (prompt + max_tokens)
    timeout: float = Field(default=120.0, gt=0, allow_inf_nan=False)  # seconds for one attempt
    # A safety cap: a longer reply is cut to its head (ModelResponse.truncated_from says so).
    max_reply_chars: int = Field(default=100_000, ge=1)
    retry: RetryPolicy = RetryPolicy()
    price: Price | None = None  # overrides the shipped price table
    # Provider batch mode (openai, anthropic): `batch = true` or a BatchPolicy table. Not part
    # of identity(): a batched call writes what an ordinary one would, at a lower price.
    batch: BatchPolicy | None = None
    # Provider-specific knobs (e.g. the local model's context size or the mock's script).
    options: dict[str, Any] = {}

    def output_options(self) -> dict[str, Any]:
        """Provider options that change what the model writes (not timeouts or sizing)."""
        return {k: v for k, v in self.options.items() if k in _OUTPUT_OPTIONS}

    def identity(self) -> dict[str, Any]:
        """What makes two configs produce the same outputs: keys episodes and runs, so raising
        a concurrency cap or a timeout does not orphan finished work."""
        return {"provider": self.provider, "model": self.model, "base_url": self.base_url,
                "temperature": self.temperature, "max_tokens": self.max_tokens,
                "options": self.output_options()}

    def public(self) -> dict[str, Any]:
        """What is safe to store: everything here (no secret is ever a field)."""
        return self.model_dump(mode="json")


def attempt_timeout(config: Any) -> float:
    """Seconds one attempt may take: options["timeout"], else the config's `timeout`."""
    value = config.options.get("timeout")
    if value is None:
        value = getattr(config, "timeout", None) or 600.0
    return float(value)


@dataclass(frozen=True)
class ModelRequest:
    messages: tuple[tuple[str, str], ...]  # (role, content) with role in system/user/assistant
    max_tokens: int = 256
    temperature: float = 0.0
    logprobs: bool = False
    top_logprobs: int = 0
    stop: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "messages": [{"role": r, "content": c} for r, c in self.messages],
            "max_tokens": self.max_tokens, "temperature": self.temperature,
            "logprobs": self.logprobs, "top_logprobs": self.top_logprobs, "stop": list(self.stop),
        }

    @cached_property
    def canonical_json(self) -> str:
        """as_dict() as compact JSON with sorted keys, encoded once: the cache key hashes it
        and the store keeps it as the call's request."""
        return json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":"))


@dataclass
class TokenLogprob:
    token: str
    logprob: float
    top: dict[str, float] = field(default_factory=dict)  # candidate token -> logprob


_MAX_COUNT = 2**63 - 1  # the largest SQLite (and PostgreSQL BIGINT) INTEGER


def as_int(value: Any) -> int | None:
    """A token count from a usage field: an int (not a bool) in [0, 2**63), else None (unknown).
    A negative count would shrink a run's spend and let it overrun its budget; a larger one
    cannot be stored."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_COUNT:
        return value
    return None


@dataclass
class ModelResponse:
    text: str
    model: str = ""
    tokens_in: int | None = None
    tokens_out: int | None = None
    tokens_cached: int | None = None  # input tokens served from the provider's prompt cache
    tokens_reasoning: int | None = None  # hidden reasoning tokens (billed as output)
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] | None = None
    raw: dict[str, Any] | None = None  # the provider's JSON body, minus nothing secret
    truncated_from: int | None = None  # the reply's length in characters before it was cut


class Provider(abc.ABC):
    """Turns a ModelRequest into a ModelResponse. Raise ModelError on failure."""

    def __init__(self, config: ModelConfig):
        self.config = config

    @abc.abstractmethod
    async def complete(self, request: ModelRequest) -> ModelResponse: ...

    async def start(self) -> None:
        """Acquire resources (a server process, a client) before the first call."""

    async def aclose(self) -> None:
        """Release resources; called once at the end of a run."""
