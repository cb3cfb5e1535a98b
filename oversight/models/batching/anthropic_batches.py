"""Anthropic's Message Batches API through the official SDK: `messages.batches.create` with
each request's custom id and params, `retrieve` to poll, `results` (JSONL) once it ended.

Anthropic batches carry no metadata, so a batch accepted by the provider but whose id was not
yet stored when the process died cannot be found again: after a restart its requests are sent
in a new batch (the window is the time between the provider's answer to `create` and the
commit of its id, milliseconds). Requests stored but never sent are resent, as they must be.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import anthropic
import pydantic

from ...errors import ModelError
from ..base import ModelRequest, ModelResponse
from ..failures import classify_status, status_error
from .api import BatchState, Submitted

# Anthropic's error types as the HTTP statuses the ordinary endpoint answers them with.
_ERROR_STATUS = {"invalid_request_error": 400, "authentication_error": 401, "billing_error": 402,
                 "permission_error": 403, "not_found_error": 404, "request_too_large": 413,
                 "rate_limit_error": 429, "api_error": 500, "timeout_error": 504,
                 "overloaded_error": 529}


class AnthropicBatches:
    provider = "anthropic"
    limit = 100_000

    def __init__(self, provider: Any):  # an AnthropicProvider, started
        self.p = provider

    async def _sdk(self, call: Callable[[], Awaitable[Any]]) -> Any:
        error: ModelError | None = None
        try:
            return await call()
        except (anthropic.AnthropicError, json.JSONDecodeError, pydantic.ValidationError,
                UnicodeDecodeError) as exc:
            error = self.p._error(exc)
        raise error  # outside the except: the SDK exception carries the request's headers

    async def submit(self, items: list[tuple[str, ModelRequest]], token: str) -> Submitted:
        await self.p.start()
        requests, headers = [], None
        for custom_id, request in items:
            params = self.p._kwargs(request)
            headers = params.pop("extra_headers", None) or headers  # one set for the batch
            params.update(params.pop("extra_body", {}))
            requests.append({"custom_id": custom_id, "params": params})
        batch = await self._sdk(lambda: self.p._client.messages.batches.create(
            requests=requests, extra_headers=headers))
        return Submitted(batch.id, None, batch.processing_status)

    async def find(self, token: str, since: float) -> Submitted | None:
        return None  # no metadata on Anthropic batches: see the module docstring

    async def state(self, batch_id: str) -> BatchState:
        await self.p.start()
        batch = await self._sdk(lambda: self.p._client.messages.batches.retrieve(batch_id))
        if batch.processing_status != "ended":
            return BatchState(batch.processing_status, False, raw=batch)
        counts = batch.request_counts
        if batch.cancel_initiated_at is not None or getattr(counts, "canceled", 0):
            outcome = "cancelled"
        elif getattr(counts, "expired", 0):
            outcome = "expired"
        else:
            outcome = "ended"
        return BatchState("ended", True, outcome, raw=batch)

    async def results(self, state: BatchState) -> dict[str, ModelResponse | ModelError]:
        batch_id = state.raw.id

        async def read() -> dict[str, ModelResponse | ModelError]:
            out: dict[str, ModelResponse | ModelError] = {}
            async for item in await self.p._client.messages.batches.results(batch_id):
                result = item.result
                if result.type == "succeeded":
                    try:  # the SDK's model of the message, as its JSON body
                        out[item.custom_id] = self.p._response(_body(result.message))
                    except ModelError as exc:
                        out[item.custom_id] = exc
                elif result.type == "errored":
                    out[item.custom_id] = self._error_of(result.error)
            return out  # canceled and expired requests: absent (not answered)

        return await self._sdk(read)

    def _error_of(self, response: Any) -> ModelError:
        err = getattr(response, "error", None)
        etype = str(getattr(err, "type", None) or "api_error")
        message = str(getattr(err, "message", None) or etype)
        status = _ERROR_STATUS.get(etype, 500)
        kind, retryable = classify_status(status, etype, message)
        if etype == "overloaded_error":
            kind, retryable = "overloaded", True
        return status_error(status, kind, retryable, f"in a batch: {message}", None, self.p._secrets)

    async def cancel(self, batch_id: str) -> None:
        await self.p.start()
        await self._sdk(lambda: self.p._client.messages.batches.cancel(batch_id))


def _body(message: Any) -> Any:
    """A batch result's message (the SDK's model) as the JSON of a Messages API body."""
    try:
        return message.model_dump(mode="json", exclude_unset=True)
    except Exception:  # noqa: BLE001 - a half-built model: the provider says malformed
        return message
