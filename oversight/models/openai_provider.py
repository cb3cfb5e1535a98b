"""OpenAI chat completions through the official SDK; any OpenAI-compatible server via base_url.

Failures become `ModelError`s for the one retry layer above (the SDK's own retries are off):
`_error` says what each of the SDK's exceptions means, HTTP statuses by
failures.classify_status. Options read from `config.options`: `timeout`
(seconds per attempt; default: the config's `timeout`), `seed`, `extra_body` (dict merged
into the JSON body), `reasoning_effort`, and `temperature` (only for reasoning models, below).
"""

from __future__ import annotations

import itertools
import json
import secrets
from typing import Any

import httpx
import openai
from openai._models import FinalRequestOptions

from ..errors import ModelError
from .base import (
    ModelConfig,
    ModelRequest,
    ModelResponse,
    Provider,
    TokenLogprob,
    as_int,
    attempt_timeout,
)
from .credentials import api_key, redact
from .failures import (
    classify_status,
    malformed_body,
    status_error,
    timed_out,
    unexpected_error,
)
from .transport import cookies_only_when_set, disconnect, undecodable

__all__ = ["OpenAIProvider", "is_reasoning_model"]

# Model families that take `max_completion_tokens` (not `max_tokens`) and reject a
# temperature other than the default.
REASONING_PREFIXES = ("o1", "o3", "o4", "gpt-5")


def is_reasoning_model(model: str, options: dict[str, Any]) -> bool:
    name = model.rsplit("/", 1)[-1].lower()  # "openai/o3-mini" as well as "o3-mini"
    return "reasoning_effort" in options or name.startswith(REASONING_PREFIXES)


