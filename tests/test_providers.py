"""Providers over real HTTP: the openai, anthropic and litellm client code against the
fault-injecting fake server on 127.0.0.1, and the shared header/classification rules.

Every failure must reach the retry layer as a ModelError with the right kind, retryable flag,
status and server wait hint, and no API key may ever leave a provider in anything it returns.
No skips: a missing SDK fails these tests.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import re
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import pytest_asyncio

from oversight.errors import ModelError
from oversight.models import ModelConfig, ModelRequest, provider_class
from oversight.models.anthropic_provider import AnthropicProvider
from oversight.models.credentials import redact
from oversight.models.failures import classify_status
from oversight.models.litellm_provider import LitellmProvider
from oversight.models.openai_provider import OpenAIProvider
from oversight.models.retry_after import retry_after_seconds
from oversight.testing.fakeserver import FakeServer

KEY_ENV = "OVERSIGHT_TEST_PROVIDER_KEY"
SECRET = "sk-test-LEAKCHECK-12345"
NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)

# --- network guard: litellm must never reach past 127.0.0.1 -------------------------------

_OUTSIDE: list[tuple[str, object]] = []


def _audit(event: str, args: tuple) -> None:
    if event == "socket.connect":
        addr = args[1]
        if isinstance(addr, tuple) and addr and not str(addr[0]).startswith(("127.", "::1")):
            _OUTSIDE.append(("connect", addr))
    elif event == "socket.getaddrinfo":
        host = args[0]
        if host is not None and str(host) not in ("localhost", "::1") \
                and not str(host).startswith("127."):
            _OUTSIDE.append(("dns", host))


sys.addaudithook(_audit)


@pytest.fixture(autouse=True)
def stays_on_loopback():
    before = len(_OUTSIDE)
    yield
    assert _OUTSIDE[before:] == [], "a provider reached beyond 127.0.0.1"


# --- helpers ------------------------------------------------------------------------------

PROVIDERS = ("openai", "anthropic", "litellm-openai", "litellm-anthropic")


def wire(name: str) -> str:
    return "anthropic" if name.endswith("anthropic") else "openai"


def make(name: str, srv: FakeServer, **options):
    """A provider of `name` aimed at the fake server, its key read from KEY_ENV."""
    base = srv.anthropic_base_url if wire(name) == "anthropic" else srv.openai_base_url
    if name == "openai":
        cfg = ModelConfig(provider="openai", model="gpt-4o-mini", base_url=base,
                          api_key_env=KEY_ENV, options=options)
        return OpenAIProvider(cfg)
    if name == "anthropic":
        cfg = ModelConfig(provider="anthropic", model="claude-test-model", base_url=base,
                          api_key_env=KEY_ENV, options=options)
        return AnthropicProvider(cfg)
    model = "anthropic/claude-test-model" if wire(name) == "anthropic" else "openai/whatever"
    cfg = ModelConfig(provider="litellm", model=model, base_url=base, api_key_env=KEY_ENV,
                      options=options)
    return LitellmProvider(cfg)


def ask(*messages: tuple[str, str], **kw) -> ModelRequest:
    messages = messages or (("system", "You are terse."), ("user", "Is the sky blue?"))
    kw.setdefault("max_tokens", 16)
    return ModelRequest(messages=tuple(messages), **kw)


async def call(name: str, srv: FakeServer, request: ModelRequest | None = None, **options):
    provider = make(name, srv, **options)
    try:
        return await provider.complete(request or ask())
    finally:
        await provider.aclose()


async def failure(name: str, srv: FakeServer, fault, **options) -> ModelError:
    srv.faults = [fault]
    with pytest.raises(ModelError) as info:
        await call(name, srv, **options)
    return info.value


def assert_no_secret(*objects) -> None:
    for obj in objects:
        assert SECRET not in repr(obj)
        assert SECRET not in str(obj)


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    return SECRET


# The server must live on the test's own event loop (the project default for async fixtures
# is the session loop, which is not running while a function-scoped test runs).
@pytest_asyncio.fixture(loop_scope="function")
async def srv(key):
    async with FakeServer(reply="Answer: A") as server:
        yield server


def _anthropic_reset_in(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


# --- retry_after_seconds ------------------------------------------------------------------


@pytest.mark.parametrize("headers, expected", [
    ({"retry-after": "3"}, 3.0),
    ({"Retry-After": "0.5"}, 0.5),
    ({"retry-after": " 7 "}, 7.0),
    ({"retry-after-ms": "250"}, 0.25),
    ({"Retry-After-Ms": "1500"}, 1.5),
    ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),  # ms wins
    ({"retry-after-ms": "soon", "retry-after": "9"}, 9.0),  # unparseable ms falls through
    ({"retry-after": "-5"}, 0.0),
])
def test_retry_after_seconds_and_milliseconds(headers, expected):
    assert retry_after_seconds(headers, now=NOW) == pytest.approx(expected)


def test_retry_after_http_date():
    future = email.utils.format_datetime(NOW + timedelta(seconds=30), usegmt=True)
    assert retry_after_seconds({"retry-after": future}, now=NOW) == pytest.approx(30.0)
    past = email.utils.format_datetime(NOW - timedelta(seconds=30), usegmt=True)
    assert retry_after_seconds({"retry-after": past}, now=NOW) == 0.0
    # `now` may also be epoch seconds; default is the wall clock
    assert retry_after_seconds({"retry-after": future}, now=NOW.timestamp()) == pytest.approx(30)
    soon = email.utils.formatdate(time.time() + 60, usegmt=True)
    assert 55 < retry_after_seconds({"retry-after": soon}) <= 60


@pytest.mark.parametrize("value, expected", [
    ("1s", 1.0), ("6m0s", 360.0), ("250ms", 0.25), ("1h2m3.5s", 3723.5), ("0.5s", 0.5),
    ("20us", 20e-6), ("2", 2.0), ("1m30s", 90.0),
])
def test_retry_after_openai_reset_durations(value, expected):
    got = retry_after_seconds({"x-ratelimit-reset-requests": value}, now=NOW)
    assert got == pytest.approx(expected)


def test_retry_after_openai_takes_the_larger_reset_on_429_only():
    headers = {"x-ratelimit-reset-requests": "1s", "x-ratelimit-reset-tokens": "6m0s"}
    assert retry_after_seconds(headers, now=NOW, status=429) == 360.0
    assert retry_after_seconds(headers, now=NOW) == 360.0  # status unknown: used
    # Reset headers ride on every response: for a 500 they are no wait hint.
    assert retry_after_seconds(headers, now=NOW, status=500) is None
    # ... but a real Retry-After always is.
    assert retry_after_seconds({**headers, "retry-after": "2"}, now=NOW, status=500) == 2.0
    assert retry_after_seconds({**headers, "retry-after": "2"}, now=NOW, status=429) == 2.0


@pytest.mark.parametrize("value, expected", [
    ("2025-03-01T12:00:12Z", 12.0),
    ("2025-03-01T12:00:12.500Z", 12.5),
    ("2025-03-01T12:00:12.123456789Z", 12.123456),
    ("2025-03-01T13:00:05+01:00", 5.0),
    ("2025-03-01T11:59:00Z", 0.0),  # in the past: floor 0
])
def test_retry_after_anthropic_reset_timestamps(value, expected):
    got = retry_after_seconds({"anthropic-ratelimit-tokens-reset": value}, now=NOW)
    assert got == pytest.approx(expected, abs=1e-6)


def test_retry_after_anthropic_takes_the_latest_reset():
    headers = {"anthropic-ratelimit-requests-reset": "2025-03-01T12:00:01Z",
               "anthropic-ratelimit-input-tokens-reset": "2025-03-01T12:00:40Z",
               "anthropic-ratelimit-output-tokens-reset": "2025-03-01T12:00:03Z"}
    assert retry_after_seconds(headers, now=NOW, status=429) == 40.0
    assert retry_after_seconds(headers, now=NOW, status=529) is None


@pytest.mark.parametrize("headers", [
    None, {}, {"retry-after": "soon"}, {"retry-after": ""}, {"retry-after-ms": "nan"},
    {"retry-after": "inf"}, {"retry-after": "Wed, 99 Foo 2025 99:99:99 GMT"},
    {"x-ratelimit-reset-requests": "1x"}, {"x-ratelimit-reset-tokens": "s"},
    {"x-ratelimit-reset-tokens": "5m garbage"},
    {"anthropic-ratelimit-tokens-reset": "tomorrow"}, {"content-type": "application/json"},
])
def test_retry_after_garbage_is_none(headers):
    assert retry_after_seconds(headers, now=NOW) is None


def test_retry_after_reads_httpx_headers_case_insensitively():
    headers = httpx.Headers({"RETRY-AFTER": "4", "X-RateLimit-Reset-Tokens": "9s"})
    assert retry_after_seconds(headers, now=NOW) == 4.0
    assert retry_after_seconds(httpx.Headers({"X-RateLimit-Reset-Tokens": "9s"})) == 9.0


@pytest.mark.parametrize("status, texts, expected", [
    (429, (), ("rate_limit", True)),
    (408, (), ("timeout", True)),
    (409, (), ("server", True)),
    (500, (), ("server", True)),
    (502, (), ("server", True)),
    (503, ("Service unavailable",), ("server", True)),
    (503, ("The server is overloaded or not ready yet.",), ("overloaded", True)),
    (529, (), ("overloaded", True)),
    (500, ("overloaded_error",), ("overloaded", True)),
    (400, ("Invalid request.",), ("bad_request", False)),
    (400, ("context_length_exceeded",), ("context_length", False)),
    (400, (None, "prompt is too long: 200001 tokens > 200000 maximum"), ("context_length", False)),
    (400, ("This model's maximum context length is 128000 tokens.",), ("context_length", False)),
    (401, (), ("auth", False)),
    (403, (), ("auth", False)),
    (404, (), ("not_found", False)),
    (422, (), ("bad_request", False)),
    (402, (), ("other", False)),
])
def test_classify_status(status, texts, expected):
    assert classify_status(status, *texts) == expected


def test_redact_walks_strings_dicts_and_lists():
    value = {"a": f"key={SECRET}", "b": [SECRET, 3, (f"x{SECRET}",)], SECRET: None}
    assert SECRET not in repr(redact(value, (SECRET,)))
    assert redact("short", ("",)) == "short"


# --- registry and lazy import -------------------------------------------------------------


def test_new_providers_are_registered():
    assert provider_class("anthropic") is AnthropicProvider
    assert provider_class("litellm") is LitellmProvider


@pytest.mark.slow
def test_litellm_is_imported_lazily_and_offline():
    code = (
        "import os, sys\n"
        "os.environ.pop('LITELLM_LOCAL_MODEL_COST_MAP', None)\n"
        "import oversight.models.litellm_provider as lp\n"
        "assert 'litellm' not in sys.modules, 'litellm imported at module import'\n"
        "lt = lp.import_litellm()\n"
        "assert os.environ['LITELLM_LOCAL_MODEL_COST_MAP'] == 'True'\n"
        "assert lt.suppress_debug_info is True\n"
        "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


# --- fault classification over real HTTP --------------------------------------------------

# (fault, kind, retryable, status per wire {"openai": s, "anthropic": s})
FAULTS = {
    "rate_limit": ({"kind": "rate_limit", "retry_after": "2"}, "rate_limit", True,
                   {"openai": 429, "anthropic": 429}),
    "overloaded": ("overloaded", "overloaded", True, {"openai": 503, "anthropic": 529}),
    "server_error": ("server_error", "server", True, {"openai": 500, "anthropic": 500}),
    "bad_gateway": ("bad_gateway", "server", True, {"openai": 502, "anthropic": 502}),
    "unavailable": ({"kind": "unavailable", "message": "Service temporarily unavailable"},
                    "server", True, {"openai": 503, "anthropic": 503}),
    "conflict": ({"kind": "status", "status": 409}, "server", True,
                 {"openai": 409, "anthropic": 409}),
    "timeout": ("timeout", "timeout", True, {"openai": None, "anthropic": None}),
    "reset": ("reset", "connection", True, {"openai": None, "anthropic": None}),
    "reset_before_headers": ({"kind": "reset", "after_bytes": 0}, "connection", True,
                             {"openai": None, "anthropic": None}),
    "malformed": ("malformed", "malformed", True, {"openai": None, "anthropic": None}),
    "empty_choices": ("empty_choices", "malformed", True, {"openai": None, "anthropic": None}),
    "context_length": ("context_length", "context_length", False,
                       {"openai": 400, "anthropic": 400}),
    "bad_request": ({"kind": "status", "status": 400, "message": "max_tokens: must be > 0"},
                    "bad_request", False, {"openai": 400, "anthropic": 400}),
    "auth": ("auth", "auth", False, {"openai": 401, "anthropic": 401}),
    "forbidden": ({"kind": "status", "status": 403}, "auth", False,
                  {"openai": 403, "anthropic": 403}),
    "not_found": ({"kind": "status", "status": 404}, "not_found", False,
                  {"openai": 404, "anthropic": 404}),
}


# litellm's Anthropic route re-sends after a reset before headers: see
# test_litellm_hidden_connection_retry, which pins that instead.
FAULT_MATRIX = [(name, case) for name in PROVIDERS for case in FAULTS
                if (name, case) != ("litellm-anthropic", "reset_before_headers")]


@pytest.mark.parametrize("name, case", FAULT_MATRIX)
async def test_fault_classification(name, case, srv):
    fault, kind, retryable, statuses = FAULTS[case]
    err = await failure(name, srv, fault, timeout=0.5)
    assert (err.kind, err.retryable, err.status) == (kind, retryable, statuses[wire(name)]), err
    assert srv.requests and srv.requests[-1]["fault"] is not None  # it went over the wire
    if case == "rate_limit":
        assert err.retry_after == 2.0
    elif case not in ("overloaded",):
        assert err.retry_after is None
    # Raised fresh, not chained: the SDK exception holds the request and its auth header.
    assert err.__cause__ is None and err.__context__ is None
    assert_no_secret(err)


@pytest.mark.parametrize("body", ['{"unexpected": true}', "[]", '"just a string"', "",
                                  '{"choices": [{"index": 0}], "content": [{"type": "image"}]}'])
@pytest.mark.parametrize("name", PROVIDERS)
async def test_valid_json_of_the_wrong_shape_is_malformed(name, body, srv):
    err = await failure(name, srv, {"kind": "malformed", "body": body})
    assert (err.kind, err.retryable, err.status) == ("malformed", True, None), err


# Gateways in front of OpenAI-compatible servers misbehave in ways of their own.

async def test_openai_error_in_a_200_body_says_what_the_server_said(srv):
    body = json.dumps({"error": {"message": f"upstream overloaded ({SECRET})", "type": "server_error"}})
    err = await failure("openai", srv, {"kind": "malformed", "body": body})
    assert (err.kind, err.retryable, err.status) == ("server", True, None), err
    assert "upstream overloaded" in str(err)
    assert_no_secret(err)


async def test_openai_body_that_cannot_be_decoded_is_malformed_not_a_connection_error(srv):
    # A plain JSON body labelled gzip: the connection was fine, the reply was not.
    err = await failure("openai", srv, {"kind": "malformed", "body": OPENAI_CACHED_BODY,
                                        "headers": {"content-encoding": "gzip"}})
    assert (err.kind, err.retryable) == ("malformed", True), err


async def test_openai_dropped_connection_is_named_as_such_not_as_a_timeout(srv):
    err = await failure("openai", srv, {"kind": "reset", "after_bytes": 0})
    assert err.kind == "connection"
    assert "Timeout" not in str(err), err  # httpx-aiohttp calls it a ConnectTimeout
    assert re.search(r"\((ServerDisconnectedError|ClientOSError|ConnectionResetError)\)", str(err)), err


@pytest.mark.parametrize("usage", [
    {"prompt_tokens": -5, "completion_tokens": -3},  # would shrink the spend under a budget
    {"prompt_tokens": "12", "completion_tokens": 2.5},
])
async def test_openai_nonsense_token_counts_are_unknown_not_numbers(usage, srv):
    body = json.loads(OPENAI_CACHED_BODY)
    body["usage"] = usage
    srv.faults = [{"kind": "malformed", "body": json.dumps(body)}]
    response = await call("openai", srv)
    assert response.text == "Answer: B"
    assert (response.tokens_in, response.tokens_out) == (None, None)


@pytest.mark.parametrize("name", PROVIDERS)
async def test_rate_limit_with_http_date(name, srv):
    err = await failure(name, srv, {"kind": "rate_limit_date", "retry_after": 30})
    assert (err.kind, err.retryable, err.status) == ("rate_limit", True, 429)
    assert 25 < err.retry_after <= 31


@pytest.mark.parametrize("name", PROVIDERS)
async def test_rate_limit_reset_headers_when_no_retry_after(name, srv):
    if wire(name) == "openai":
        headers = {"x-ratelimit-reset-requests": "1s", "x-ratelimit-reset-tokens": "6m0s"}
        low, high = 360.0, 360.0
    else:
        headers = {"anthropic-ratelimit-requests-reset": _anthropic_reset_in(5),
                   "anthropic-ratelimit-tokens-reset": _anthropic_reset_in(20)}
        low, high = 15.0, 20.0
    err = await failure(name, srv, {"kind": "status", "status": 429, "headers": headers})
    assert (err.kind, err.retryable, err.status) == ("rate_limit", True, 429)
    assert low <= err.retry_after <= high


@pytest.mark.parametrize("name", PROVIDERS)
async def test_server_error_retry_after_ms_and_ignored_reset_headers(name, srv):
    err = await failure(name, srv, {"kind": "status", "status": 503,
                                    "headers": {"retry-after-ms": "1500"}})
    assert (err.retryable, err.status, err.retry_after) == (True, 503, 1.5)
    err = await failure(name, srv, {"kind": "status", "status": 500,
                                    "headers": {"x-ratelimit-reset-tokens": "6m0s"}})
    assert (err.kind, err.retryable, err.retry_after) == ("server", True, None)


async def test_litellm_hidden_connection_retry(srv):
    """litellm's AsyncHTTPHandler (used for every route but the openai SDK ones) re-sends a
    request once on httpx.RemoteProtocolError/ConnectError, on a fresh connection, and no
    setting turns that off. So a reset before any response byte costs two attempts where the
    retry layer sees one. Pinned here so a litellm upgrade that changes it is noticed."""
    srv.faults = [{"kind": "reset", "after_bytes": 0}]
    response = await call("litellm-anthropic", srv)
    assert response.text == "Answer: A"
    assert [r["fault"] is not None for r in srv.requests] == [True, False]
    # A reset after the headers is not re-sent.
    srv.clear()
    err = await failure("litellm-anthropic", srv, "reset")
    assert (err.kind, err.retryable, len(srv.requests)) == ("connection", True, 1)


async def test_overloaded_529_with_retry_after(srv):
    for name in ("anthropic", "litellm-anthropic"):
        err = await failure(name, srv, {"kind": "overloaded", "headers": {"retry-after": "7"}})
        assert (err.kind, err.retryable, err.status, err.retry_after) == (
            "overloaded", True, 529, 7.0), name


async def test_closed_port_is_a_connection_error(key):
    import socket

    with socket.socket() as s:  # free a moment ago, nobody listening now
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for name, base in (("openai", f"http://127.0.0.1:{port}/v1"),
                       ("anthropic", f"http://127.0.0.1:{port}"),
                       ("litellm", f"http://127.0.0.1:{port}/v1")):
        model = "openai/x" if name == "litellm" else "m"
        provider = provider_class(name)(ModelConfig(provider=name, model=model, base_url=base,
                                                    api_key_env=KEY_ENV))
        try:
            with pytest.raises(ModelError) as info:
                await provider.complete(ask())
        finally:
            await provider.aclose()
        assert (info.value.kind, info.value.retryable, info.value.status) == (
            "connection", True, None), name


# --- successful calls: text, usage, request shape -----------------------------------------


@pytest.mark.parametrize("name", PROVIDERS)
async def test_success_text_and_usage(name, srv):
    response = await call(name, srv)
    assert response.text == "Answer: A"
    # The fake tokenizer counts words: "You are terse." + "Is the sky blue?" = 7.
    assert (response.tokens_in, response.tokens_out, response.tokens_cached) == (7, 2, 0)
    assert response.finish_reason in ("stop", "end_turn")
    assert response.raw is not None
    assert response.logprobs is None  # not asked for (and Anthropic never has them)


@pytest.mark.parametrize("name", ("openai", "anthropic", "litellm-openai"))
async def test_missing_usage_is_not_an_error(name, srv):
    srv.faults = ["no_usage"]
    response = await call(name, srv)
    assert response.text == "Answer: A"
    assert (response.tokens_in, response.tokens_out, response.tokens_cached) == (None, None, None)


async def test_litellm_anthropic_route_cannot_parse_missing_usage(srv):
    # litellm's own Anthropic parser raises KeyError('usage'); the best we can say is that
    # the body was malformed (retryable), not that the connection failed.
    err = await failure("litellm-anthropic", srv, "no_usage")
    assert (err.kind, err.retryable) == ("malformed", True)


OPENAI_CACHED_BODY = json.dumps({
    "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "o3-mini",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Answer: B"},
                 "logprobs": None, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1200, "completion_tokens": 90, "total_tokens": 1290,
              "prompt_tokens_details": {"cached_tokens": 1024},
              "completion_tokens_details": {"reasoning_tokens": 64}}})

ANTHROPIC_CACHED_BODY = json.dumps({
    "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-test-model",
    "content": [{"type": "thinking", "thinking": "hmm", "signature": "sig"},
                {"type": "text", "text": "Answer: "}, {"type": "text", "text": "B"}],
    "stop_reason": "end_turn", "stop_sequence": None,
    "usage": {"input_tokens": 10, "cache_read_input_tokens": 30,
              "cache_creation_input_tokens": 5, "output_tokens": 50,
              "output_tokens_details": {"thinking_tokens": 20}}})


@pytest.mark.parametrize("name", ("openai", "litellm-openai"))
async def test_openai_cached_and_reasoning_tokens(name, srv):
    srv.faults = [{"kind": "malformed", "body": OPENAI_CACHED_BODY}]  # a hand-written 200
    response = await call(name, srv)
    assert response.text == "Answer: B"
    assert (response.tokens_in, response.tokens_out) == (1200, 90)
    assert (response.tokens_cached, response.tokens_reasoning) == (1024, 64)


async def test_anthropic_tokens_in_counts_cache_reads_and_writes(srv):
    srv.faults = [{"kind": "malformed", "body": ANTHROPIC_CACHED_BODY}]
    response = await call("anthropic", srv)
    assert response.text == "Answer: B"  # text blocks only, thinking left out
    assert response.tokens_in == 10 + 30 + 5
    assert (response.tokens_cached, response.tokens_out, response.tokens_reasoning) == (30, 50, 20)
    assert response.raw["usage"]["cache_creation_input_tokens"] == 5  # the split is kept


async def test_litellm_anthropic_route_counts_the_same_way(srv):
    srv.faults = [{"kind": "malformed", "body": ANTHROPIC_CACHED_BODY}]
    response = await call("litellm-anthropic", srv)
    assert response.text.endswith("Answer: B")
    assert (response.tokens_in, response.tokens_cached, response.tokens_out) == (45, 30, 50)


async def test_anthropic_system_prompt_goes_to_system_field(srv):
    request = ask(("system", "Rule one."), ("user", "Hello"), ("system", "Rule two."),
                  ("user", "Again"), ("assistant", "Hi"), ("user", "Bye"),
                  stop=("\n", "END"), temperature=0.7)
    await call("anthropic", srv, request)
    body = srv.requests[-1]["json"]
    assert srv.requests[-1]["path"] == "/v1/messages"
    assert body["system"] == "Rule one.\n\nRule two."
    assert body["messages"] == [{"role": "user", "content": "Hello\n\nAgain"},
                                {"role": "assistant", "content": "Hi"},
                                {"role": "user", "content": "Bye"}]
    assert body["max_tokens"] == 16
    assert body["stop_sequences"] == ["END"]  # whitespace-only stops are a 400 upstream
    # API version 2026-10-21 rejects every sampling parameter, at any value.
    assert not {"temperature", "top_p", "top_k"} & set(body)


async def test_litellm_anthropic_route_sends_system_field(srv):
    await call("litellm-anthropic", srv)
    body = srv.requests[-1]["json"]
    assert srv.requests[-1]["path"] == "/v1/messages"
    system = body["system"]
    text = system if isinstance(system, str) else "".join(b["text"] for b in system)
    assert text == "You are terse."
    assert all(m["role"] != "system" for m in body["messages"])


async def test_openai_plain_model_request_shape(srv):
    await call("openai", srv, ask(temperature=0.3, stop=("END",)), seed=7,
               extra_body={"top_k": 5})
    body = srv.requests[-1]["json"]
    assert body["max_tokens"] == 16 and body["temperature"] == 0.3
    assert "max_completion_tokens" not in body
    assert body["seed"] == 7 and body["top_k"] == 5 and body["stop"] == ["END"]


@pytest.mark.parametrize("model, options", [
    ("o3-mini", {}), ("o1", {}), ("o4-mini", {}), ("gpt-5-nano", {}),
    ("my-reasoner", {"reasoning_effort": "low"}),
])
async def test_openai_reasoning_model_request_shape(model, options, srv):
    provider = OpenAIProvider(ModelConfig(provider="openai", model=model,
                                          base_url=srv.openai_base_url, options=options))
    try:
        await provider.complete(ask(temperature=0.3, logprobs=True))
    finally:
        await provider.aclose()
    body = srv.requests[-1]["json"]
    assert body["max_completion_tokens"] == 16
    assert "max_tokens" not in body and "temperature" not in body and "logprobs" not in body
    assert body.get("reasoning_effort") == options.get("reasoning_effort")


async def test_openai_reasoning_model_temperature_only_when_set(srv):
    provider = OpenAIProvider(ModelConfig(
        provider="openai", model="o3", base_url=srv.openai_base_url,
        options={"temperature": 1.0, "reasoning_effort": "high"}))
    try:
        await provider.complete(ask())
    finally:
        await provider.aclose()
    body = srv.requests[-1]["json"]
    assert body["temperature"] == 1.0 and body["reasoning_effort"] == "high"


@pytest.mark.parametrize("name", ("openai", "litellm-openai"))
async def test_logprobs_come_back(name, srv):
    response = await call(name, srv, ask(logprobs=True, top_logprobs=3))
    assert response.logprobs and [t.token for t in response.logprobs] == ["Answer:", " A"]
    assert len(response.logprobs[1].top) == 3
    assert response.raw is not None and response.raw["choices"][0].get("logprobs") is None


# --- secrets ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PROVIDERS)
async def test_no_key_in_anything_returned(name, srv):
    response = await call(name, srv)
    headers = srv.requests[-1]["headers"]
    assert SECRET in headers.get("authorization", "") + headers.get("x-api-key", "")  # in play
    assert_no_secret(response, response.raw, json.dumps(response.raw))

    errors = [await failure(name, srv, fault, timeout=0.5)
              for fault in ("auth", "rate_limit", "server_error", "reset", "malformed",
                            "timeout", "context_length")]
    # A server that echoes the key back in its error message.
    errors.append(await failure(name, srv, {"kind": "status", "status": 401,
                                            "message": f"Incorrect API key provided: {SECRET}"}))
    for err in errors:
        assert_no_secret(err, err.args, vars(err))
        assert err.__context__ is None and err.__cause__ is None


@pytest.mark.parametrize("name, env", [("anthropic", "OVERSIGHT_NO_SUCH_KEY"),
                                       ("anthropic", None), ("litellm", "OVERSIGHT_NO_SUCH_KEY"),
                                       ("openai", "OVERSIGHT_NO_SUCH_KEY")])
async def test_missing_key_names_the_variable(name, env, monkeypatch):
    monkeypatch.delenv("OVERSIGHT_NO_SUCH_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    model = "anthropic/claude-x" if name == "litellm" else "some-model"
    provider = provider_class(name)(ModelConfig(provider=name, model=model, api_key_env=env))
    with pytest.raises(ModelError, match=env or "ANTHROPIC_API_KEY") as info:
        await provider.complete(ask())
    assert (info.value.kind, info.value.retryable) == ("auth", False)


@pytest.mark.parametrize("name", PROVIDERS)
async def test_config_timeout_is_the_attempt_timeout(name, srv):
    base = srv.anthropic_base_url if wire(name) == "anthropic" else srv.openai_base_url
    provider_name = "litellm" if name.startswith("litellm") else name
    model = {"litellm-openai": "openai/x", "litellm-anthropic": "anthropic/x"}.get(name, "m")
    provider = provider_class(provider_name)(ModelConfig(
        provider=provider_name, model=model, base_url=base, api_key_env=KEY_ENV, timeout=0.3))
    srv.faults = ["timeout"]
    try:
        with pytest.raises(ModelError) as info:
            # A guard, not a measurement: with the config's 0.3 s ignored this would hang.
            await asyncio.wait_for(provider.complete(ask()), 60)
    finally:
        await provider.aclose()
    assert (info.value.kind, info.value.retryable) == ("timeout", True)


@pytest.mark.parametrize("model, kind", [
    ("gpt-4o-mini", "auth"), ("anthropic/claude-x", "auth"), ("gemini/gemini-2.0-flash", "auth"),
    ("nosuchprovider/x", "bad_request"),
])
async def test_litellm_setup_errors_are_fatal(model, kind, monkeypatch):
    """litellm refuses these before sending anything, under assorted classes (a missing
    OpenAI key arrives as InternalServerError 500, a missing Gemini key as
    APIConnectionError): none of them is worth a retry."""
    for env in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY"):
        monkeypatch.delenv(env, raising=False)
    provider = LitellmProvider(ModelConfig(provider="litellm", model=model))
    with pytest.raises(ModelError) as info:
        await provider.complete(ask())
    assert (info.value.kind, info.value.retryable) == (kind, False), info.value



def test_openai_idempotency_keys_differ_per_call_and_share_one_random_prefix():
    # passed to the SDK so that it does not draw a uuid4 (a urandom syscall) per call
    from oversight.models.openai_provider import _KEYS
    keys = [next(_KEYS) for _ in range(3)]
    assert len(set(keys)) == 3
    prefixes = {k.rsplit("-", 1)[0] for k in keys}
    counts = [int(k.rsplit("-", 1)[1]) for k in keys]
    assert len(prefixes) == 1 and counts == sorted(counts)  # drawn once, then counted
    (prefix,) = prefixes
    assert re.fullmatch(r"oversight-[0-9a-f]{16}", prefix)


async def test_openai_sends_what_the_clients_post_would_send(srv):
    """The provider builds post()'s request options once per client (not per call): the
    request on the wire is the one `client.post("/chat/completions", body=...)` sends."""
    provider = make("openai", srv, seed=7, extra_body={"top_k": 3})
    request = ask(("user", "Is the sky blue?"), logprobs=True, top_logprobs=2, stop=("\n",))
    try:
        await provider.complete(request)
        await provider.complete(request)  # the shared options are not changed by a call
        kwargs = provider._kwargs(request)
        body = {**kwargs, **kwargs.pop("extra_body", {})}
        await provider._client.post("/chat/completions", body=body, cast_to=httpx.Response)
    finally:
        await provider.aclose()
    first, second, sdk = srv.requests
    for ours in (first, second):
        assert (ours["path"], ours["json"]) == (sdk["path"], sdk["json"])
        assert ours["json"]["top_k"] == 3 and ours["json"]["seed"] == 7
        differ = {"idempotency-key"}  # the SDK draws a uuid4 where the provider counts
        assert ({k: v for k, v in ours["headers"].items() if k not in differ}
                == {k: v for k, v in sdk["headers"].items() if k not in differ})
    assert first["headers"]["authorization"] == f"Bearer {SECRET}"


async def test_anthropic_sends_what_messages_create_would_send(srv):
    """The provider posts to /v1/messages as messages.create() does (and reads the reply as
    plain JSON): the request on the wire is the SDK method's, extra headers and body too."""
    provider = make("anthropic", srv, extra_headers={"x-trace": "t1"},
                    extra_body={"top_k": 3}, metadata={"user_id": "u"})
    request = ask(("system", "Be brief."), ("user", "Is the sky blue?"), stop=("END", " "))
    try:
        got = await provider.complete(request)
        await provider._client.messages.create(**provider._kwargs(request))
    finally:
        await provider.aclose()
    ours, sdk = srv.requests
    assert (ours["path"], ours["json"]) == (sdk["path"], sdk["json"])
    assert ours["json"]["top_k"] == 3 and ours["json"]["system"] == "Be brief."
    assert ours["json"]["stop_sequences"] == ["END"]  # whitespace-only stops dropped
    differ = {"x-stainless-retry-count", "idempotency-key"}
    assert ({k: v for k, v in ours["headers"].items() if k not in differ}
            == {k: v for k, v in sdk["headers"].items() if k not in differ})
    assert ours["headers"]["x-trace"] == "t1"
    # the reply read as JSON: the body as the server sent it is the call's raw record
    assert got.text == "Answer: A" and got.raw["content"][0]["text"] == "Answer: A"
    assert got.tokens_in == got.raw["usage"]["input_tokens"]


