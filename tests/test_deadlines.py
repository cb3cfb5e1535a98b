"""Wall-clock limits on a model call, a rate-limit pause that every call honours, a cap on
reply size and usage counts a store can hold: the real openai and anthropic SDKs over real
HTTP against the FakeServer on 127.0.0.1, through `Model` (where every limit lives).

No speed thresholds: the only time comparisons are bounds the behaviour itself dictates
(a server that trickles for minutes vs. a 1 s timeout; a Retry-After window), with generous
slack. GUARD only turns a hang into a failure.
"""

from __future__ import annotations

import asyncio
import json
import math
import time

import anthropic
import openai
import pytest

from oversight.errors import ModelError
from oversight.models import Model, ModelConfig, ModelRequest, provider_class
from oversight.models.base import as_int
from oversight.testing.fakeserver import FakeServer

GUARD = 60.0  # seconds: only a bound on a call that would otherwise hang a broken build
PROVIDERS = ("openai", "anthropic")
FOREVER = {"kind": "trickle", "interval": 0.5}  # one byte per 0.5 s: minutes for a body


def model(srv: FakeServer, provider: str = "openai", **kw) -> Model:
    base = srv.anthropic_base_url if provider == "anthropic" else srv.openai_base_url
    name = "openai/fake-model" if provider == "litellm" else "fake-model"
    return Model("m", ModelConfig(provider=provider, model=name, base_url=base, **kw))


def ask(text: str = "Is the sky blue?", **kw) -> ModelRequest:
    return ModelRequest(messages=(("user", text),), max_tokens=kw.pop("max_tokens", 100), **kw)


async def complete(m: Model, request: ModelRequest | None = None, records: list | None = None):
    try:
        return await asyncio.wait_for(m.complete(request or ask(), sink=records.append
                                                 if records is not None else None), GUARD)
    finally:
        await m.aclose()


async def failing(srv: FakeServer, m: Model, records: list) -> tuple[ModelError, float, int]:
    """Run a call that must fail: (its error, seconds it took, requests the server received)."""
    t0 = time.monotonic()
    with pytest.raises(ModelError) as info:
        await complete(m, records=records)
    return info.value, time.monotonic() - t0, srv.stats["received"]


# --- the fake server's slow and huge answers ------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("provider", PROVIDERS)
async def test_trickle_fault_sends_a_valid_body_slower_than_the_read_timeout(provider):
    """What D3 is about: a body that keeps coming, a chunk at a time, never trips the SDK's
    (per-read) timeout however long the whole answer takes."""
    interval, chunk = 0.05, 16
    async with FakeServer(reply="Answer: B", faults=[{"kind": "trickle", "interval": interval,
                                                      "chunk": chunk}]) as srv:
        t0 = time.monotonic()
        if provider == "openai":
            async with openai.AsyncOpenAI(base_url=srv.openai_base_url, api_key="x",
                                          max_retries=0, timeout=0.5) as client:
                raw = await client.chat.completions.with_raw_response.create(
                    model="gpt-test", messages=[{"role": "user", "content": "Hi"}])
                text = raw.parse().choices[0].message.content
        else:
            async with anthropic.AsyncAnthropic(base_url=srv.anthropic_base_url, api_key="x",
                                                max_retries=0, timeout=0.5) as client:
                raw = await client.messages.with_raw_response.create(
                    model="claude-test", max_tokens=64,
                    messages=[{"role": "user", "content": "Hi"}])
                text = (await raw.parse()).content[0].text
        elapsed = time.monotonic() - t0
        body = raw.http_response.content
    assert text == "Answer: B"
    assert srv.stats["answered"] == 1 and srv.stats["faulted"] == {"trickle": 1}
    # The server sleeps `interval` between chunks: the answer cannot have come sooner.
    chunks = math.ceil(len(body) / chunk)
    assert elapsed >= (chunks - 1) * interval > 0.5


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_huge_fault_ignores_max_tokens(provider):
    async with FakeServer(faults=[{"kind": "huge", "chars": 300_000}]) as srv:
        base = srv.openai_base_url if provider == "openai" else srv.anthropic_base_url
        # The provider alone, no Model: no cap between the wire and the reply.
        p = provider_class(provider)(ModelConfig(provider=provider, model="m", base_url=base))
        try:
            response = await p.complete(ask(max_tokens=5))
        finally:
            await p.aclose()
    assert len(response.text) == 300_000 and response.text.startswith("Answer: A")


# --- D3: a wall-clock limit on each attempt and on the whole call ----------------------------

