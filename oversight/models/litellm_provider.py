"""Every other API through litellm (`litellm.acompletion`), imported lazily: it takes seconds.

`config.model` is litellm's "provider/model" name (e.g. "gemini/gemini-2.0-flash",
"openai/my-model" with `base_url` for any OpenAI-compatible server). litellm's own retries are
off; its exceptions become `ModelError`s for the one retry layer above: `_error` says what they
mean (litellm's classes do not always say it faithfully), HTTP statuses by
failures.classify_status like the other providers.

Before the import, litellm is told to use its bundled model-cost map and other bundled tables
instead of fetching them from the network, and its debug prints and message logging are off.

Options read from `config.options`: `timeout` (seconds per attempt; default: the config's
`timeout`), `seed`, `reasoning_effort`, `extra_body`, and `litellm_kwargs` (a dict passed to
acompletion as is, e.g. {"vertex_project": "..."}). Parameters a provider does not support
are dropped by litellm (drop_params) rather than failing the call: e.g. logprobs for a model
that has none.
"""

from __future__ import annotations

import json
import logging
import os
import re
from typing import Any

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
from .failures import classify_status, exception_chain
from .retry_after import retry_after_seconds

__all__ = ["LitellmProvider", "import_litellm"]

# Tables litellm otherwise downloads at import or first use; "True" makes it use the copies
# shipped inside the package.
_LOCAL_TABLES = ("LITELLM_LOCAL_MODEL_COST_MAP", "LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS",
                 "LITELLM_LOCAL_BLOG_POSTS", "LITELLM_LOCAL_AUTOROUTER_PRESETS",
                 "LITELLM_LOCAL_POLICY_TEMPLATES")

_litellm = None

# How litellm and the SDKs under it word "no key configured" (raised before any request).
_MISSING_KEY = re.compile(r"missing\b[^.]*\b(api[ _-]?key|credentials?)\b"
                          r"|api[ _-]?key\b[^.]*\b(must be set|not set|is required)"
                          r"|no (api )?key is set", re.IGNORECASE)


def _transport_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [ConnectionError]
    try:  # litellm's default transport
        import aiohttp

        errors += [aiohttp.ClientConnectionError, aiohttp.ClientPayloadError]
    except ImportError:
        pass
    return tuple(errors)


_TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (ConnectionError,)


def import_litellm():
    """Import and quieten litellm once per process (never at oversight's import time)."""
    global _litellm
    if _litellm is not None:
        return _litellm
    for name in _LOCAL_TABLES:
        os.environ.setdefault(name, "True")
    os.environ.setdefault("LITELLM_LOG", "ERROR")
    import litellm

    global _TRANSPORT_ERRORS
    _TRANSPORT_ERRORS = _transport_errors()
    litellm.suppress_debug_info = True  # no "Give Feedback / Get Help" banners on errors
    litellm.turn_off_message_logging = True  # prompts and replies stay out of its logging
    litellm.telemetry = False  # gone in recent versions; harmless where it is
    litellm.disable_hf_tokenizer_download = True
    litellm.drop_params = True
    for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "litellm"):
        logging.getLogger(name).setLevel(logging.ERROR)
    _litellm = litellm
    return litellm


