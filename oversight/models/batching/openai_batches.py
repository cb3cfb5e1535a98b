"""OpenAI's Batch API through the official SDK: the requests as a JSONL file
(`files.create`, purpose batch), a batch of /v1/chat/completions over it (`batches.create`,
tagged with metadata {"oversight_batch": token} so a crash between submitting and storing the
batch's id is recovered by listing batches), `batches.retrieve` to poll, and the output and
error files (`files.content`) for the results."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import openai

from ...errors import ModelError
from ..base import ModelRequest, ModelResponse
from ..failures import classify_status, status_error
from .api import BatchState, Submitted

ENDPOINT = "/v1/chat/completions"
TAG = "oversight_batch"  # the metadata key holding the local batch's token
# created_at margin when listing batches for a token (clocks differ between us and them)
_SKEW = 600.0
_ENDED = {"completed": "ended", "expired": "expired", "cancelled": "cancelled", "failed": "failed"}


class OpenAIBatches:
    provider = "openai"
    limit = 50_000

    def __init__(self, provider: Any):  # an OpenAIProvider, started
        self.p = provider

    async def _sdk(self, call: Callable[[], Awaitable[Any]]) -> Any:
        error: ModelError | None = None
        try:
            return await call()
        except (openai.OpenAIError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            error = self.p._error(exc)
        raise error  # outside the except: the SDK exception carries the request's headers

    def _line(self, custom_id: str, request: ModelRequest) -> str:
        kwargs = self.p._kwargs(request)
        body = {**kwargs, **kwargs.pop("extra_body", {})}
        return json.dumps({"custom_id": custom_id, "method": "POST", "url": ENDPOINT, "body": body},
                          separators=(",", ":"))

    async def submit(self, items: list[tuple[str, ModelRequest]], token: str) -> Submitted:
        await self.p.start()
        data = "".join(self._line(cid, req) + "\n" for cid, req in items).encode()
        client = self.p._client
        file = await self._sdk(lambda: client.files.create(
            file=("oversight-batch.jsonl", data, "application/jsonl"), purpose="batch"))
        batch = await self._sdk(lambda: client.batches.create(
            input_file_id=file.id, endpoint=ENDPOINT, completion_window="24h",
            metadata={TAG: token}))
        return Submitted(batch.id, file.id, batch.status)

    async def find(self, token: str, since: float) -> Submitted | None:
        await self.p.start()
        client = self.p._client

        async def scan() -> Submitted | None:
            async for batch in client.batches.list(limit=100):  # newest first
                if (batch.metadata or {}).get(TAG) == token:
                    return Submitted(batch.id, batch.input_file_id, batch.status)
                if batch.created_at is not None and batch.created_at < since - _SKEW:
                    return None
            return None

        return await self._sdk(scan)

    async def state(self, batch_id: str) -> BatchState:
        await self.p.start()
        batch = await self._sdk(lambda: self.p._client.batches.retrieve(batch_id))
        outcome = _ENDED.get(batch.status)
        error = None
        if outcome == "failed":
            errors = (batch.errors.data or []) if batch.errors is not None else []
            error = "; ".join(f"{e.code}: {e.message}" for e in errors)[:500] or "no reason given"
        return BatchState(batch.status, outcome is not None, outcome, error, batch)

    async def results(self, state: BatchState) -> dict[str, ModelResponse | ModelError]:
        batch, out = state.raw, {}
        for file_id in (batch.output_file_id, batch.error_file_id):
            if not file_id:
                continue
            content = await self._sdk(lambda f=file_id: self.p._client.files.content(f))
            for line in content.content.decode("utf-8").splitlines():
                if line.strip():
                    custom_id, result = self._result(json.loads(line))
                    if custom_id is not None:
                        out[custom_id] = result
        return out

    def _result(self, line: Any) -> tuple[str | None, ModelResponse | ModelError]:
        """One line of an output or error file: (custom id, response or error)."""
        if not isinstance(line, dict):
            return None, ModelError("malformed batch result line", retryable=True, kind="malformed")
        custom_id = line.get("custom_id")
        response, error = line.get("response"), line.get("error")
        if isinstance(response, dict) and response.get("status_code") == 200:
            try:
                return custom_id, self.p._response(response.get("body"))
            except ModelError as exc:
                return custom_id, exc
        if isinstance(response, dict) and isinstance(response.get("status_code"), int):
            status = response["status_code"]
            body = response.get("body")
            err = body.get("error", body) if isinstance(body, dict) else None
            err = err if isinstance(err, dict) else {}
            message = str(err.get("message") or body or f"HTTP {status}")
            kind, retryable = classify_status(status, err.get("code"), err.get("type"), message)
            return custom_id, status_error(status, kind, retryable, f"in a batch: {message}", None,
                                           self.p._secrets)
        err = error if isinstance(error, dict) else {}
        code = str(err.get("code") or "error")
        kind = {"batch_expired": "batch_expired", "batch_cancelled": "batch_cancelled"}.get(
            code, "batch_error")
        return custom_id, ModelError(f"batch request {code}: {str(err.get('message') or '')[:300]}",
                                     retryable=True, kind=kind)

    async def cancel(self, batch_id: str) -> None:
        await self.p.start()
        await self._sdk(lambda: self.p._client.batches.cancel(batch_id))
