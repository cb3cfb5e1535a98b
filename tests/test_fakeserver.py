"""The fault-injecting fake server, driven by the real openai and anthropic SDK clients.

Each fault must reach the SDK as the exception a real provider outage would raise. Only
counts are asserted, never wall-clock thresholds.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import signal
import socket
import subprocess
import sys
import time

import httpx
import openai
import pytest

from oversight.testing.fakeserver import FakeServer

try:
    import anthropic
except ImportError:  # not a declared dependency (yet): only the anthropic tests skip
    anthropic = None
needs_anthropic = pytest.mark.skipif(anthropic is None, reason="anthropic SDK not installed")

PROMPT = "What is the capital of France?"  # 6 words = 6 fake prompt tokens


def oai(srv: FakeServer, **kw) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=srv.openai_base_url, api_key="sk-test", max_retries=0, **kw)


def ant(srv: FakeServer, **kw):
    return anthropic.AsyncAnthropic(base_url=srv.anthropic_base_url, api_key="sk-ant-test",
                                    max_retries=0, **kw)


async def ask_openai(client, text: str = PROMPT, **kw):
    return await client.chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": text}], **kw)


async def ask_anthropic(client, text: str = PROMPT, **kw):
    kw.setdefault("max_tokens", 64)
    return await client.messages.create(
        model="claude-test", messages=[{"role": "user", "content": text}], **kw)


# --- successful answers ---------------------------------------------------------------------

async def test_openai_completion_and_request_log():
    async with FakeServer(reply="Answer: B\nConfidence: 70%") as srv, oai(srv) as client:
        completion = await ask_openai(client)
    choice = completion.choices[0]
    assert choice.message.content == "Answer: B\nConfidence: 70%"
    assert choice.finish_reason == "stop" and choice.logprobs is None
    assert completion.model == "gpt-test" and completion.id.startswith("chatcmpl-")
    assert completion.usage.prompt_tokens == 6
    assert completion.usage.completion_tokens == 4
    assert completion.usage.total_tokens == 10
    assert completion.usage.prompt_tokens_details.cached_tokens == 0
    [logged] = srv.requests
    assert logged["path"] == "/v1/chat/completions" and logged["fault"] is None
    assert logged["headers"]["authorization"] == "Bearer sk-test"
    assert logged["json"]["messages"] == [{"role": "user", "content": PROMPT}]
    assert srv.stats["received"] == srv.stats["answered"] == 1


@needs_anthropic
async def test_anthropic_message_usage():
    async with FakeServer() as srv, ant(srv) as client:
        message = await ask_anthropic(client, system="Be brief and exact.")
    assert message.type == "message" and message.role == "assistant"
    assert message.model == "claude-test" and message.stop_reason == "end_turn"
    assert [block.text for block in message.content] == ["Answer: A\nConfidence: 80%"]
    assert message.usage.input_tokens == 6 + 4  # the system prompt counts too
    assert message.usage.output_tokens == 4
    assert message.usage.cache_read_input_tokens == 0
    assert message.usage.cache_creation_input_tokens == 0
    headers = srv.requests[0]["headers"]
    assert srv.requests[0]["path"] == "/v1/messages"
    # anthropic 2.12 sends the key as a bearer token; older SDKs used x-api-key.
    assert "sk-ant-test" in (headers.get("x-api-key") or headers["authorization"])
    assert "anthropic-version" in headers


async def test_rules_callable_reply_and_max_tokens():
    rules = [("capital of France", "Answer: C because Paris is the capital")]
    async with FakeServer(reply=lambda req: f"echo {req['model']}", rules=rules) as srv, \
            oai(srv) as client:
        ruled = await ask_openai(client)
        echoed = await ask_openai(client, "Something else entirely")
        cut = await ask_openai(client, max_tokens=3)
    assert ruled.choices[0].message.content == "Answer: C because Paris is the capital"
    assert echoed.choices[0].message.content == "echo gpt-test"
    assert cut.choices[0].message.content == "Answer: C because"
    assert cut.choices[0].finish_reason == "length" and cut.usage.completion_tokens == 3


@needs_anthropic
async def test_anthropic_rules_and_max_tokens():
    rules = [("capital of France", "Answer: C because Paris is the capital")]
    async with FakeServer(rules=rules) as srv, ant(srv) as client:
        cut = await ask_anthropic(client, max_tokens=2)
    assert cut.content[0].text == "Answer: C" and cut.stop_reason == "max_tokens"
    assert cut.usage.output_tokens == 2


async def test_logprobs_when_requested():
    async with FakeServer() as srv, oai(srv) as client:
        completion = await ask_openai(client, logprobs=True, top_logprobs=5)
    choice = completion.choices[0]
    tokens = choice.logprobs.content
    assert len(tokens) == completion.usage.completion_tokens == 4
    assert "".join(t.token for t in tokens) == choice.message.content  # offsets line up
    for t in tokens:
        assert len(t.top_logprobs) == 5
        assert t.top_logprobs[0].token == t.token and t.top_logprobs[0].logprob == t.logprob
        values = [c.logprob for c in t.top_logprobs]
        assert all(v < 0 for v in values) and values == sorted(values, reverse=True)
        assert len({c.token for c in t.top_logprobs}) == 5
        assert sum(2.718281828 ** v for v in values) < 1
    letter = tokens[1]
    assert letter.token == " A"
    assert [c.token for c in letter.top_logprobs][1:4] == [" B", " C", " D"]


async def test_models_list_404_and_bad_json():
    async with FakeServer() as srv:
        async with oai(srv) as client:
            models = await client.models.list()
        async with httpx.AsyncClient(base_url=srv.url) as http:
            missing = await http.get("/v1/nope")
            bad = await http.post("/v1/chat/completions", content=b"not json")
    assert [m.id for m in models.data] == ["fake-model"]
    assert missing.status_code == 404 and "error" in missing.json()
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
    assert srv.stats["bad_requests"] == 1 and srv.stats["other"] == 2


async def test_keep_alive_reuses_one_connection_and_record_false():
    async with FakeServer(record=False) as srv, oai(srv) as client:
        for _ in range(5):
            await ask_openai(client)
    assert srv.requests == []
    assert srv.stats["received"] == srv.stats["answered"] == 5
    assert srv.stats["connections"] == 1


# --- faults through the openai SDK ----------------------------------------------------------

OPENAI_FAULTS = [
    ("rate_limit", openai.RateLimitError, 429),
    ({"kind": "status", "status": 429, "headers": {"retry-after": "2"}},
     openai.RateLimitError, 429),
    ("rate_limit_date", openai.RateLimitError, 429),
    ("server_error", openai.InternalServerError, 500),
    ("bad_gateway", openai.InternalServerError, 502),
    ("unavailable", openai.InternalServerError, 503),
    ("overloaded", openai.InternalServerError, 503),
    ({"kind": "status", "status": 504}, openai.InternalServerError, 504),
    ({"kind": "status", "status": 408}, openai.APIStatusError, 408),  # no dedicated class
    ({"kind": "status", "status": 409}, openai.ConflictError, 409),
    ({"kind": "status", "status": 400}, openai.BadRequestError, 400),
    ({"kind": "status", "status": 403}, openai.PermissionDeniedError, 403),
    ({"kind": "status", "status": 404}, openai.NotFoundError, 404),
    ("context_length", openai.BadRequestError, 400),
    ("auth", openai.AuthenticationError, 401),
]


@pytest.mark.parametrize("fault,exc_class,status", OPENAI_FAULTS,
                         ids=[json.dumps(f) for f, _, _ in OPENAI_FAULTS])
async def test_openai_status_faults(fault, exc_class, status):
    async with FakeServer(faults=[fault]) as srv, oai(srv) as client:
        with pytest.raises(exc_class) as info:
            await ask_openai(client)
        after = await ask_openai(client)  # the list is used up: back to normal
    exc = info.value
    assert type(exc) is exc_class and exc.status_code == status
    assert after.choices[0].message.content
    kind = fault if isinstance(fault, str) else fault["kind"]
    assert srv.stats["faulted"] == {kind: 1} and srv.stats["answered"] == 1
    assert isinstance(exc.body, dict) and exc.body["message"]  # the SDK unwraps {"error": ...}
    if kind == "rate_limit":
        assert exc.response.headers["retry-after"] == "0.05"
    if kind == "status" and status == 429:
        assert exc.response.headers["retry-after"] == "2"
    if kind == "rate_limit_date":
        when = email.utils.parsedate_to_datetime(exc.response.headers["retry-after"])
        assert when.timestamp() > time.time() - 1
    if kind == "context_length":
        assert exc.code == "context_length_exceeded" and exc.param == "messages"
    if kind == "auth":
        assert exc.code == "invalid_api_key"


async def test_openai_reset_is_a_connection_error():
    faults = ["reset", {"kind": "reset", "after_bytes": 0}]  # mid-body; before any byte
    async with FakeServer(faults=faults) as srv, oai(srv) as client:
        for _ in range(2):
            with pytest.raises(openai.APIConnectionError) as info:
                await ask_openai(client)
            assert not isinstance(info.value, openai.APITimeoutError)
        assert (await ask_openai(client)).choices
    assert srv.stats["faulted"] == {"reset": 2}


async def test_reset_sends_headers_and_half_a_body_then_rst():
    async with FakeServer(faults=["reset"]) as srv:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        body = b'{"model": "m", "messages": []}'
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                     b"content-length: %d\r\n\r\n" % len(body) + body)
        received = b""
        with pytest.raises(ConnectionResetError):
            while chunk := await reader.read(65536):
                received += chunk
        writer.close()
    head, _, partial = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))
    assert 0 < len(partial) < length


async def test_openai_malformed_body_raises_json_decode_error():
    # What openai 2.x really does: the JSONDecodeError escapes unwrapped (not an APIError).
    async with FakeServer(faults=["malformed"]) as srv, oai(srv) as client:
        with pytest.raises(json.JSONDecodeError):
            await ask_openai(client)


async def test_openai_empty_choices_and_no_usage_parse():
    async with FakeServer(faults=["empty_choices", "no_usage"]) as srv, oai(srv) as client:
        empty = await ask_openai(client)
        bare = await ask_openai(client)
    assert empty.choices == [] and empty.usage.prompt_tokens == 6
    assert bare.usage is None and bare.choices[0].message.content


async def test_timeout_fault_does_not_block_other_requests():
    async with FakeServer(faults=["timeout", None]) as srv, \
            oai(srv, timeout=1.0) as slow_client, oai(srv) as client:
        finished = []

        async def held():
            try:
                await ask_openai(slow_client)
            finally:
                finished.append("held")

        held_task = asyncio.create_task(held())
        while srv.stats["received"] < 1:
            await asyncio.sleep(0.01)
        answer = await ask_openai(client)
        finished.append("normal")
        with pytest.raises(openai.APITimeoutError):
            await held_task
    assert answer.choices[0].message.content
    assert finished == ["normal", "held"]
    assert srv.stats["faulted"] == {"timeout": 1} and srv.stats["answered"] == 1


# --- faults through the anthropic SDK -------------------------------------------------------

# Class names as anthropic 2.12 raises them; ServiceUnavailableError and OverloadedError are
# subclasses of InternalServerError (older SDKs raise InternalServerError itself).
ANTHROPIC_FAULTS = [
    ("rate_limit", "RateLimitError", 429, "rate_limit_error"),
    ("rate_limit_date", "RateLimitError", 429, "rate_limit_error"),
    ("server_error", "InternalServerError", 500, "api_error"),
    ("bad_gateway", "InternalServerError", 502, "api_error"),
    ("unavailable", "ServiceUnavailableError", 503, "api_error"),
    ("overloaded", "OverloadedError", 529, "overloaded_error"),
    ("context_length", "BadRequestError", 400, "invalid_request_error"),
    ("auth", "AuthenticationError", 401, "authentication_error"),
    ({"kind": "status", "status": 403}, "PermissionDeniedError", 403, "permission_error"),
    ({"kind": "status", "status": 404}, "NotFoundError", 404, "not_found_error"),
]


@needs_anthropic
@pytest.mark.parametrize("fault,class_name,status,error_type", ANTHROPIC_FAULTS,
                         ids=[json.dumps(f) for f, *_ in ANTHROPIC_FAULTS])
async def test_anthropic_status_faults(fault, class_name, status, error_type):
    exc_class = getattr(anthropic, class_name, anthropic.InternalServerError)
    async with FakeServer(faults=[fault]) as srv, ant(srv) as client:
        with pytest.raises(exc_class) as info:
            await ask_anthropic(client)
        after = await ask_anthropic(client)
    exc = info.value
    assert type(exc) is exc_class and exc.status_code == status
    if status >= 500:
        assert isinstance(exc, anthropic.InternalServerError)
    assert exc.body["type"] == "error" and exc.body["error"]["type"] == error_type
    assert after.content[0].text
    if fault == "rate_limit":
        assert exc.response.headers["retry-after"] == "0.05"
    if fault == "context_length":
        assert "prompt is too long" in exc.body["error"]["message"]


@needs_anthropic
async def test_anthropic_transport_faults():
    faults = ["reset", "timeout", "malformed", "empty_choices", "no_usage"]
    async with FakeServer(faults=faults) as srv, ant(srv, timeout=0.5) as client:
        with pytest.raises(anthropic.APIConnectionError) as reset:
            await ask_anthropic(client)
        with pytest.raises(anthropic.APITimeoutError):
            await ask_anthropic(client)
        with pytest.raises(json.JSONDecodeError):
            await ask_anthropic(client)
        empty = await ask_anthropic(client)
        bare = await ask_anthropic(client)
    assert not isinstance(reset.value, anthropic.APITimeoutError)
    assert empty.content == [] and empty.usage.input_tokens == 6
    assert bare.usage is None and bare.content[0].text
    assert srv.stats["faulted"] == {kind: 1 for kind in faults}


# --- fault schedules and load ---------------------------------------------------------------

async def outcome(client) -> str:
    try:
        await ask_openai(client)
        return "ok"
    except openai.APIError as exc:
        return type(exc).__name__


async def test_faults_list_is_consumed_in_arrival_order():
    faults = [None, "server_error", {"kind": "status", "status": 429}, None, "auth"]
    async with FakeServer(faults=faults) as srv, oai(srv) as client:
        got = [await outcome(client) for _ in range(7)]
    assert got == ["ok", "InternalServerError", "RateLimitError", "ok", "AuthenticationError",
                   "ok", "ok"]
    kinds = [r["fault"] and r["fault"]["kind"] for r in srv.requests]
    assert kinds == [None, "server_error", "status", None, "auth", None, None]
    assert [r["index"] for r in srv.requests] == list(range(7))


async def test_faults_callable_sees_index_and_request():
    def fault(index, req):
        return "server_error" if "boom" in req["messages"][0]["content"] or index == 0 else None

    async with FakeServer(faults=fault) as srv, oai(srv) as client:
        got = [await outcome(client), await outcome(client)]
        with pytest.raises(openai.InternalServerError):
            await ask_openai(client, "boom now")
    assert got == ["InternalServerError", "ok"]
    assert srv.stats["faulted"] == {"server_error": 2}


async def run_schedule(seed: int, n: int = 40) -> list[str]:
    async with FakeServer(fault_rate=0.5, fault_kinds=["rate_limit", "server_error"],
                          seed=seed) as srv, oai(srv) as client:
        return [await outcome(client) for _ in range(n)]


async def test_fault_rate_with_seed_is_reproducible():
    first, again, other = await run_schedule(1), await run_schedule(1), await run_schedule(2)
    assert first == again
    assert first != other
    assert {"ok", "RateLimitError", "InternalServerError"} <= set(first)


async def test_fifty_concurrent_requests_overlap():
    async with FakeServer(latency=0.2) as srv, oai(srv) as client:
        results = await asyncio.gather(*(ask_openai(client, f"question {i}") for i in range(50)))
    assert all(r.choices[0].message.content == "Answer: A\nConfidence: 80%" for r in results)
    assert srv.stats["received"] == srv.stats["answered"] == 50
    assert srv.stats["max_in_flight"] == 50 and srv.stats["in_flight"] == 0


# --- other ways to run it -------------------------------------------------------------------

def test_thread_mode_serves_sync_clients_and_stops_with_a_held_request():
    with FakeServer(faults=[None, "timeout"]) as srv:
        client = openai.OpenAI(base_url=srv.openai_base_url, api_key="x", max_retries=0,
                               timeout=30)
        assert client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}]).choices
        held = socket.create_connection(("127.0.0.1", srv.port))
        body = b'{"messages": []}'
        held.sendall(b"POST /v1/chat/completions HTTP/1.1\r\ncontent-length: %d\r\n\r\n"
                     % len(body) + body)
        while srv.stats["received"] < 2:
            time.sleep(0.01)
    # Leaving the block stopped the loop and dropped the held connection without answering.
    assert held.recv(1024) == b""
    held.close()
    client.close()
    assert srv.stats["faulted"] == {"timeout": 1}


def start_cli(*args: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "oversight.testing.fakeserver", "--port", "0",
                             *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().split()
    assert line[0] == "FAKESERVER_READY", line
    return proc, line[1]


def stats_line(proc: subprocess.Popen) -> dict:
    out, _ = proc.communicate(timeout=30)  # closes stdin if still open
    [line] = [ln for ln in out.splitlines() if ln.startswith("FAKESERVER_STATS ")]
    return json.loads(line.split(" ", 1)[1])


def test_cli_serves_until_stdin_closes():
    proc, url = start_cli("--reply", r"Answer: D\nConfidence: 60%")
    try:
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        reply = client.chat.completions.create(model="m",
                                               messages=[{"role": "user", "content": "hi"}])
        client.close()
    finally:
        stats = stats_line(proc)  # closing stdin stops the server
    assert proc.returncode == 0
    assert reply.choices[0].message.content == "Answer: D\nConfidence: 60%"
    assert stats["received"] == stats["answered"] == 1 and stats["cpu_seconds"] > 0


def test_cli_faults_and_sigterm():
    proc, url = start_cli("--fault-rate", "1", "--fault-kinds", "server_error")
    try:
        with httpx.Client() as http:
            status = http.post(url + "/v1/chat/completions",
                               json={"model": "m", "messages": []}).status_code
    finally:
        proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0  # stdin is still open: SIGTERM alone stopped it
    stats = stats_line(proc)
    assert status == 500 and stats["faulted"] == {"server_error": 1}