@pytest.mark.slow
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("where", ["config", "options"])
async def test_attempt_timeout_is_wall_clock_not_per_read(provider, where):
    """A server trickling its body a byte per 0.5 s would keep one attempt alive for minutes;
    timeout = 1 must end it (here: well under 10 s), as a retryable timeout that is recorded."""
    limit = {"timeout": 1.0} if where == "config" else {"options": {"timeout": 1.0}}
    records: list = []
    async with FakeServer(faults=[FOREVER]) as srv:
        m = model(srv, provider, retry={"max_attempts": 1}, **limit)
        error, elapsed, received = await failing(srv, m, records)
    assert elapsed < 10
    assert (error.kind, error.retryable) == ("timeout", True)
    [record] = records
    assert (record.attempt, record.error_kind, record.response) == (1, "timeout", None)
    assert received == 1


@pytest.mark.slow
@pytest.mark.parametrize("provider", PROVIDERS)
async def test_retry_deadline_cuts_a_running_attempt_short(provider):
    """retry.max_seconds = 1.5 bounds the whole call, even inside an attempt whose own timeout
    (60 s) has not run out: the call ends well before that attempt would have."""
    records: list = []
    async with FakeServer(faults=[FOREVER] * 10) as srv:
        m = model(srv, provider, timeout=60.0,
                  retry={"max_attempts": 5, "max_seconds": 1.5, "backoff_initial": 0.01})
        error, elapsed, received = await failing(srv, m, records)
    assert elapsed < 10
    assert error.kind == "timeout"
    assert [r.error_kind for r in records] == ["timeout"] * len(records)
    assert len(records) == received >= 1  # every request that reached the server is recorded


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_retry_after_beyond_the_deadline_is_not_waited_for(provider):
    records: list = []
    async with FakeServer(faults=[{"kind": "rate_limit", "retry_after": 30}] * 3) as srv:
        m = model(srv, provider, retry={"max_attempts": 5, "max_seconds": 1.0})
        error, elapsed, _ = await failing(srv, m, records)
    assert elapsed < 10  # not the 30 s the server asked for
    assert error.kind == "rate_limit" and len(records) == 1


async def test_a_pause_another_call_started_does_not_outlast_the_deadline():
    """Call A fails (500) and would retry; call B meanwhile gets a 429 asking for 30 s. A's
    retry may not wait past A's own deadline (retry.max_seconds = 2): both end far sooner."""

    def faults(index, req):
        prompt = req["messages"][0]["content"]
        if prompt == "A":
            return {"kind": "server_error", "delay": 0.3}
        return {"kind": "rate_limit", "retry_after": 30}

    async with FakeServer(faults=faults) as srv:
        m = model(srv, concurrency=2, retry={"max_attempts": 5, "max_seconds": 2.0,
                                             "backoff_initial": 0.01, "backoff_max": 0.01})
        t0 = time.monotonic()
        try:
            a, b = await asyncio.wait_for(asyncio.gather(
                m.complete(ask("A")), m.complete(ask("B")), return_exceptions=True), GUARD)
        finally:
            await m.aclose()
        elapsed = time.monotonic() - t0
        received = srv.stats["received"]
    assert elapsed < 10
    assert isinstance(a, ModelError) and a.kind == "server"
    assert isinstance(b, ModelError) and b.kind == "rate_limit"
    assert received == 2


async def test_a_retry_does_not_wait_for_the_rpm_limiter_past_the_deadline():
    """rpm = 1: after a 500 the retry would wait about a minute for the limiter; with
    retry.max_seconds = 1.5 the call gives up (with the 500) long before that."""
    records: list = []
    async with FakeServer(faults=["server_error"] * 3) as srv:
        m = model(srv, rpm=1, retry={"max_attempts": 5, "max_seconds": 1.5,
                                     "backoff_initial": 0.01, "backoff_max": 0.01})
        error, elapsed, received = await failing(srv, m, records)
    assert elapsed < 30
    assert error.kind == "server"
    assert received == len(records) == 1


# --- D13: a 429 pauses every call of the model, queued ones included ------------------------

