"""Models: one async `complete(request)` with providers behind it, imported lazily.

Provider modules import their SDKs at module level, so a provider costs nothing until a spec
names it (litellm, next, takes seconds to import).
"""

from __future__ import annotations

import asyncio
import importlib
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

from ..errors import ModelError
from .base import ModelConfig, ModelRequest, ModelResponse, Provider, TokenLogprob

PROVIDERS: dict[str, str] = {
    "openai": "oversight.models.openai_provider:OpenAIProvider",
    "local": "oversight.models.local:LocalProvider",
    "mock": "oversight.models.mock:MockProvider",
}

__all__ = ["ModelConfig", "ModelRequest", "ModelResponse", "Provider", "TokenLogprob",
           "Model", "CallRecord", "PROVIDERS", "provider_class"]


def provider_class(name: str) -> type[Provider]:
    try:
        target = PROVIDERS[name]
    except KeyError:
        raise ModelError(f"unknown provider {name!r}; known: {', '.join(sorted(PROVIDERS))}") from None
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclass
class CallRecord:
    """One attempt at a model call, as the store records it (never a secret)."""

    provider: str
    model: str
    request: dict
    response: ModelResponse | None
    latency: float
    attempt: int
    error: str | None = None


CallSink = Callable[[CallRecord], Awaitable[None] | None]


class Model:
    """A configured model: a provider plus the concurrency cap every call goes through."""

    def __init__(self, name: str, config: ModelConfig, provider: Provider | None = None):
        self.name = name
        self.config = config
        self.provider = provider or provider_class(config.provider)(config)
        self._slots = asyncio.Semaphore(config.concurrency)
        self._started = False
        self._start_lock = asyncio.Lock()

    async def start(self) -> None:
        async with self._start_lock:
            if not self._started:
                await self.provider.start()
                self._started = True

    async def complete(self, request: ModelRequest, sink: CallSink | None = None) -> ModelResponse:
        """One call under this model's concurrency cap; the attempt is reported to `sink`."""
        await self.start()
        async with self._slots:
            t0 = time.perf_counter()
            try:
                response = await self.provider.complete(request)
            except ModelError as exc:
                record = CallRecord(self.config.provider, self.config.model, request.as_dict(),
                                    None, time.perf_counter() - t0, 1, str(exc))
                if sink is not None:
                    await _maybe_await(sink(record))
                raise
            record = CallRecord(self.config.provider, self.config.model, request.as_dict(),
                                response, time.perf_counter() - t0, 1)
        if sink is not None:
            await _maybe_await(sink(record))
        return response

    async def aclose(self) -> None:
        if self._started:
            await self.provider.aclose()
            self._started = False


async def _maybe_await(value):
    if asyncio.iscoroutine(value):
        await value
