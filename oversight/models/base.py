"""The one async interface every provider implements, and the request/response it speaks."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict


class ModelConfig(BaseModel):
    """Per-model settings from a spec. Frozen so it hashes into episode keys."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    provider: str
    model: str = ""
    base_url: str | None = None
    # The *name* of the environment variable holding the key; the key itself is never stored.
    api_key_env: str | None = None
    temperature: float = 0.0
    max_tokens: int = 256
    concurrency: int = 4
    # Provider-specific knobs (e.g. the local model's context size or the mock's script).
    options: dict[str, Any] = {}

    def public(self) -> dict[str, Any]:
        """What is safe to store: everything here (no secret is ever a field)."""
        return self.model_dump(mode="json")


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


@dataclass
class TokenLogprob:
    token: str
    logprob: float
    top: dict[str, float] = field(default_factory=dict)  # candidate token -> logprob


@dataclass
class ModelResponse:
    text: str
    model: str = ""
    tokens_in: int | None = None
    tokens_out: int | None = None
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] | None = None
    raw: dict[str, Any] | None = None  # the provider's JSON body, minus nothing secret


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
