"""What the batcher needs from a provider's batch API (one adapter per provider SDK), and the
journal it writes to (the store's BatchJournal implements it; the models layer never imports
the store)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from ...errors import ModelError
from ..base import ModelRequest, ModelResponse, TokenLogprob


@dataclass(frozen=True)
class Submitted:
    """A batch the provider holds."""

    batch_id: str
    input_file_id: str | None = None
    status: str | None = None


@dataclass(frozen=True)
class BatchState:
    """What a poll found. `outcome` once ended: ended | expired | cancelled | failed."""

    provider_status: str
    ended: bool
    outcome: str | None = None
    error: str | None = None  # why the provider failed it (outcome failed)
    raw: Any = None  # the SDK's batch object, for results()


class BatchAPI(Protocol):
    provider: str
    limit: int  # the most requests the provider takes in one batch

    async def submit(self, items: list[tuple[str, ModelRequest]], token: str) -> Submitted:
        """Send (custom id, request) pairs as one batch, tagged with `token` where the
        provider keeps metadata."""

    async def find(self, token: str, since: float) -> Submitted | None:
        """The batch tagged `token`, created at or after `since` (epoch seconds), if the
        provider can tell (OpenAI: metadata); None when it has none or cannot tell."""

    async def state(self, batch_id: str) -> BatchState: ...

    async def results(self, state: BatchState) -> dict[str, ModelResponse | ModelError]:
        """custom id -> the response, or the ModelError it got; requests the batch never
        answered (expired, cancelled) are absent."""

    async def cancel(self, batch_id: str) -> None: ...


class Journal(Protocol):
    """Durable batch rows (oversight.store.batches.BatchJournal). Synchronous: called in a
    worker thread."""

    def store_batch(self, provider: str, model: str, base_url: str | None, owner: str,
                    requests: list[tuple[str, str]]) -> tuple[int, str]: ...
    def submitted(self, local_id: int, provider_batch_id: str, input_file_id: str | None,
                  provider_status: str | None = None) -> None: ...
    def provider_status(self, local_id: int, status: str) -> None: ...
    def abandon(self, local_id: int, status: str, error: str) -> None: ...
    def finish(self, local_id: int, status: str, provider_status: str | None,
               results: dict[str, dict]) -> None: ...
    def live(self, provider: str, model: str, base_url: str | None) -> list[dict]: ...
    def lookup(self, cache_key: str) -> dict | None: ...
    def batch(self, local_id: int) -> dict | None: ...


def response_row(response: ModelResponse) -> dict:
    """A response as JSON-able data (the response cache's shape)."""
    row = dict(vars(response))
    if response.logprobs:
        row["logprobs"] = [vars(t) for t in response.logprobs]
    return row


def response_from_row(row: dict) -> ModelResponse:
    lps = row.get("logprobs")
    return ModelResponse(**{**row, "logprobs": [TokenLogprob(**t) for t in lps] if lps else None})


def not_answered(outcome: str, batch_id: str) -> ModelError:
    """The error of a request a batch ended without answering: retried the ordinary way."""
    why = {"expired": "expired (the provider's window passed)",
           "cancelled": "was cancelled", "failed": "failed"}.get(outcome, "ended")
    return ModelError(f"provider batch {batch_id} {why} before answering this request",
                      retryable=True, kind=f"batch_{outcome}" if outcome in
                      ("expired", "cancelled", "failed") else "batch_missing")
