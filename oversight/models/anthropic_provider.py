"""Anthropic messages through the official SDK (`anthropic.AsyncAnthropic`).

System turns of the request go to the top-level `system` field (joined by blank lines); the
rest become `messages`. Failures become `ModelError`s for the one retry layer above (the SDK's
own retries are off): `_error` says what each of the SDK's exceptions means, HTTP statuses by
failures.classify_status; 529 / `overloaded_error` is `overloaded` and retryable. Anthropic returns no log-probabilities, so `logprobs` is None and
verdicts fall back to elicited confidence.

No sampling parameters are sent: the SDK (>= 1.0) has no `temperature`/`top_p`/`top_k`
arguments, and the API version it speaks since 2.0 (`anthropic-version: 2026-10-21`) answers
any of them, at any value, with a 400. `ModelRequest.temperature` is therefore not honoured
here. Whoever needs it on an older model can set options `extra_headers`
{"anthropic-version": "2023-06-01"} and `extra_body` {"temperature": 0.7}.

Options read from `config.options`: `timeout` (seconds per attempt; default: the config's
`timeout`), `thinking` (passed through, e.g. {"type": "adaptive"}), `metadata`, `extra_body`
(merged into the JSON body), `extra_headers` (merged into the request headers).
"""

from __future__ import annotations

import json
from typing import Any

import anthropic

from ..errors import ModelError
from .base import ModelConfig, ModelRequest, ModelResponse, Provider, as_int, attempt_timeout
from .credentials import api_key, redact
from .failures import classify_status, malformed_body, status_error, timed_out, unexpected_error
from .transport import cookies_only_when_set

__all__ = ["AnthropicProvider"]


