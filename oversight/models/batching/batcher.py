"""Gathers one model's calls, across every episode in flight, into provider batch jobs.

Protocol code does not change: `Model.complete` hands a batched model's request to its
Batcher and awaits the outcome. The Batcher queues requests (one entry per cache key: the
same request asked twice waits for one answer) and sends the queue as one batch when no
request arrived for `linger` seconds (every episode's round-k turn arrives together, so they
share a batch), when its oldest request waited `max_gather` seconds, or at `max_requests`.

Durability (with a journal, i.e. in a run with a store), for each batch:

1. its row and every request's custom id (= the request's cache key) are committed (stored);
2. the batch is sent; OpenAI's carries the local row's random token in its metadata;
3. the provider's batch id is committed (submitted);
4. it is polled every `poll` seconds; once it ended its results are committed, then handed
   to the waiting calls.

A process that dies and restarts, before sending anything, reads this endpoint's live batches:
submitted ones are polled again, and a request whose cache key is in one waits for that batch
instead of being sent again; a request whose result is stored is answered from it. A batch
stored but not known to be submitted whose process is gone is looked for by its token
(OpenAI); found, it is resumed; not found (or Anthropic, which keeps no metadata) it never
reached the provider, so its requests are sent anew when asked for.

Requests a batch answered with an error, or did not answer (expired, cancelled, a batch the
provider failed, one that could not be sent or read) come back as a ModelError: retryable
ones then go through the ordinary path and retry policy (Model.complete); others fail the
call as an ordinary attempt would. A batch not ended after `max_seconds` is cancelled.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)

from ...errors import ModelError
from ..base import ModelConfig, ModelRequest, ModelResponse
from .api import BatchAPI, Journal, Submitted, not_answered, response_from_row, response_row

log = logging.getLogger(__name__)

_HOST = socket.gethostname()
_TAKEN = -2  # an entry's batch while its batch is being stored and sent
_LIVE_NONCES: set[str] = set()  # batchers of this process that are open


@dataclass
class Outcome:
    """A batched request's answer (`response`) or why it has none (`error`)."""

    response: ModelResponse | None = None
    error: ModelError | None = None


class _Entry:
    __slots__ = ("key", "request", "future", "since", "waiters", "batch")

    def __init__(self, key: str, request: ModelRequest | None, future: asyncio.Future,
                 batch: int | None = None):
        self.key, self.request, self.future = key, request, future
        self.since = time.monotonic()
        self.waiters = 0
        self.batch = batch  # the local batch id once stored (-1 without a journal)


def owner_gone(owner: str) -> bool:
    """Whether the process that stored a batch is gone: host:pid:nonce on this host whose
    pid is dead, or this process's own batcher that was closed. Another host's: unknown, so
    taken to be alive."""
    host, _, rest = owner.partition(":")
    pid, _, nonce = rest.partition(":")
    if host != _HOST or not pid.isdigit():
        return False
    if int(pid) == os.getpid():
        return nonce not in _LIVE_NONCES
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def _epoch(iso: str | None) -> float:
    try:
        return datetime.fromisoformat(iso).timestamp() if iso else time.time()
    except ValueError:
        return time.time()


