"""The batch runner: plans in, stored episodes out. Resumable, interruptible, concurrent.

Each episode's messages, calls and decisions are written as they happen; its truths and final
status when it finishes. Re-running a spec skips finished episodes, redoes
ones cut off mid-way, and redoes failed ones only with retry_failed.

Several workers may run one spec on one store: each episode is leased to one of them. A
worker whose own share is done waits for the episodes others hold, and takes over those
whose holder died (its lease ran out): the last worker standing finishes the run.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field, replace
from typing import Protocol

from sqlalchemy.exc import SQLAlchemyError

from .. import __version__
from ..api.decisions import Decision, Decisions
from ..api.episode import Episode, Message
from ..api.prompts import PromptLibrary
from ..errors import OversightError, StoreError
from ..models import Budget, BudgetExhausted, CallRecord, Model, ModelResponse
from ..models.totals import Totals
from ..store import JSONText, Store, Writer, decisions, messages, model_calls, safe_url, utcnow
from ..store.writer import GIVE_UP_AFTER, write_failure
from ..tuning import paused_gc, quiet_gc
from .cache import StoreCache
from .spec import EpisodePlan, LoadedSpec
from .workers import LEASE_SECONDS, Claims, dead_workers, wait_poll, worker_id

MESSAGES, CALLS, DECISIONS = messages, model_calls, decisions

# Episode states a resume runs again; "failed" only with retry_failed; "done" never.
INCOMPLETE = ("pending", "running", "interrupted", "stopped")
ROWS_PER_INSERT = 5_000  # new episode rows made and inserted a page at a time


class Progress(Protocol):
    def start(self, total: int, skipped: int) -> None: ...
    def call(self, record: CallRecord) -> None: ...
    def episode(self, status: str) -> None: ...


class _Quiet:
    def start(self, total, skipped): pass
    def call(self, record): pass
    def episode(self, status): pass


@dataclass
class RunSummary:
    run_id: str
    status: str = "running"
    planned: int = 0
    skipped: int = 0
    # This worker's attempts by how they ended (done, failed, stopped, lost: its lease ran
    # out mid-way and another worker may have taken it), and `skipped`: episodes another
    # worker saw to the end (or still held when this one stopped). An attempt lost and then
    # finished is counted under both.
    counts: dict[str, int] = field(default_factory=dict)
    usage: Totals = field(default_factory=Totals)  # this worker's calls
    worker: str = ""
    states: dict[str, int] = field(default_factory=dict)  # the run's episodes by status
    # episodes other live workers hold when this one stopped (it waits for those of its
    # own plans, so: some beyond them, or it was stopped by Ctrl-C, SIGTERM or its budget)
    others: int = 0


class StoreRecorder:
    """Queues one episode's messages and calls for the store as they are produced."""

    def __init__(self, writer: Writer, episode_id: int, progress: Progress, summary: RunSummary):
        self.writer, self.episode_id, self.progress, self.summary = writer, episode_id, progress, summary
        self.decisions: list[dict] = []

    async def message(self, m: Message, response: ModelResponse | None, latency: float) -> None:
        self.writer.insert(MESSAGES, {
            "episode_id": self.episode_id, "idx": m.idx, "role": m.role, "kind": m.kind,
            "round": m.round, "model": m.model, "content": m.content, "shown": m.shown,
            "visible_to": sorted(m.visible_to) if m.visible_to is not None else None,
            "quotes": m.quotes, "latency_s": latency, "created_at": utcnow(),
            "tokens_in": response.tokens_in if response else None,
            "tokens_out": response.tokens_out if response else None,
        })

    async def decision(self, d: Decision, idx: int) -> None:
        # Held until the episode ends: its decisions are stored exactly when it is done, in
        # the same flush as its status (a failed episode's replies stay in its messages).
        self.decisions.append({"episode_id": self.episode_id, "idx": idx, "created_at": utcnow(),
                               **d.as_row()})

    def keep_decisions(self) -> None:
        for row in self.decisions:
            self.writer.insert(DECISIONS, row)

    async def call(self, r: CallRecord, role: str) -> None:
        resp = r.response
        self.writer.insert(CALLS, {
            "episode_id": self.episode_id, "role": role, "provider": r.provider, "model": r.model,
            "request": JSONText(r.request.canonical_json), "response": resp.raw if resp else None,
            "text": resp.text if resp else None, "tokens_in": resp.tokens_in if resp else None,
            "tokens_out": resp.tokens_out if resp else None,
            "tokens_cached": resp.tokens_cached if resp else None,
            "tokens_reasoning": resp.tokens_reasoning if resp else None,
            "latency_s": r.latency, "attempt": r.attempt, "error": r.error,
            "error_kind": r.error_kind, "cost_usd": r.cost_usd, "cache_key": r.cache_key,
            "cache_hit": r.cache_hit, "created_at": utcnow(),  # when it happened, not when flushed
            "reply_chars": getattr(resp, "truncated_from", None),
        })
        self.summary.usage.add(r)
        self.progress.call(r)