@pytest.mark.slow
@pytest.mark.parametrize("provider", PROVIDERS)
async def test_rate_limit_pause_holds_back_calls_already_waiting_for_a_slot(provider):
    """concurrency 8, 24 calls: the first request is answered 429 (Retry-After 1 s) while
    seven others are in flight and sixteen wait for a slot. Slots free up inside the window;
    the server must still see no request until the window is over (1 s, 0.1 s slack)."""
    window = 1.0

    def faults(index, req):
        if index == 0:  # answered after every first-wave request has arrived
            return {"kind": "rate_limit", "retry_after": window, "delay": 0.5}
        return None

    async with FakeServer(latency=1.0, faults=faults) as srv:
        m = model(srv, provider, concurrency=8, timeout=30.0,
                  retry={"max_attempts": 3, "max_seconds": 60})
        try:
            replies = await asyncio.wait_for(asyncio.gather(
                *(m.complete(ask(f"question {i}")) for i in range(24))), GUARD)
        finally:
            await m.aclose()
        requests = list(srv.requests)
    assert all(r.text for r in replies)
    [limited] = [r for r in requests if r["fault"] is not None]
    opened = limited["done_at"]  # when the 429 left the server
    inside = [r["json"]["messages"][0]["content"] for r in requests
              if opened < r["at"] < opened + window - 0.1]
    assert inside == []
    assert len(requests) == 25  # 24 calls + the retry of the limited one
    assert sum(r["at"] > opened for r in requests) == 17  # queued ones did wait, then went


# --- D14: a cap on the size of a reply ---------------------------------------------------------

@pytest.mark.parametrize("provider", PROVIDERS)
async def test_huge_reply_is_cut_to_max_reply_chars_and_says_so(provider):
    records: list = []
    async with FakeServer(faults=[{"kind": "huge", "chars": 2_000_000}]) as srv:
        m = model(srv, provider, max_reply_chars=1000)
        response = await complete(m, records=records)
    assert len(response.text) == 1000 and response.text.startswith("Answer: A")
    assert response.truncated_from == 2_000_000
    assert len(json.dumps(response.raw)) < 20_000
    usage = response.raw["usage"]  # what is not the reply text stays
    assert (usage["prompt_tokens"] if provider == "openai" else usage["input_tokens"]) == 4
    assert response.tokens_out > 100  # the server's count of the whole reply (it ignored max_tokens)
    [record] = records
    assert record.response is response  # what the store gets is the cut reply


async def test_reply_within_the_cap_is_whole():
    async with FakeServer(reply="Answer: B") as srv:
        response = await complete(model(srv, max_reply_chars=9))
    assert (response.text, response.truncated_from) == ("Answer: B", None)


async def test_cut_reply_keeps_only_the_logprobs_of_the_kept_text():
    async with FakeServer(faults=[{"kind": "huge", "chars": 5000, "logprobs": True}]) as srv:
        response = await complete(model(srv, max_reply_chars=1000),
                                  ask(logprobs=True, top_logprobs=3))
    assert response.truncated_from == 5000
    tokens = "".join(t.token for t in response.logprobs)
    assert response.text.startswith(tokens) and 990 <= len(tokens) <= 1000


# --- D2: counts a SQLite INTEGER cannot hold are unknown -------------------------------------

def test_as_int_bounds():
    assert as_int(2**63 - 1) == 2**63 - 1
    assert as_int(2**63) is None and as_int(2**64) is None and as_int(-1) is None
    assert as_int(True) is None and as_int(0) == 0


_OPENAI_BODY = {"id": "chatcmpl-x", "object": "chat.completion", "created": 0, "model": "m",
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": "Answer: B"}}],
                "usage": {"prompt_tokens": 2**64, "completion_tokens": 2,
                          "total_tokens": 2**64 + 2,
                          "prompt_tokens_details": {"cached_tokens": 2**63},
                          "completion_tokens_details": {"reasoning_tokens": 2**70}}}
_ANTHROPIC_BODY = {"id": "msg_x", "type": "message", "role": "assistant", "model": "m",
                   "content": [{"type": "text", "text": "Answer: B"}], "stop_reason": "end_turn",
                   "stop_sequence": None,
                   "usage": {"input_tokens": 2**62, "output_tokens": 2**64,
                             "cache_read_input_tokens": 2**62,
                             "cache_creation_input_tokens": 2**62}}


@pytest.mark.parametrize("provider", ["openai", "anthropic", "litellm"])
async def test_usage_counts_too_large_to_store_are_unknown(provider):
    body = _ANTHROPIC_BODY if provider == "anthropic" else _OPENAI_BODY
    async with FakeServer(faults=[{"kind": "malformed", "body": json.dumps(body)}]) as srv:
        response = await complete(model(srv, provider))
    assert response.text == "Answer: B"
    counts = (response.tokens_in, response.tokens_out, response.tokens_cached,
              response.tokens_reasoning)
    assert all(c is None or 0 <= c < 2**63 for c in counts)
    if provider == "anthropic":  # each part fits, their sum (the whole prompt) does not
        assert (response.tokens_in, response.tokens_out, response.tokens_cached) == \
            (None, None, 2**62)
    else:
        assert (response.tokens_in, response.tokens_out) == (None, 2)