class LitellmProvider(Provider):
    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self._litellm = None
        self._key: str | None = None

    async def start(self) -> None:
        if self._litellm is not None:
            return
        env, base_url = self.config.api_key_env, self.config.base_url
        key = api_key(self.config, None)
        # Without api_key_env litellm reads the provider's usual variable (OPENAI_API_KEY,
        # GEMINI_API_KEY, ...) itself; a bare base_url (a local server) needs no key at all.
        self._key = key or ("not-needed" if base_url is not None and not env else None)
        self._litellm = import_litellm()

    def _kwargs(self, request: ModelRequest) -> dict[str, Any]:
        opts = self.config.options
        kwargs: dict[str, Any] = {
            "model": self.config.model,
            "messages": [{"role": r, "content": c} for r, c in request.messages],
            "max_tokens": request.max_tokens, "temperature": request.temperature,
            "timeout": attempt_timeout(self.config),
            "num_retries": 0, "max_retries": 0, "drop_params": True}
        if self.config.base_url:
            kwargs["api_base"] = self.config.base_url
        if self._key:
            kwargs["api_key"] = self._key
        if request.stop:
            kwargs["stop"] = list(request.stop)
        if request.logprobs:
            kwargs.update(logprobs=True, top_logprobs=request.top_logprobs or 5)
        for name in ("seed", "reasoning_effort", "extra_body"):
            if opts.get(name) is not None:
                kwargs[name] = opts[name]
        kwargs.update(opts.get("litellm_kwargs") or {})
        return kwargs

    async def complete(self, request: ModelRequest) -> ModelResponse:
        await self.start()
        error: ModelError | None = None
        try:
            response = await self._litellm.acompletion(**self._kwargs(request))
        except Exception as exc:
            error = self._error(exc)
            if error is None:
                raise
        if error is not None:
            # Raised outside the except block so litellm's exception (and the request it
            # carries) is not chained onto ours as __context__.
            raise error
        return self._response(response)

    def _error(self, exc: Exception) -> ModelError | None:
        """litellm's exception as a ModelError, or None if it is not a model failure (a bug).

        litellm re-raises everything as its own classes (subclasses of the openai SDK's), and
        not always faithfully: a dropped connection arrives as InternalServerError (500), a
        529 from Anthropic as InternalServerError (500), an unparseable body as
        APIConnectionError or InternalServerError. The exception chain still holds what
        happened (the transport error, the JSON error, the real HTTP response), so it decides.
        """
        import httpx  # both are litellm dependencies, already imported by it
        import openai

        lt = self._litellm
        chain = exception_chain(exc)
        if not any(isinstance(e, openai.OpenAIError) for e in chain):
            if any(isinstance(e, (json.JSONDecodeError, UnicodeDecodeError)) for e in chain):
                return ModelError(f"malformed response body ({type(exc).__name__}: "
                                  f"{_short(self._scrub(str(exc)))})", retryable=True,
                                  kind="malformed")
            return None
        text = self._scrub(str(getattr(exc, "message", None) or exc))
        http_status, headers = _http_status(chain, httpx, openai)
        status = http_status
        if status is None:
            status = getattr(exc, "status_code", None)
            status = status if isinstance(status, int) else None
        retry_after = retry_after_seconds(headers or _headers(exc), status=status)

        def err(kind: str, retryable: bool, status: int | None = None) -> ModelError:
            prefix = f"HTTP {status} ({kind})" if status else f"{kind} ({type(exc).__name__})"
            return ModelError(f"{prefix}: {_short(text)}", retryable=retryable, status=status,
                              kind=kind, retry_after=retry_after if status else None)

        if isinstance(exc, lt.ContextWindowExceededError):
            return err("context_length", False, 400)
        if any(isinstance(e, (json.JSONDecodeError, UnicodeDecodeError,
                              openai.APIResponseValidationError)) for e in chain):
            return err("malformed", True)
        if any(isinstance(e, (lt.Timeout, openai.APITimeoutError, httpx.TimeoutException,
                              TimeoutError)) for e in chain):
            return err("timeout", True)
        # (litellm's own APIConnectionError subclasses openai's: only what it wraps counts.)
        if any(isinstance(e, _TRANSPORT_ERRORS + (httpx.TransportError, openai.APIConnectionError))
               and not type(e).__module__.startswith("litellm") for e in chain):
            return err("connection", True)
        if http_status is None and _MISSING_KEY.search(text):
            # Refused before sending (litellm says 500 for some providers): a setup error.
            return err("auth", False)
        if any(type(e) is openai.OpenAIError for e in chain):
            # The openai SDK's bare base class: it refused to build the client or request.
            return err("other", False)
        if http_status is None and (status is None or status >= 500):
            # No HTTP error and no transport error, yet a "500" or a "connection error": litellm
            # failed on a 200 body it could not make sense of (KeyError 'usage', a list where
            # an object belongs, "Invalid response object", ...).
            return err("malformed", True)
        if isinstance(exc, lt.RateLimitError) and status is None:
            status = 429
        if status is not None and status >= 400:
            kind, retryable = classify_status(status, text)
            return err(kind, retryable, status)
        return err("other", False, status)

    def _response(self, response: Any) -> ModelResponse:
        choices = _get(response, "choices")
        if not choices:
            raise ModelError("malformed response: no choices", retryable=True, kind="malformed")
        choice = choices[0]
        message = _get(choice, "message")
        content = _get(message, "content")
        finish = _get(choice, "finish_reason")
        if message is None or not isinstance(content or "", str):
            raise ModelError("malformed response: choice has no message", retryable=True,
                             kind="malformed")
        if (content is None and finish in ("stop", "end_turn") and not _get(message, "tool_calls")
                and not _get(message, "function_call") and not _get(message, "refusal")):
            # What litellm makes of an Anthropic answer with an empty content list (no text,
            # no tool call, no refusal, yet "stopped"): broken, not an empty answer.
            raise ModelError("malformed response: no content", retryable=True, kind="malformed")
        usage = _get(response, "usage")  # absent usage is not an error
        tokens_in = as_int(_get(usage, "prompt_tokens"))
        tokens_out = as_int(_get(usage, "completion_tokens"))
        if not tokens_in and not tokens_out:
            # litellm fills a missing usage block with zeros; no real prompt is 0 tokens.
            tokens_in = tokens_out = None
        try:
            raw = response.model_dump(mode="json") if hasattr(response, "model_dump") else None
        except Exception:  # noqa: BLE001 - a response that will not dump is still an answer
            raw = None
        if isinstance(raw, dict) and raw.get("choices"):
            raw["choices"][0].pop("logprobs", None)
        return ModelResponse(
            text=content or "",
            model=_get(response, "model") or self.config.model,
            tokens_in=tokens_in,
            tokens_out=tokens_out,
            tokens_cached=as_int(_get(_get(usage, "prompt_tokens_details"), "cached_tokens")),
            tokens_reasoning=as_int(_get(_get(usage, "completion_tokens_details"),
                                       "reasoning_tokens")),
            finish_reason=finish,
            logprobs=_logprobs(choice),
            raw=redact(raw, self._secrets()),
        )

    def _secrets(self) -> tuple[str, ...]:
        return (self._key,) if self._key and self._key != "not-needed" else ()

    def _scrub(self, text: str) -> str:
        return redact(text, self._secrets())


