"""A configured model: the one place where caching, budget, limits, deadlines and retries
happen.

Order of a call: cache lookup -> (per attempt) RPM/TPM limiters, concurrency slots, the
server's cool-down, budget and call-group checks, provider call. Every attempt that sent a
request goes to the sink: answered, failed, timed out or cancelled.

A model with `batch = true` sends each call, after the cache lookup, to its Batcher
(models/batching), which gathers calls across episodes into the provider's batch jobs; the
answer is recorded like any attempt (attempt 1, at the batch price). A request the batch did
not answer (expired, cancelled, a retryable error) goes on through the ordinary path below,
its attempts numbered from 2.

Time limits are wall clock: an attempt runs at most `timeout` (base.attempt_timeout),
and from a call's first request on, its attempts and the waits between them (backoff,
Retry-After, cool-down) end within `retry.max_seconds` (time queued for a first slot does
not count: a queue is not a failure).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
from dataclasses import dataclass, replace
from typing import Any, Awaitable, Callable, Protocol

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from ..errors import ModelError
from .base import ModelConfig, ModelRequest, ModelResponse, Provider, TokenLogprob, attempt_timeout
from .groups import call_group, check_group
from .pricing import batch_price, cost_usd, price_for


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


class _Deadline:
    """A call's wall-clock end: retry.max_seconds after its first request was sent."""

    __slots__ = ("seconds", "at")

    def __init__(self, seconds: float):
        self.seconds, self.at = seconds, None

    def passed_by(self, when: float) -> bool:
        return self.at is not None and when >= self.at


class _PastDeadline(ModelError):
    """A retry that could not be sent before the call's deadline (the retry loop raises the
    last real failure instead)."""

    def __init__(self) -> None:
        super().__init__("the call's retry deadline passed before another attempt could be sent",
                         kind="timeout", retryable=False)


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
    text = f'{_key_head(config)},"request":{request.canonical_json},"sample":{int(sample)}}}'
    return hashlib.sha256(text.encode()).hexdigest()


_heads: dict[int, tuple[ModelConfig, str]] = {}  # id(config) -> (config, its part of a key)


