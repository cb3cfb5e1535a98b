"""A configured model: the one place where caching, budget, limits and retries happen.

Order of a call: cache lookup -> (per attempt) budget check, server cool-down, RPM/TPM
limiters, concurrency slots, provider call. Every attempt, failed or not, goes to the sink.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, Protocol

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_before_delay,
)

from ..errors import ModelError
from .base import ModelConfig, ModelRequest, ModelResponse, Provider
from .pricing import cost_usd, price_for


@dataclass
class CallRecord:
    """One attempt at a model call, as the store records it (never a secret)."""

    provider: str
    model: str
    request: ModelRequest
    response: ModelResponse | None
    latency: float
    attempt: int
    error: str | None = None
    error_kind: str | None = None
    cost_usd: float | None = None
    cache_key: str | None = None
    cache_hit: bool = False


CallSink = Callable[[CallRecord], Awaitable[None] | None]


class ResponseCache(Protocol):
    async def get(self, key: str) -> ModelResponse | None: ...
    async def put(self, key: str, config: ModelConfig, request: ModelRequest, response: ModelResponse) -> None: ...


class BudgetExhausted(ModelError):
    def __init__(self, message: str):
        super().__init__(message, retryable=False, kind="budget")


class Budget:
    """Run-wide caps. Checked before each attempt starts; calls in flight are not cut."""

    def __init__(self, usd: float | None = None, tokens: int | None = None, spent_usd: float = 0.0,
                 spent_tokens: int = 0):
        self.usd, self.tokens = usd, tokens
        self.spent_usd, self.spent_tokens = spent_usd, spent_tokens

    @property
    def exhausted(self) -> bool:
        return ((self.usd is not None and self.spent_usd >= self.usd)
                or (self.tokens is not None and self.spent_tokens >= self.tokens))

    def check(self) -> None:
        if self.exhausted:
            raise BudgetExhausted(f"budget reached: ${self.spent_usd:.4f} of "
                                  f"{'$%.4f' % self.usd if self.usd is not None else 'no $ cap'}, "
                                  f"{self.spent_tokens} of {self.tokens or 'no'} token cap")

    def add(self, usd: float | None, tokens: int) -> None:
        self.spent_usd += usd or 0.0
        self.spent_tokens += tokens


def cache_key(config: ModelConfig, request: ModelRequest, sample: int) -> str:
    """Everything that changes the output, plus a sample index so that temperature > 0
    sampling of the same request is not collapsed into one answer."""
    # The compact, key-sorted JSON of {provider, model, base_url, options, request, sample},
    # assembled around the request's own encoding so a request is encoded once per call.
    head = json.dumps({"base_url": config.base_url, "model": config.model,
                       "options": config.output_options(), "provider": config.provider},
                      sort_keys=True, separators=(",", ":"))
    text = f'{head[:-1]},"request":{request.canonical_json},"sample":{int(sample)}}}'
    return hashlib.sha256(text.encode()).hexdigest()


# Per event loop: an asyncio.Semaphore belongs to the loop it first waited in, so a second
# batch in the same process (another asyncio.run) needs slots of its own.
_endpoint_slots: dict[asyncio.AbstractEventLoop, dict[tuple[str, str | None], asyncio.Semaphore]] = {}


def _endpoint_semaphore(config: ModelConfig) -> asyncio.Semaphore | None:
    if config.endpoint_concurrency is None:
        return None
    loop = asyncio.get_running_loop()
    for closed in [lp for lp in _endpoint_slots if lp.is_closed()]:
        del _endpoint_slots[closed]
    slots = _endpoint_slots.setdefault(loop, {})
    key = (config.provider, config.base_url)
    if key not in slots:
        slots[key] = asyncio.Semaphore(config.endpoint_concurrency)
    return slots[key]


class Model:
    """A provider plus this model's caps, cache, budget and retry policy."""

    def __init__(self, name: str, config: ModelConfig, provider: Provider | None = None, *,
                 cache: ResponseCache | None = None, budget: Budget | None = None):
        from . import provider_class  # late: the registry lives in the package module

        self.name, self.config = name, config
        self.provider = provider or provider_class(config.provider)(config)
        self.cache, self.budget = cache, budget
        self.price = price_for(config)
        self._slots = asyncio.Semaphore(config.concurrency)
        self._cooldown_until = 0.0
        self._rpm = self._tpm = None
        if config.rpm or config.tpm:
            from aiolimiter import AsyncLimiter  # only runs that set limits pay for the import

            self._rpm = AsyncLimiter(config.rpm, 60) if config.rpm else None
            self._tpm = AsyncLimiter(config.tpm, 60) if config.tpm else None
        self._started = False
        self._start_lock = asyncio.Lock()

    async def start(self) -> None:
        async with self._start_lock:
            if not self._started:
                await self.provider.start()
                self._started = True

    async def complete(self, request: ModelRequest, sink: CallSink | None = None,
                       sample: int = 0) -> ModelResponse:
        key = cache_key(self.config, request, sample) if self.cache is not None else None
        if key is not None:
            hit = await self.cache.get(key)
            if hit is not None:
                await _emit(sink, CallRecord(self.config.provider, self.config.model, request,
                                             hit, 0.0, 0, cache_key=key, cache_hit=True))
                return hit
        await self.start()
        policy = self.config.retry
        started = time.monotonic()
        try:  # most calls succeed at once: only a retryable failure pays for the retry loop
            response = await self._attempt(request, 1, key, sink)
        except ModelError as exc:
            if not exc.retryable or policy.max_attempts == 1:
                raise
            response = await self._retry(request, key, sink, exc, started)
        if key is not None:
            await self.cache.put(key, self.config, request, response)
        return response

    async def _retry(self, request: ModelRequest, key: str | None, sink: CallSink | None,
                     first: ModelError, started: float) -> ModelResponse:
        """Attempts 2.. after a retryable first failure, under the model's retry policy."""
        policy = self.config.retry
        pause = self._wait_after(first, 1)
        if time.monotonic() - started + pause >= policy.max_seconds:
            raise first  # the next attempt would start after the policy's deadline
        await asyncio.sleep(pause)
        left = policy.max_seconds - (time.monotonic() - started)
        retrying = AsyncRetrying(
            stop=stop_after_attempt(policy.max_attempts - 1) | stop_before_delay(max(left, 0.0)),
            wait=self._wait, retry=retry_if_exception(lambda e: isinstance(e, ModelError) and e.retryable),
            reraise=True)
        async for attempt in retrying:
            with attempt:
                return await self._attempt(request, attempt.retry_state.attempt_number + 1, key, sink)
        raise first  # not reached: tenacity either returns or re-raises the last error

    async def _attempt(self, request: ModelRequest, number: int, key: str | None,
                       sink: CallSink | None) -> ModelResponse:
        if (pause := self._cooldown_until - time.monotonic()) > 0:
            await asyncio.sleep(pause)  # the server asked every caller to wait, not just one
        if self._rpm is not None:
            await self._rpm.acquire()
        if self._tpm is not None:
            await self._tpm.acquire(min(self._tpm.max_rate, _estimate_tokens(request)))
        async with self._slots:
            if self.budget is not None:  # checked once a slot is free: calls queued behind a
                self.budget.check()      # cap do not all start after the budget is gone
            endpoint = _endpoint_semaphore(self.config)  # looked up in the running loop
            if endpoint is not None:
                await endpoint.acquire()
            t0 = time.perf_counter()
            try:
                response = await self.provider.complete(request)
            except ModelError as exc:
                if exc.retry_after and exc.kind == "rate_limit":
                    self._cooldown_until = max(self._cooldown_until, time.monotonic() + exc.retry_after)
                await _emit(sink, CallRecord(self.config.provider, self.config.model, request,
                                             None, time.perf_counter() - t0, number, str(exc),
                                             exc.kind, cache_key=key))
                raise
            finally:
                if endpoint is not None:
                    endpoint.release()
        cost = cost_usd(response, self.price)
        if self.budget is not None:
            self.budget.add(cost, (response.tokens_in or 0) + (response.tokens_out or 0))
        await _emit(sink, CallRecord(self.config.provider, self.config.model, request,
                                     response, time.perf_counter() - t0, number, cost_usd=cost,
                                     cache_key=key))
        return response

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        return self._wait_after(exc, state.attempt_number + 1)  # +1: the first try ran outside

    def _wait_after(self, exc: BaseException | None, attempt: int) -> float:
        """Honour the server's Retry-After; otherwise exponential backoff with full jitter:
        uniform in [0, min(backoff_max, backoff_initial * 2^(attempt - 1))]."""
        if isinstance(exc, ModelError) and exc.retry_after is not None:
            return min(exc.retry_after, self.config.retry.max_seconds)
        policy = self.config.retry
        return random.uniform(0, min(policy.backoff_max, policy.backoff_initial * 2 ** (attempt - 1)))

    async def aclose(self) -> None:
        if self._started:
            await self.provider.aclose()
            self._started = False


def _estimate_tokens(request: ModelRequest) -> int:
    # ~4 characters a token for English text; the output side is bounded by max_tokens.
    return sum(len(c) for _, c in request.messages) // 4 + request.max_tokens


async def _emit(sink: CallSink | None, record: CallRecord) -> None:
    if sink is not None:
        result = sink(record)
        if asyncio.iscoroutine(result):
            await result