def _get(obj: Any, name: str) -> Any:
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj.get(name)
    return getattr(obj, name, None)


def _short(text: str) -> str:
    text = text.split("Traceback (most recent call last)")[0].strip()  # litellm appends one
    return " ".join(text.split())[:300]


def _headers(exc: BaseException):
    headers = getattr(exc, "litellm_response_headers", None)
    if not headers:
        response = getattr(exc, "response", None)
        headers = getattr(response, "headers", None)
    if not headers:
        headers = getattr(exc, "headers", None)
    return headers or None


def _http_status(chain: list[BaseException], httpx, openai) -> tuple[int | None, Any]:
    """The status and headers of the real HTTP answer, innermost first (litellm's own
    exception classes carry a status of their choosing and a made-up response)."""
    for e in reversed(chain):
        if isinstance(e, httpx.HTTPStatusError) and e.response is not None:
            return e.response.status_code, e.response.headers
        if (isinstance(e, openai.APIStatusError) and not type(e).__module__.startswith("litellm")
                and e.response is not None):
            return e.status_code, e.response.headers
    return None, None


def _logprobs(choice: Any) -> list[TokenLogprob] | None:
    content = _get(_get(choice, "logprobs"), "content")
    if not content:
        return None
    out = []
    for t in content:
        top = {_get(c, "token"): _get(c, "logprob") for c in (_get(t, "top_logprobs") or [])}
        out.append(TokenLogprob(_get(t, "token"), _get(t, "logprob"), top))
    return out