def _key_head(config: ModelConfig) -> str:
    """The config's part of a cache key (its JSON without the closing brace), encoded once per
    config object rather than once per call."""
    got = _heads.get(id(config))
    if got is not None and got[0] is config:
        return got[1]
    head = json.dumps({"base_url": config.base_url, "model": config.model,
                       "options": config.output_options(), "provider": config.provider},
                      sort_keys=True, separators=(",", ":"))[:-1]
    if len(_heads) >= 256:  # many configs (tests, re-judgings): start afresh
        _heads.clear()
    _heads[id(config)] = (config, head)
    return head


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
                 cache: ResponseCache | None = None, budget: Budget | None = None,
                 journal: Any = None):
        """`journal`: where a batched model records its provider batches (the store's
        BatchJournal; without one, batches are not durable across a crash)."""
        from . import provider_class  # late: the registry lives in the package module

        self.name, self.config = name, config
        self.provider = provider or provider_class(config.provider)(config)
        self.cache, self.budget = cache, budget
        self.price = price_for(config)
        self._slots = asyncio.Semaphore(config.concurrency)
        self._timeout = attempt_timeout(config)
        self._cooldown_until = 0.0  # no request of this model is sent before this (monotonic)
        self._rpm = self._tpm = None
        if config.rpm or config.tpm:
            from aiolimiter import AsyncLimiter  # only runs that set limits pay for the import

            self._rpm = AsyncLimiter(config.rpm, 60) if config.rpm else None
            self._tpm = AsyncLimiter(config.tpm, 60) if config.tpm else None
        self._started = False
        self._start_lock = asyncio.Lock()
        self._batcher = None
        if config.batch is not None:
            from .batching import batcher_for

            self._batcher = batcher_for(config, self.provider, journal)
            self.batch_price = batch_price(config)

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
        before = 0  # attempts already made: the batched one
        if self._batcher is not None:
            batch_key = key or cache_key(self.config, request, sample)
            response = await self._batched(request, batch_key, key, sink)
            if response is not None:
                if key is not None:
                    await self.cache.put(key, self.config, request, response)
                return response
            before = 1
        policy = self.config.retry
        deadline = _Deadline(policy.max_seconds)
        try:  # most calls succeed at once: only a retryable failure pays for the retry loop
            response = await self._attempt(request, 1 + before, key, sink, deadline)
        except ModelError as exc:
            if not exc.retryable or policy.max_attempts == 1:
                raise
            response = await self._retry(request, key, sink, exc, deadline, before)
        if key is not None:
            await self.cache.put(key, self.config, request, response)
        return response

    async def _batched(self, request: ModelRequest, batch_key: str, key: str | None,
                       sink: CallSink | None) -> ModelResponse | None:
        """The call through the provider's batch API: its response, recorded at the batch
        price; None when the batch did not answer it and the ordinary path should (the
        failure recorded as attempt 1). A non-retryable error is raised."""
        check_group()
        if self.budget is not None:
            self.budget.check()
        t0 = time.perf_counter()
        try:
            outcome = await self._batcher.call(request, batch_key)
        except asyncio.CancelledError:
            if self._batcher.sent(batch_key):  # the provider has it: a row like any attempt
                await _emit(sink, CallRecord(self.config.provider, self.config.model, request,
                                             None, time.perf_counter() - t0, 1,
                                             "cancelled before its batch answered", "cancelled",
                                             cache_key=key))
            raise
        latency = time.perf_counter() - t0
        if outcome.response is not None:
            response = _capped(outcome.response, self.config.max_reply_chars)
            cost = cost_usd(response, self.batch_price)
            if self.budget is not None:
                self.budget.add(cost, (response.tokens_in or 0) + (response.tokens_out or 0))
            await _emit(sink, CallRecord(self.config.provider, self.config.model, request,
                                         response, latency, 1, cost_usd=cost, cache_key=key))
            return response
        error = outcome.error
        await _emit(sink, CallRecord(self.config.provider, self.config.model, request, None,
                                     latency, 1, str(error), error.kind, cache_key=key))
        if not error.retryable:
            raise error
        return None

    async def _retry(self, request: ModelRequest, key: str | None, sink: CallSink | None,
                     first: ModelError, deadline: _Deadline, before: int = 0) -> ModelResponse:
        """Attempts 2.. after a retryable first failure, under the model's retry policy; no
        wait or attempt runs past the call's deadline, none starts in an abandoned group."""
        policy = self.config.retry
        pause = self._wait_after(first, 1)
        if deadline.passed_by(time.monotonic() + pause):
            raise first  # the next attempt would start after the call's deadline
        check_group()
        await asyncio.sleep(pause)
        last = first
        retrying = AsyncRetrying(
            stop=stop_after_attempt(policy.max_attempts - 1)
            | (lambda state: deadline.passed_by(time.monotonic() + state.upcoming_sleep)),
            wait=self._wait, retry=retry_if_exception(lambda e: isinstance(e, ModelError) and e.retryable),
            before_sleep=lambda _: check_group(), reraise=True)
        try:
            async for attempt in retrying:
                with attempt:
                    number = attempt.retry_state.attempt_number + 1 + before
                    try:
                        return await self._attempt(request, number, key, sink, deadline)
                    except _PastDeadline:
                        raise
                    except ModelError as exc:
                        last = exc
                        raise
        except _PastDeadline:
            raise last from None
        raise last  # not reached: tenacity either returns or re-raises the last error

    async def _attempt(self, request: ModelRequest, number: int, key: str | None,
                       sink: CallSink | None, deadline: _Deadline) -> ModelResponse:
        check_group()
        endpoint = _endpoint_semaphore(self.config)  # looked up in the running loop
        if deadline.at is None:
            await self._take_turn(request, endpoint, deadline)
        else:  # a retry: none of its waits may run past the call's deadline
            try:
                async with asyncio.timeout(deadline.at - time.monotonic()):
                    await self._take_turn(request, endpoint, deadline)
            except TimeoutError:
                raise _PastDeadline() from None
        try:
            if self.budget is not None:  # checked once a slot is free: calls queued behind a
                self.budget.check()      # cap do not all start after the budget is gone
            check_group()
            now = time.monotonic()
            if deadline.at is None:  # the call's clock starts with its first request
                deadline.at = now + deadline.seconds
            limit = min(self._timeout, deadline.at - now)
            if limit <= 0:
                raise _PastDeadline()
            response, latency = await self._send(request, number, key, sink, limit)
        finally:
            if endpoint is not None:
                endpoint.release()
            self._slots.release()
        response = _capped(response, self.config.max_reply_chars)
        cost = cost_usd(response, self.price)
        if self.budget is not None:
            self.budget.add(cost, (response.tokens_in or 0) + (response.tokens_out or 0))
        await _emit(sink, CallRecord(self.config.provider, self.config.model, request,
                                     response, latency, number, cost_usd=cost, cache_key=key))
        return response

    async def _take_turn(self, request: ModelRequest, endpoint: asyncio.Semaphore | None,
                         deadline: _Deadline) -> None:
        """Pass the RPM/TPM limiters, then take a model slot and an endpoint slot at a moment
        when no rate-limit pause is in force. A pause applies to every call, queued ones
        included: while it lasts, wait holding neither slot; if it ends after the call's
        deadline, give up (_PastDeadline)."""
        if self._rpm is not None:
            await self._rpm.acquire()
        if self._tpm is not None:
            await self._tpm.acquire(min(self._tpm.max_rate, _estimate_tokens(request)))
        while True:
            if (pause := self._cooldown_until - time.monotonic()) > 0:
                if deadline.passed_by(self._cooldown_until):
                    raise _PastDeadline()
                await asyncio.sleep(pause)
            await self._slots.acquire()
            if endpoint is not None:
                try:
                    await endpoint.acquire()
                except BaseException:
                    self._slots.release()
                    raise
            if self._cooldown_until <= time.monotonic():
                return
            if endpoint is not None:
                endpoint.release()
            self._slots.release()

    async def _send(self, request: ModelRequest, number: int, key: str | None,
                    sink: CallSink | None, limit: float) -> tuple[ModelResponse, float]:
        """One request, cut off after `limit` seconds of wall clock: (response, latency).
        A failure, a timeout or a cancellation is recorded in the sink, then raised."""
        group = call_group.get()
        task = asyncio.current_task()
        if group is not None:
            group.in_flight.add(task)
        t0 = time.perf_counter()
        try:
            async with asyncio.timeout(limit):
                response = await self.provider.complete(request)
            return response, time.perf_counter() - t0
        except ModelError as exc:
            error = exc
        except TimeoutError:
            error = self._timed_out(limit)
        except asyncio.CancelledError:
            # The request may have reached the server: it leaves a row like any attempt. The
            # sink only queues the row, so this completes before the cancellation goes on.
            await _emit(sink, CallRecord(self.config.provider, self.config.model, request, None,
                                         time.perf_counter() - t0, number,
                                         "cancelled before a reply arrived", "cancelled",
                                         cache_key=key))
            raise
        finally:
            if group is not None:
                group.in_flight.discard(task)
        if error.retry_after and error.kind == "rate_limit":
            # Every call of this model waits, capped like the retry wait that honours it.
            pause = min(error.retry_after, self.config.retry.max_seconds)
            self._cooldown_until = max(self._cooldown_until, time.monotonic() + pause)
        await _emit(sink, CallRecord(self.config.provider, self.config.model, request, None,
                                     time.perf_counter() - t0, number, str(error), error.kind,
                                     cache_key=key))
        raise error

    def _timed_out(self, limit: float) -> ModelError:
        if limit < self._timeout:
            why = f"the call's deadline (retry.max_seconds = {self.config.retry.max_seconds:g})"
        else:
            why = f"the attempt's timeout ({self._timeout:g} s)"
        return ModelError(f"no complete reply within {limit:.3g} s: {why}", retryable=True,
                          kind="timeout")

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
        if self._batcher is not None:
            await self._batcher.aclose()
        if self._started:
            await self.provider.aclose()
            self._started = False