class Batcher:
    """One per batched model. `call(request, key)` -> Outcome."""

    def __init__(self, config: ModelConfig, api: BatchAPI, journal: Journal | None = None):
        self.config, self.policy, self.api, self.journal = config, config.batch, api, journal
        self.nonce = secrets.token_hex(4)
        self.owner = f"{_HOST}:{os.getpid()}:{self.nonce}"
        self._entries: dict[str, _Entry] = {}  # every key queued or in a live batch
        self._queue: list[_Entry] = []
        self._last = 0.0  # monotonic time of the newest arrival
        self._wake: asyncio.Event | None = None
        self._flusher: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self._polled: set[int] = set()  # local batch ids this batcher polls
        self._started = False
        self._start_lock = asyncio.Lock()

    # --- the call ---------------------------------------------------------------------------

    async def call(self, request: ModelRequest, key: str) -> Outcome:
        await self._start()
        entry = self._entries.get(key)
        if entry is None:
            stored = await self._lookup(key)
            if stored is not None:
                return stored
            entry = self._entries.get(key) or self._enqueue(key, request)
        entry.waiters += 1
        try:
            return await asyncio.shield(entry.future)
        finally:
            entry.waiters -= 1
            if entry.waiters == 0 and entry.batch is None and not entry.future.done():
                self._drop(entry)  # every caller gave up before it was sent: nothing to send

    def sent(self, key: str) -> bool:
        """Whether the request with this key is in a batch the provider may hold."""
        entry = self._entries.get(key)
        return entry is not None and entry.batch is not None

    def _enqueue(self, key: str, request: ModelRequest) -> _Entry:
        entry = _Entry(key, request, asyncio.get_running_loop().create_future())
        self._entries[key] = entry
        self._queue.append(entry)
        self._last = entry.since
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_loop())
        self._wake.set()
        return entry

    def _drop(self, entry: _Entry) -> None:
        if entry in self._queue:
            self._queue.remove(entry)
        if self._entries.get(entry.key) is entry:
            del self._entries[entry.key]
        entry.future.cancel()

    async def _lookup(self, key: str) -> Outcome | None:
        """What the journal knows of a key no local entry holds: its stored result (an
        Outcome), or a live batch that has it (adopted: the key then has an entry)."""
        if self.journal is None:
            return None
        try:
            row = await asyncio.to_thread(self.journal.lookup, key)
        except Exception:  # noqa: BLE001 - a busy store: send it (nothing says it was sent)
            log.warning("provider batches: could not read the store; sending anew", exc_info=True)
            return None
        if row is None:
            return None
        if (row["status"] == "succeeded" and row["result"]
                and row["run_id"] == getattr(self.journal, "run_id", None)):
            # This run's own result (a restart): across runs the response cache answers, so
            # --no-cache still means fresh calls there.
            return Outcome(response=response_from_row(row["result"]))
        if row["batch_status"] in ("stored", "submitted") and row["batch_id"] not in self._polled:
            try:  # another process's batch (a worker that died, or one still alive)
                batch = await asyncio.to_thread(self.journal.batch, row["batch_id"])
                if batch is not None and batch["status"] in ("stored", "submitted"):
                    await self._resume(batch)
            except Exception:  # noqa: BLE001
                log.warning("provider batches: could not resume a stored batch", exc_info=True)
        return None

    # --- start: resume what an earlier process left -------------------------------------------

    async def _start(self) -> None:
        if self._started:
            return
        async with self._start_lock:
            if self._started:
                return
            self._wake = asyncio.Event()
            _LIVE_NONCES.add(self.nonce)
            if self.journal is not None:
                try:
                    batches = await asyncio.to_thread(self.journal.live, self.config.provider,
                                                      self.config.model, self.config.base_url)
                    for batch in batches:
                        await self._resume(batch)
                except Exception:  # noqa: BLE001 - a busy store: each request still looks up
                    log.warning("provider batches: could not read the live batches", exc_info=True)
            self._started = True

    async def _resume(self, batch: dict) -> None:
        """Poll a live stored batch again; a stored one whose process is gone is found by its
        token (resumed) or found never to have been sent (its requests are released)."""
        local_id = batch["id"]
        if local_id in self._polled:
            return
        if batch["status"] == "stored":
            if not owner_gone(batch["owner"]):
                return  # its process is alive and sending it
            try:
                found = await self.api.find(batch["token"], _epoch(batch["created_at"]))
            except ModelError as exc:
                log.warning("provider batches: cannot tell whether batch %s was sent (%s)",
                            local_id, exc)
                return
            if found is None:
                await asyncio.to_thread(self.journal.abandon, local_id, "unsubmitted",
                                        "never reached the provider (found after a restart)")
                return
            await asyncio.to_thread(self.journal.submitted, local_id, found.batch_id,
                                    found.input_file_id, found.status)
            batch = {**batch, "provider_batch_id": found.batch_id, "submitted_at": None}
        loop = asyncio.get_running_loop()
        entries = {}
        for custom_id, key in batch["requests"].items():
            if key not in self._entries:
                self._entries[key] = _Entry(key, None, loop.create_future(), batch=local_id)
            entries[custom_id] = self._entries[key]
        self._polled.add(local_id)
        self._spawn(self._watch(local_id, batch["provider_batch_id"], entries,
                                _epoch(batch.get("submitted_at"))))

    # --- sending ------------------------------------------------------------------------------

    async def _flush_loop(self) -> None:
        cap = min(self.policy.max_requests, self.api.limit)
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            now = time.monotonic()
            due = min(self._last + self.policy.linger, self._queue[0].since + self.policy.max_gather)
            if len(self._queue) >= cap or now >= due:
                chunk, self._queue = self._queue[:cap], self._queue[cap:]
                for e in chunk:
                    e.batch = _TAKEN  # being sent: a caller giving up no longer withdraws it
                self._spawn(self._send(chunk))
                continue
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), due - now)
            except TimeoutError:
                pass

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, chunk: list[_Entry]) -> None:
        entries = {e.key: e for e in chunk}  # custom id = cache key
        try:
            await self._send_and_watch(entries)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - never leave a call waiting on a broken batch
            log.warning("provider batches: a batch broke", exc_info=True)
            self._settle(entries, {}, "failed", f"{type(exc).__name__}: {exc}")

    async def _send_and_watch(self, entries: dict[str, _Entry]) -> None:
        cfg = self.config
        if self.journal is not None:  # 1. stored (committed) before anything is sent
            local_id, token = await asyncio.to_thread(
                self.journal.store_batch, cfg.provider, cfg.model, cfg.base_url, self.owner,
                [(cid, e.key) for cid, e in entries.items()])
        else:
            local_id, token = -1, secrets.token_hex(12)
        for e in entries.values():
            e.batch = local_id
        self._polled.add(local_id)
        try:  # 2. sent
            sub = await self._submit(entries, token)
        except ModelError as exc:
            if self.journal is not None:
                await asyncio.to_thread(self.journal.abandon, local_id, "failed",
                                        f"could not be submitted: {exc}")
            self._settle(entries, {}, "failed", f"could not be submitted: {exc}")
            return
        if self.journal is not None:  # 3. the provider's id, at once
            await asyncio.to_thread(self.journal.submitted, local_id, sub.batch_id,
                                    sub.input_file_id, sub.status)
        await self._watch(local_id, sub.batch_id, entries, time.time())  # 4.

    async def _submit(self, entries: dict[str, _Entry], token: str) -> Submitted:
        """Send the batch under the model's retry policy; before sending again, look for the
        first try's batch by its token (a timeout may hide a batch the provider accepted)."""
        items = [(cid, e.request) for cid, e in entries.items()]
        retrying = self._retrying()
        async for attempt in retrying:
            with attempt:
                if attempt.retry_state.attempt_number > 1:
                    found = await self.api.find(token, time.time() - 60)
                    if found is not None:
                        return found
                return await self.api.submit(items, token)
        raise AssertionError("unreachable")  # tenacity returns or re-raises

    def _retrying(self) -> AsyncRetrying:
        policy = self.config.retry
        return AsyncRetrying(
            stop=stop_after_attempt(policy.max_attempts) | stop_after_delay(policy.max_seconds),
            wait=wait_random_exponential(multiplier=policy.backoff_initial, max=policy.backoff_max),
            retry=retry_if_exception(lambda e: isinstance(e, ModelError) and e.retryable),
            reraise=True)

    # --- waiting ------------------------------------------------------------------------------

    async def _watch(self, local_id: int, batch_id: str, entries: dict[str, _Entry],
                     submitted: float) -> None:
        """Poll until the batch ended (cancelling it after max_seconds), then store and hand
        out its results."""
        policy, cancelled, last = self.policy, False, None
        while True:
            overdue = time.time() - submitted > policy.max_seconds
            try:
                state = await self.api.state(batch_id)
            except ModelError as exc:
                if exc.retryable and not overdue:
                    await asyncio.sleep(policy.poll)
                    continue
                await self._abandon(local_id, entries, f"could not be read: {exc}")
                return
            if state.provider_status != last and self.journal is not None and local_id >= 0:
                last = state.provider_status
                await asyncio.to_thread(self.journal.provider_status, local_id, last)
            if state.ended:
                break
            if overdue and not cancelled:
                try:
                    await self.api.cancel(batch_id)
                    cancelled = True
                except ModelError as exc:
                    log.warning("provider batches: could not cancel %s (%s)", batch_id, exc)
            await asyncio.sleep(policy.poll)
        results: dict[str, ModelResponse | ModelError] = {}
        if state.outcome != "failed":
            try:
                async for attempt in self._retrying():
                    with attempt:
                        results = await self.api.results(state)
            except ModelError as exc:
                await self._abandon(local_id, entries, f"results could not be read: {exc}")
                return
        outcomes = self._settle(entries, results, state.outcome, state.error, batch_id=batch_id,
                                hold=True)
        if self.journal is not None and local_id >= 0:
            try:
                await asyncio.to_thread(self.journal.finish, local_id, state.outcome,
                                        state.provider_status, outcomes)
            except Exception:  # noqa: BLE001 - the calls still get their answers
                log.warning("provider batches: could not store batch %s's results", local_id,
                            exc_info=True)
        self._release(entries, results, state.outcome, state.error, batch_id)

    async def _abandon(self, local_id: int, entries: dict[str, _Entry], why: str) -> None:
        if self.journal is not None and local_id >= 0:
            await asyncio.to_thread(self.journal.abandon, local_id, "failed", why)
        self._settle(entries, {}, "failed", why)

    def _settle(self, entries: dict[str, _Entry], results: dict, outcome: str | None,
                why: str | None, *, batch_id: str = "", hold: bool = False) -> dict[str, dict]:
        """Each request's outcome as a journal row; unless `hold`, also handed to its callers
        (hold: after the journal has them, by _release)."""
        rows: dict[str, dict] = {}
        for custom_id in {*entries, *results}:
            got = results.get(custom_id)
            if isinstance(got, ModelResponse):
                rows[custom_id] = {"status": "succeeded", "result": response_row(got)}
                continue
            if got is None:
                got = not_answered(outcome or "failed", batch_id or "(unsent)")
                if why and outcome == "failed":
                    got = ModelError(f"provider batch {why}", retryable=True, kind="batch_failed")
                status = {"expired": "expired", "cancelled": "cancelled"}.get(outcome or "", "errored")
            else:
                status = "errored"
            results[custom_id] = got
            rows[custom_id] = {"status": status, "error": str(got), "error_kind": got.kind}
        if not hold:
            self._release(entries, results, outcome, why, batch_id)
        return rows

    def _release(self, entries: dict[str, _Entry], results: dict, outcome: str | None,
                 why: str | None, batch_id: str) -> None:
        for custom_id, entry in entries.items():
            got = results.get(custom_id) or not_answered(outcome or "failed", batch_id)
            if self._entries.get(entry.key) is entry:
                del self._entries[entry.key]
            if not entry.future.done():
                entry.future.set_result(Outcome(response=got) if isinstance(got, ModelResponse)
                                        else Outcome(error=got))

    async def aclose(self) -> None:
        """Stop polling and sending. Live batches stay with the provider and in the journal:
        the next run resumes them. A call still waiting gets a cancellation error."""
        tasks = [t for t in (self._flusher, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for entry in list(self._entries.values()):
            if not entry.future.done():
                entry.future.set_result(Outcome(error=ModelError(
                    "the model was closed while this request waited for its batch",
                    kind="cancelled")))
        self._entries.clear()
        self._queue.clear()
        self._polled.clear()
        self._tasks.clear()
        self._flusher = None
        _LIVE_NONCES.discard(self.nonce)
        self._started = False


def batcher_for(config: ModelConfig, provider: Any, journal: Journal | None) -> Batcher | None:
    """A Batcher when the model asks for batch mode and its provider has a batch API."""
    if config.batch is None or not hasattr(provider, "batches"):
        return None
    return Batcher(config, provider.batches(), journal)
