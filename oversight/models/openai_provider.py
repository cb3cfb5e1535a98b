"""OpenAI chat completions through the official SDK; any OpenAI-compatible server via base_url."""

from __future__ import annotations

import os

import openai

from ..errors import ModelError
from .base import ModelConfig, ModelRequest, ModelResponse, Provider, TokenLogprob

# Statuses worth another attempt; everything else (400, 401, 403, 404, context length) is fatal.
RETRYABLE_STATUS = {408, 409, 429, 500, 502, 503, 504, 529}


class OpenAIProvider(Provider):
    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self._client: openai.AsyncOpenAI | None = None

    def _make_client(self, base_url: str | None) -> openai.AsyncOpenAI:
        env = self.config.api_key_env or ("OPENAI_API_KEY" if base_url is None else None)
        key = os.environ.get(env) if env else None
        if env and not key and base_url is None:
            raise ModelError(f"environment variable {env} is not set (needed by model "
                             f"{self.config.model!r})")
        # max_retries=0: the SDK must not retry behind our back; one retry layer sees every attempt.
        return openai.AsyncOpenAI(api_key=key or "not-needed", base_url=base_url, max_retries=0,
                                  timeout=float(self.config.options.get("timeout", 600)))

    async def start(self) -> None:
        if self._client is None:
            self._client = self._make_client(self.config.base_url)

    async def complete(self, request: ModelRequest) -> ModelResponse:
        await self.start()
        kwargs: dict = dict(model=self.config.model or "default",
                            messages=[{"role": r, "content": c} for r, c in request.messages],
                            max_tokens=request.max_tokens, temperature=request.temperature)
        if request.stop:
            kwargs["stop"] = list(request.stop)
        if request.logprobs:
            kwargs.update(logprobs=True, top_logprobs=request.top_logprobs or 5)
        try:
            completion = await self._client.chat.completions.create(**kwargs)
        except openai.APIStatusError as exc:
            raise ModelError(f"HTTP {exc.status_code}: {_short(exc)}",
                             retryable=exc.status_code in RETRYABLE_STATUS,
                             status=exc.status_code) from None
        except (openai.APITimeoutError, openai.APIConnectionError) as exc:
            raise ModelError(f"{type(exc).__name__}: {exc}", retryable=True) from None
        if not completion.choices:
            raise ModelError("response had no choices", retryable=True)
        choice = completion.choices[0]
        usage = completion.usage
        return ModelResponse(
            text=choice.message.content or "",
            model=completion.model or self.config.model,
            tokens_in=usage.prompt_tokens if usage else None,
            tokens_out=usage.completion_tokens if usage else None,
            finish_reason=choice.finish_reason,
            logprobs=_logprobs(choice),
            raw=completion.model_dump(mode="json", exclude={"choices": {0: {"logprobs"}}}),
        )

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


def _logprobs(choice) -> list[TokenLogprob] | None:
    lp = getattr(choice, "logprobs", None)
    if lp is None or not lp.content:
        return None
    return [TokenLogprob(t.token, t.logprob, {c.token: c.logprob for c in (t.top_logprobs or [])})
            for t in lp.content]


def _short(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:300]
    return str(exc.message)[:300]