def _capped(response: ModelResponse, cap: int) -> ModelResponse:
    """The response with a reply longer than `cap` characters cut to its head, saying so
    (`truncated_from`); its raw body and logprobs are cut alike (see _cut)."""
    n = len(response.text)
    if n <= cap:
        return response
    logprobs: list[TokenLogprob] | None = None
    if response.logprobs is not None:  # the tokens that make up the kept text
        logprobs, used = [], 0
        for token in response.logprobs:
            used += len(token.token)
            if used > cap:
                break
            logprobs.append(token)
    return replace(response, text=response.text[:cap], truncated_from=n, logprobs=logprobs,
                   raw=_cut(response.raw, cap))


def _cut(value: Any, cap: int) -> Any:
    """JSON data with every string cut to its first `cap` characters and every list to its
    first `cap` items; numbers (usage) and keys stay."""
    if isinstance(value, str):
        return value[:cap]
    if isinstance(value, dict):
        return {k: _cut(v, cap) for k, v in value.items()}
    if isinstance(value, list):
        return [_cut(v, cap) for v in value[:cap]]
    return value


def _estimate_tokens(request: ModelRequest) -> int:
    # ~4 characters a token for English text; the output side is bounded by max_tokens.
    return sum(len(c) for _, c in request.messages) // 4 + request.max_tokens


async def _emit(sink: CallSink | None, record: CallRecord) -> None:
    if sink is not None:
        result = sink(record)
        if asyncio.iscoroutine(result):
            await result