OK_BODIES = {
    "openai": {"id": "c1", "object": "chat.completion", "model": "m",
               "choices": [{"index": 0, "finish_reason": "stop",
                            "message": {"role": "assistant", "content": "Answer: A"}}],
               "usage": {"prompt_tokens": 3, "completion_tokens": 2}},
    "anthropic": {"id": "m1", "type": "message", "role": "assistant", "model": "m",
                  "content": [{"type": "text", "text": "Answer: A"}], "stop_reason": "end_turn",
                  "usage": {"input_tokens": 3, "output_tokens": 2}},
}


@pytest.mark.parametrize("name", ["openai", "anthropic"])
async def test_a_cookie_the_server_sets_is_sent_back(name, srv):
    """The jar skips responses without Set-Cookie (transport.py); one that sets a cookie is
    kept, and the next request carries it."""
    srv.faults = [{"kind": "malformed", "body": json.dumps(OK_BODIES[name]),
                   "headers": {"set-cookie": "session=abc123; Path=/"}}, None]
    provider = make(name, srv)
    try:
        first = await provider.complete(ask())
        await provider.complete(ask())
    finally:
        await provider.aclose()
    assert first.text == "Answer: A"
    assert "cookie" not in srv.requests[0]["headers"]
    assert srv.requests[1]["headers"].get("cookie") == "session=abc123"