class AnthropicProvider(Provider):
    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self._client: anthropic.AsyncAnthropic | None = None
        self._secrets: tuple[str, ...] = ()

    def _make_client(self) -> anthropic.AsyncAnthropic:
        key = api_key(self.config, "ANTHROPIC_API_KEY")
        self._secrets = (key,) if key else ()
        # Always an explicit api_key: without one the SDK goes looking on its own (other env
        # variables, profile files on disk, workload-identity federation).
        # max_retries=0: the SDK must not retry behind our back; one retry layer sees every attempt.
        # aiohttp, the SDK's own alternative transport, as for OpenAI (openai_provider.py).
        timeout = attempt_timeout(self.config)
        http = anthropic.DefaultAioHttpClient(timeout=timeout)
        cookies_only_when_set(http)
        return anthropic.AsyncAnthropic(api_key=key or "not-needed", base_url=self.config.base_url,
                                        max_retries=0, open_telemetry=False, timeout=timeout,
                                        http_client=http)

    async def start(self) -> None:
        if self._client is None:
            self._client = self._make_client()

    def _kwargs(self, request: ModelRequest) -> dict[str, Any]:
        opts = self.config.options
        system = [c for r, c in request.messages if r == "system"]
        messages: list[dict[str, str]] = []
        for role, content in request.messages:
            if role == "system":
                continue
            role = "assistant" if role == "assistant" else "user"
            if messages and messages[-1]["role"] == role:  # the API wants alternating turns
                messages[-1]["content"] += "\n\n" + content
            else:
                messages.append({"role": role, "content": content})
        kwargs: dict[str, Any] = {"model": self.config.model, "max_tokens": request.max_tokens,
                                  "messages": messages}
        if system:
            kwargs["system"] = "\n\n".join(system)
        # No temperature: see the module docstring.
        # The API rejects whitespace-only stop sequences (400); they are dropped.
        stops = [s for s in request.stop if s.strip()]
        if stops:
            kwargs["stop_sequences"] = stops
        for name in ("thinking", "metadata"):
            if opts.get(name) is not None:
                kwargs[name] = opts[name]
        for name in ("extra_body", "extra_headers"):
            if opts.get(name):
                kwargs[name] = dict(opts[name])
        return kwargs

    async def complete(self, request: ModelRequest) -> ModelResponse:
        await self.start()
        error: ModelError | None = None
        kwargs = self._kwargs(request)
        options: dict[str, Any] = {}  # as messages.create() passes them to post()
        if "extra_headers" in kwargs:
            options["headers"] = kwargs.pop("extra_headers")
        if "extra_body" in kwargs:
            options["extra_json"] = kwargs.pop("extra_body")
        try:
            # The client's generic post(), as messages.create() calls it, with the reply as
            # plain JSON (cast_to=object; the text of a reply that is not JSON): the same
            # request building, auth, transport and status-error mapping, without a pydantic
            # Message built and dumped again per call.
            data = await self._client.post("/v1/messages", body=kwargs, cast_to=object,
                                           options=options)
        except (anthropic.AnthropicError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            error = self._error(exc)
        if error is not None:
            # Raised outside the except block so the SDK exception (whose request carries the
            # Authorization header) is not chained onto ours as __context__.
            raise error
        return self._response(data)

    def _response(self, data: Any) -> ModelResponse:
        """A ModelResponse from a Messages API body (parsed JSON), checking its shape."""
        if not isinstance(data, dict):
            raise ModelError(f"malformed response: expected a message, got "
                             f"{type(data).__name__}", retryable=True, kind="malformed")
        content = data.get("content")
        if not isinstance(content, list):
            raise ModelError("malformed response: no content", retryable=True, kind="malformed")
        texts = [b["text"] for b in content if isinstance(b, dict) and b.get("type") == "text"
                 and isinstance(b.get("text"), str)]
        stop = data.get("stop_reason")
        stop = stop if isinstance(stop, str) else None
        if not texts and stop not in ("max_tokens", "refusal", "tool_use", "pause_turn"):
            # An answer with no text at all that did not stop for a reason is broken, not empty.
            raise ModelError("malformed response: no text content", retryable=True,
                             kind="malformed")
        usage = _dict(data.get("usage"))  # absent usage is not an error
        fresh = as_int(usage.get("input_tokens"))
        cache_read = as_int(usage.get("cache_read_input_tokens"))
        cache_write = as_int(usage.get("cache_creation_input_tokens"))
        # Anthropic splits the prompt three ways: `input_tokens` counts only the tokens after
        # the last cache breakpoint; cache reads and cache writes are reported beside it. Like
        # OpenAI's prompt_tokens, tokens_in here is the whole prompt (all three), and
        # tokens_cached the part served from the cache, so cost and context size compare
        # across providers. (Cache writes are billed at a premium; raw keeps the split.)
        whole = None if fresh is None else fresh + (cache_read or 0) + (cache_write or 0)
        tokens_in = as_int(whole)  # three counts that each fit may not fit summed
        model = data.get("model")
        return ModelResponse(
            text="".join(texts),
            model=model if isinstance(model, str) and model else self.config.model,
            tokens_in=tokens_in,
            tokens_out=as_int(usage.get("output_tokens")),
            tokens_cached=cache_read,
            # Thinking tokens are part of output_tokens; the details split them out.
            tokens_reasoning=as_int(_dict(usage.get("output_tokens_details"))
                                    .get("thinking_tokens")),
            finish_reason=stop,
            logprobs=None,
            raw=redact(data, self._secrets),
        )

    def _error(self, exc: Exception) -> ModelError:
        """What an exception from the SDK (or from decoding its body) means."""
        if isinstance(exc, anthropic.APIStatusError):
            status = exc.status_code
            etype, message = _error_fields(exc)
            kind, retryable = classify_status(status, etype, message)
            if etype == "overloaded_error":
                kind, retryable = "overloaded", True
            headers = exc.response.headers if exc.response is not None else None
            return status_error(status, kind, retryable, message, headers, self._secrets)
        if isinstance(exc, anthropic.APITimeoutError):  # before APIConnectionError: a subclass
            return timed_out(exc)
        if isinstance(exc, anthropic.APIConnectionError):
            cause = exc.__cause__ or exc.__context__
            return ModelError(f"connection failed ({type(cause or exc).__name__})",
                              retryable=True, kind="connection")
        if isinstance(exc, (anthropic.APIResponseValidationError, json.JSONDecodeError,
                            UnicodeDecodeError)):
            return malformed_body(exc, self._secrets)
        return unexpected_error(exc, self._secrets)

    def batches(self):
        """This provider's batch API (models/batching), for a model with batch = true."""
        from .batching.anthropic_batches import AnthropicBatches

        return AnthropicBatches(self)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _error_fields(exc: anthropic.APIStatusError) -> tuple[str | None, str]:
    """(type, message) from {"type": "error", "error": {"type", "message"}} or plain text."""
    body = exc.body
    err = body.get("error", body) if isinstance(body, dict) else None
    if isinstance(err, dict):
        etype = err.get("type")
        return (str(etype) if etype else None), str(err.get("message") or exc.message)
    if isinstance(err, str):
        return None, err
    return None, str(body if isinstance(body, str) and body else exc.message)