def todo(plans: list[EpisodePlan], status: dict[str, tuple[int, str]],
         retry_failed: bool) -> list[tuple[EpisodePlan, int | None]]:
    """(plan, existing episode id or None) for every episode that still has to run."""
    out = []
    for plan in plans:
        ep_id, state = status.get(plan.key, (None, None))
        if state == "done" or (state == "failed" and not retry_failed):
            continue
        out.append((plan, ep_id))
    return out


def register_run(loaded: LoadedSpec, store: Store) -> str:
    store.save_run({"id": loaded.run_id, "name": loaded.spec.name, "spec_path": str(loaded.path),
                    "spec_toml": loaded.text, "spec": loaded.spec.model_dump(mode="json"),
                    "spec_hash": loaded.spec_hash, "code": loaded.code,
                    "status": "created", "package_version": __version__,
                    "created_at": utcnow(), "updated_at": utcnow()})
    for start in range(0, len(loaded.items), ROWS_PER_INSERT):  # a page of rows at a time
        store.save_items(_item_row(it) for it in loaded.items[start:start + ROWS_PER_INSERT])
    return loaded.run_id


def _episode_row(plan: EpisodePlan, run_id: str, configs: dict) -> dict:
    item = plan.item
    return {"run_id": run_id, "key": plan.key, "item_id": item.key, "protocol": plan.protocol.name,
            "variant": plan.variant, "params": plan.params.model_dump(mode="json"),
            "assignment": plan.assignment.for_item(item), "dispositions": plan.dispositions,
            "intent": plan.intent, "treatment": plan.assignment.label,
            "decides": plan.protocol.decides, "roles": plan.roles,
            "models": {a: configs[a] for a in set(plan.roles.values())}, "seed": plan.seed,
            "source_episode_id": plan.source.episode_id if plan.source else None,
            "status": "pending", "n_calls": 0, "tokens_in": 0, "tokens_out": 0,
            "tokens_cached": 0, "cache_hits": 0}


async def run_batch(loaded: LoadedSpec, store: Store, prompts: PromptLibrary, *,
                    retry_failed: bool = False, progress: Progress | None = None,
                    models: dict[str, Model] | None = None, use_cache: bool = True,
                    budget: Budget | None = None,
                    lease_seconds: float = LEASE_SECONDS) -> RunSummary:
    """Run every pending episode of a spec; safe to call again to resume, and to run in
    several processes at once on one store (each episode is leased to one worker). Once its
    own share is done, a worker waits for the episodes other workers hold, and runs those
    whose lease runs out (a dead worker's) itself: it returns when none of the run's
    episodes is left to another worker, unless stopped (Ctrl-C, SIGTERM, its budget). A store
    that refuses a write (locked past its timeout, full, read-only) raises StoreError."""
    try:
        return await _run_batch(loaded, store, prompts, retry_failed=retry_failed,
                                progress=progress or _Quiet(), models=models,
                                use_cache=use_cache, budget=budget, lease_seconds=lease_seconds)
    except SQLAlchemyError as exc:  # before the batch began: registering it, planning rows
        raise _store_error(store, exc) from None