class OpenAIProvider(Provider):
    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self._client: openai.AsyncOpenAI | None = None
        self._options: FinalRequestOptions | None = None
        self._secrets: tuple[str, ...] = ()

    def _make_client(self) -> openai.AsyncOpenAI:
        key = api_key(self.config, "OPENAI_API_KEY")
        self._secrets = (key,) if key else ()
        # max_retries=0: the SDK must not retry behind our back; one retry layer sees every attempt.
        # aiohttp, the SDK's own alternative transport: httpx's pool spends CPU quadratic in
        # the connections in use (~25 ms a call at 200 connections; bench/RESULTS.md).
        timeout = attempt_timeout(self.config)
        http = openai.DefaultAioHttpClient(timeout=timeout)
        cookies_only_when_set(http)
        return openai.AsyncOpenAI(api_key=key or "not-needed", base_url=self.config.base_url,
                                  max_retries=0, timeout=timeout, http_client=http)

    async def start(self) -> None:
        if self._client is None:
            self._client = self._make_client()
            # What the client's post("/chat/completions") builds per call, built once (the
            # URL joined to base_url once too): per call only the body and the key change.
            # ~70 µs a call less than post() (bench/RESULTS.md, session 6);
            # test_providers pins that the request on the wire is post()'s.
            self._options = FinalRequestOptions.construct(
                method="post", url=self._client._prepare_url("/chat/completions"),
                json_data=None, content=None, files=None)

    def _kwargs(self, request: ModelRequest) -> dict[str, Any]:
        opts = self.config.options
        model = self.config.model or "default"
        kwargs: dict[str, Any] = {
            "model": model, "messages": [{"role": r, "content": c} for r, c in request.messages]}
        if is_reasoning_model(model, opts):
            # Reasoning models count hidden reasoning against max_completion_tokens, reject
            # max_tokens, and only accept the default temperature unless told otherwise.
            kwargs["max_completion_tokens"] = request.max_tokens
            if opts.get("reasoning_effort") is not None:
                kwargs["reasoning_effort"] = opts["reasoning_effort"]
            if "temperature" in opts:
                kwargs["temperature"] = opts["temperature"]
            # They return no logprobs (a 400); verdicts fall back to elicited confidence.
        else:
            kwargs.update(max_tokens=request.max_tokens, temperature=request.temperature)
            if request.logprobs:
                kwargs.update(logprobs=True, top_logprobs=request.top_logprobs or 5)
        if request.stop:
            kwargs["stop"] = list(request.stop)
        if opts.get("seed") is not None:
            kwargs["seed"] = int(opts["seed"])
        if opts.get("extra_body"):
            kwargs["extra_body"] = dict(opts["extra_body"])
        return kwargs

    async def complete(self, request: ModelRequest) -> ModelResponse:
        await self.start()
        error: ModelError | None = None
        kwargs = self._kwargs(request)
        body = {**kwargs, **kwargs.pop("extra_body", {})}
        try:
            # The client's generic request(), as its post() calls it: the same request
            # building, auth, transport and status-error mapping as chat.completions.create(),
            # without its per-call walk of the typed parameters (~1 ms) or a pydantic model of
            # the reply we do not keep. An idempotency key of our own: the SDK would draw a
            # uuid4 per call (a syscall).
            options = self._options.model_copy(
                update={"json_data": body, "idempotency_key": next(_KEYS)})
            http = await self._client.request(httpx.Response, options)
            data = json.loads(http.content)
        except (openai.OpenAIError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            error = self._error(exc)
        if error is not None:
            # Raised outside the except block so the SDK exception (whose request carries the
            # Authorization header) is not chained onto ours as __context__.
            raise error
        return self._response(data)

    def _response(self, data: Any) -> ModelResponse:
        """A ModelResponse from a chat.completion body, checking the shape as it goes."""
        choices = data.get("choices") if isinstance(data, dict) else None
        if isinstance(data, dict) and "choices" not in data and "error" in data:
            # Some gateways answer 200 with an error body: say what the server said.
            err = data["error"]
            message = err.get("message") if isinstance(err, dict) else err
            raise ModelError(f"error in a 200 response: {redact(str(message), self._secrets)[:300]}",
                             retryable=True, kind="server")
        if not isinstance(data, dict) or "choices" not in data:
            raise ModelError(f"malformed response: expected a chat completion, got "
                             f"{type(data).__name__}", retryable=True, kind="malformed")
        if not choices or not isinstance(choices, list) or not isinstance(choices[0], dict):
            raise ModelError("malformed response: no choices", retryable=True, kind="malformed")
        choice = choices[0]
        message = choice.get("message")
        if not isinstance(message, dict) or not isinstance(message.get("content") or "", str):
            raise ModelError("malformed response: choice has no message", retryable=True,
                             kind="malformed")
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}  # may be absent
        prompt_details = _dict(usage.get("prompt_tokens_details"))
        completion_details = _dict(usage.get("completion_tokens_details"))
        raw = {**data, "choices": [{k: v for k, v in c.items() if k != "logprobs"}
                                   if isinstance(c, dict) else c for c in choices]}
        return ModelResponse(
            text=message.get("content") or "",
            model=data.get("model") or self.config.model,
            tokens_in=as_int(usage.get("prompt_tokens")),
            tokens_out=as_int(usage.get("completion_tokens")),
            tokens_cached=as_int(prompt_details.get("cached_tokens")),
            tokens_reasoning=as_int(completion_details.get("reasoning_tokens")),
            finish_reason=choice.get("finish_reason"),
            logprobs=_logprobs(choice),
            raw=redact(raw, self._secrets),
        )

    def _error(self, exc: Exception) -> ModelError:
        """What an exception from the SDK (or from decoding its body) means."""
        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            code, etype, message = _error_fields(exc)
            kind, retryable = classify_status(status, code, etype, message)
            headers = exc.response.headers if exc.response is not None else None
            return status_error(status, kind, retryable, message, headers, self._secrets)
        if isinstance(exc, openai.APIConnectionError):  # APITimeoutError is a subclass
            # httpx-aiohttp reports a dropped connection as a connect *timeout*: look beneath.
            dropped = disconnect(exc)
            if undecodable(exc):  # e.g. a body that claims gzip and is not: the reply is bad
                return ModelError("malformed response body (could not decode it)", retryable=True,
                                  kind="malformed")
            if isinstance(exc, openai.APITimeoutError) and dropped is None:
                return timed_out(exc)
            return ModelError(f"connection failed ({dropped or _cause(exc)})", retryable=True,
                              kind="connection")
        if isinstance(exc, (json.JSONDecodeError, UnicodeDecodeError)):
            return malformed_body(exc, self._secrets)
        return unexpected_error(exc, self._secrets)

    def batches(self):
        """This provider's batch API (models/batching), for a model with batch = true."""
        from .batching.openai_batches import OpenAIBatches

        return OpenAIBatches(self)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = self._options = None


_KEY_PREFIX = f"oversight-{secrets.token_hex(8)}-"  # drawn once: the keys are this and a count
_KEYS = (f"{_KEY_PREFIX}{n}" for n in itertools.count())


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _logprobs(choice: dict) -> list[TokenLogprob] | None:
    content = (choice.get("logprobs") or {}).get("content")
    if not content:
        return None
    return [TokenLogprob(t["token"], t["logprob"],
                         {c["token"]: c["logprob"] for c in (t.get("top_logprobs") or [])})
            for t in content]


def _error_fields(exc: openai.APIStatusError) -> tuple[str | None, str | None, str]:
    """(code, type, message) from an error body: {"error": {...}} or a bare {...} or text."""
    body = exc.body
    err = body.get("error", body) if isinstance(body, dict) else None
    if isinstance(err, dict):
        message = err.get("message") or exc.message
        code, etype = err.get("code"), err.get("type")
        return (str(code) if code else None), (str(etype) if etype else None), str(message)
    if isinstance(err, str):  # {"error": "text"} as some compatible servers send
        return None, None, err
    return None, None, str(body if isinstance(body, str) and body else exc.message)


def _cause(exc: BaseException) -> str:
    """The transport-level reason behind a connection error, without any request detail."""
    cause = exc.__cause__ or exc.__context__
    return type(cause).__name__ if cause is not None else type(exc).__name__