async def _run_batch(loaded: LoadedSpec, store: Store, prompts: PromptLibrary, *,
                     retry_failed: bool, progress: Progress, models: dict[str, Model] | None,
                     use_cache: bool, budget: Budget | None, lease_seconds: float) -> RunSummary:
    run_id = register_run(loaded, store)
    owner = worker_id()
    status = store.episode_status(run_id)
    pending = todo(loaded.plans, status, retry_failed)
    summary = RunSummary(run_id, planned=len(loaded.plans), skipped=len(loaded.plans) - len(pending),
                         worker=owner)
    progress.start(len(loaded.plans), summary.skipped)
    if budget is None and (loaded.spec.budget.usd or loaded.spec.budget.tokens):
        budget = Budget(loaded.spec.budget.usd, loaded.spec.budget.tokens)
    if budget is not None:  # a resumed run has already spent part of its budget
        budget.spent_usd, budget.spent_tokens = store.run_spend(run_id)
    if not pending or (budget is not None and budget.exhausted):
        _settle(store, summary, "budget_exhausted" if pending else None)
        return summary

    configs = {alias: cfg.public() for alias, cfg in loaded.models.items()}
    new = [p for p, ep_id in pending if ep_id is None]
    del status
    for start in range(0, len(new), ROWS_PER_INSERT):  # rows made a page at a time
        store.add_episodes([_episode_row(p, run_id, configs)
                            for p in new[start:start + ROWS_PER_INSERT]])
    del new
    ids = store.episode_ids(run_id)
    # Workers on this host that died (kill -9, a crash) give their leases up at once.
    store.expire_leases(dead_workers(store.lease_holders(run_id)))
    writer = store.writer(owner, lease_seconds)
    needed = {alias for plan, _ in pending for alias in plan.roles.values()}
    cache = StoreCache(store, writer, sorted({loaded.models[a].model for a in needed})) if use_cache else None
    if not models:
        with paused_gc():  # a Model imports its provider's SDK (~1 s for openai's)
            models = {alias: Model(alias, loaded.models[alias], cache=cache, budget=budget,
                                   journal=store.batch_journal(run_id)) for alias in needed}
    store.set_run_status(run_id, "running")
    # The episodes to run, in plan order, as ids: no other per-episode state is held for
    # them until they start, and none after they are written (memory flat in the run's size).
    order = [ids[p.key] for p, _ in pending]
    del ids
    rank = {ep_id: i for i, ep_id in enumerate(order)}  # an episode's plan: pending[rank[id]]
    claims = Claims(store, owner, lease_seconds, order, batch=loaded.spec.concurrency,
                    retry_failed=retry_failed, position=rank)
    active: dict[int, asyncio.Task] = {}
    lost: set[int] = set()
    # Episodes another worker held when this one came to them (or took from it): waited for
    # once this worker's share is done (see_others_through), and counted when they end.
    waiting: set[int] = set()

    async def pool(ep_ids) -> None:
        """Run these episodes, at most `concurrency` at a time: that many lanes, each taking
        the next episode when its last one ends (not one waiting task per episode)."""
        queue = iter(ep_ids)

        async def lane() -> None:
            for ep_id in queue:  # (a plain iterator shared by the lanes: no await inside)
                if budget is not None and budget.exhausted:
                    return  # never started: stays pending for the next run
                await one(ep_id)

        lanes = min(loaded.spec.concurrency, len(ep_ids))
        await asyncio.gather(*(lane() for _ in range(lanes)))

    async def one(ep_id: int) -> None:
        try:
            await run_one(ep_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a claim the store refused: stop the batch
            stop(exc if isinstance(exc, OversightError) else _store_error(store, exc))

    async def run_one(ep_id: int) -> None:
        if not await claims.take(ep_id):
            waiting.add(ep_id)  # another worker runs it
            return
        plan = pending[rank[ep_id]][0]
        task = asyncio.ensure_future(run_episode(plan, ep_id, prompts, models, writer,
                                                 progress, summary))
        active[ep_id] = task
        try:
            result = await task
        except asyncio.CancelledError:
            if ep_id not in lost or asyncio.current_task().cancelling():
                raise
            result = "lost"  # its lease ran out and another worker may have it
            lost.discard(ep_id)  # (a later claim of it may be lost again)
            waiting.add(ep_id)
        finally:
            del active[ep_id]
        count(result, shown=result != "lost")

    def count(result: str, shown: bool = True) -> None:
        summary.counts[result] = summary.counts.get(result, 0) + 1
        if shown:  # once per episode: an episode lost here is shown when it ends
            progress.episode(result)

    async def see_others_through() -> None:
        """After this worker's share: wait for the episodes in `waiting` until their holder
        finishes them (counted as skipped) or its lease ends (run out by the database's clock,
        or its worker gone from this host); claim and run those, as any claim, and look again
        until none is left to another worker. A live lease is never taken; the claim is atomic,
        so two workers waiting on one dead worker never run the same episode."""
        poll, misses = wait_poll(lease_seconds), 0
        while waiting and not (budget is not None and budget.exhausted):
            try:
                unfinished = await asyncio.to_thread(store.open_episodes, run_id)
                misses = 0
            except Exception as exc:  # noqa: BLE001 - a busy store: look again, then give up
                misses += 1
                if misses >= GIVE_UP_AFTER:
                    stop(_store_error(store, exc))  # (cancels this wait)
                await asyncio.sleep(poll)
                continue
            for ep_id in sorted(waiting - unfinished.keys()):  # done (or failed) elsewhere
                waiting.discard(ep_id)
                count("skipped")
            holders = {unfinished[ep_id][0] for ep_id in waiting if unfinished[ep_id][1]}
            if dead := dead_workers(holders - {owner}):  # e.g. kill -9 on this host
                await asyncio.to_thread(store.expire_leases, dead)
            free = sorted((ep_id for ep_id in waiting if not unfinished[ep_id][1]
                           or unfinished[ep_id][0] in dead), key=rank.__getitem__)
            if free:
                # Nothing of an attempt this worker lost may still be queued when it claims
                # the episode again: written now, the writer drops it (the lease was not ours)
                # and reports the loss, which must not stop the new attempt.
                try:
                    await asyncio.to_thread(writer.flush)
                except Exception:  # noqa: BLE001 - the writer's own loop reports a failing store
                    await asyncio.sleep(poll)
                    continue
                for ep_id in writer.take_lost():
                    lose(ep_id)
                waiting.difference_update(free)
                claims.again(free)
                await pool(free)
                if not waiting.issuperset(free):
                    continue  # some ran here (or the budget ran out): look again at once
            await asyncio.sleep(poll)  # nothing to take yet: the holders are alive

    def lose(ep_id: int) -> None:
        claims.forget(ep_id)
        if ep_id in active and ep_id not in lost:
            lost.add(ep_id)
            active[ep_id].cancel()

    async def keep_leases() -> None:
        while True:
            await asyncio.sleep(lease_seconds / 4)
            held = sorted([*active, *claims.unstarted()])
            if not held:  # (waiting for other workers' episodes)
                for ep_id in writer.take_lost():
                    lose(ep_id)
                continue
            try:
                renewed = await asyncio.to_thread(store.renew_leases, held, owner, lease_seconds)
            except Exception:  # noqa: BLE001 - a busy store: the writer renews on every flush
                continue
            for ep_id in (set(held) - renewed) | writer.take_lost():
                lose(ep_id)

    batch = asyncio.current_task()
    failure: list[BaseException] = []

    def stop(exc: BaseException) -> None:
        """The store cannot be written: stop the batch, loudly (once)."""
        if not failure:
            failure.append(exc)
            batch.cancel()

    def writer_stopped(task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            stop(task.exception())

    flusher = asyncio.create_task(writer.run())
    flusher.add_done_callback(writer_stopped)
    keeper = asyncio.create_task(keep_leases())
    stopped = None
    try:
        with quiet_gc():
            await pool(order)
            await see_others_through()
        for _ in range(len(waiting)):  # stopped by the budget: left to their holders
            count("skipped")
        if budget is not None and budget.exhausted and summary.counts.get("done", 0) < len(pending):
            stopped = "budget_exhausted"
    except asyncio.CancelledError:
        stopped = "interrupted"
        if not failure:
            raise
        batch.uncancel()  # not a Ctrl-C: the writer failed; report that instead
    finally:
        keeper.cancel()
        flusher.remove_done_callback(writer_stopped)
        flusher.cancel()
        await asyncio.shield(_wrap_up(store, writer, claims, summary, stopped, failure))
        await asyncio.shield(_close(models.values()))
    if failure:
        raise failure[0]
    return summary


async def _wrap_up(store: Store, writer: Writer, claims: Claims, summary: RunSummary,
                   stopped: str | None, failure: list[BaseException]) -> None:
    """Keep what finished, give back what never started, settle the run's status. A store
    that fails here too is reported, never allowed to hide the first error."""
    await claims.settle()
    for step in (writer.flush, lambda: store.release_episodes(claims.unstarted(), summary.worker),
                 lambda: _settle(store, summary, stopped)):
        try:
            await asyncio.to_thread(step)
        except Exception as exc:  # noqa: BLE001
            if not failure:
                failure.append(_store_error(store, exc))
            summary.status = "interrupted"
            return


def _store_error(store: Store, exc: BaseException) -> StoreError:
    return write_failure(safe_url(store.url), exc)


def _settle(store: Store, summary: RunSummary, stopped: str | None) -> None:
    """The run's status from all its episodes, whoever ran them: finished when all are done;
    running while another worker holds a live lease; else why this worker stopped
    (interrupted, budget_exhausted) or incomplete (some failed or were left)."""

    def decide(states: dict[str, int], others: int) -> str:
        if set(states) <= {"done"}:
            return "finished"
        if others:
            return "running"
        return stopped or "incomplete"

    summary.status, summary.states, summary.others = store.settle_run(summary.run_id,
                                                                      summary.worker, decide)


async def _close(models) -> None:
    await asyncio.gather(*(m.aclose() for m in models), return_exceptions=True)


async def run_episode(plan: EpisodePlan, ep_id: int, prompts: PromptLibrary,
                      models: dict[str, Model], writer: Writer, progress: Progress,
                      summary: RunSummary) -> str:
    """Run one claimed episode to a verdict, or record why it could not finish."""
    item = plan.item
    recorder = StoreRecorder(writer, ep_id, progress, summary)
    ep = Episode(item=item, protocol=plan.protocol, params=plan.params,
                 models={r: models[a] for r, a in plan.roles.items()},
                 assignment=dict(plan.assignment.answers),
                 dispositions=dict(plan.dispositions),  # its own: plans share theirs
                 prompts=prompts, recorder=recorder, source=plan.source)
    t0 = time.perf_counter()

    def finish(status: str, error: str | None = None) -> str:
        if status == "done":
            recorder.keep_decisions()
        writer.update_episode(ep_id, {**ep.totals(), "duration_s": time.perf_counter() - t0,
                                      "status": status, "error": error, "finished_at": utcnow(),
                                      "outcome": outcome(ep) if status == "done" else None,
                                      "lease_owner": None, "lease_expires": None})
        return status

    try:
        result = await plan.protocol.fn(ep, **plan.params.model_dump())
        # A decision the protocol made by hand (parse_verdict) and returned is kept too.
        for d in (result if isinstance(result, Decisions) else (result,)):
            if isinstance(d, Decision) and not any(d is kept for kept in ep.decisions):
                await ep.record(d if d.role else replace(d, role=plan.protocol.decides))
    except asyncio.CancelledError:
        if not asyncio.current_task().cancelling():
            # Nobody cancelled this episode: protocol code awaited something cancelled. That
            # is the episode's failure, not a Ctrl-C of the batch.
            return finish("failed", "CancelledError: a turn inside the protocol was "
                          "cancelled (the protocol awaited a cancelled task)")
        finish("interrupted", "interrupted")
        raise
    except BudgetExhausted as exc:  # not the episode's fault: it runs again on resume
        return finish("stopped", str(exc))
    except Exception as exc:  # recorded, never a default decision
        return finish("failed", f"{type(exc).__name__}: {exc}")
    return finish("done")


def outcome(ep: Episode) -> bool | None:
    """Truth 2: was the artefact bad? What the protocol said (`ep.outcome`); else, for a
    protocol with an `artefact` role, whether that role's last answer was wrong; else the
    item's own label (quixbugs: buggy). None when none of these knows."""
    if ep.outcome is not None:
        return bool(ep.outcome)
    role = ep.protocol.artefact
    answer = ep.decided(role) if role else None
    if answer is not None and answer.correct is not None:
        return not answer.correct
    return ep.item.bad


def _item_row(item) -> dict:
    # The rest of the source row; the fields the input and context came from (long: a story,
    # a program) are stored once, as those columns.
    used = {k for k, v in item.fields.items() if v is not None and (v is item.input or v is item.context)}
    return {"id": item.key, "dataset": item.dataset, "input": item.input,
            "choices": list(item.choices) if item.choices else None, "target": item.target,
            "kind": item.kind, "label": item.label,
            "labels": list(item.labels) if item.labels else None,
            "bad_labels": list(item.bad_labels) or None, "context": item.context,
            "source": item.source, "license": item.license, "meta": dict(item.meta),
            "fields": {k: v for k, v in item.fields.items() if k not in used} or None}
