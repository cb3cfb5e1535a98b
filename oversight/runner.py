"""The batch runner: plans in, stored episodes out. Resumable, interruptible, concurrent.

Each episode's messages and calls are written as they happen; its verdict and final status
are committed together when it finishes. Re-running a spec skips finished episodes, redoes
ones cut off mid-way, and redoes failed ones only with retry_failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from dataclasses import dataclass, field
from typing import Protocol

from . import __version__
from .cache import StoreCache
from .episode import Episode, Message
from .models import Budget, BudgetExhausted, CallRecord, Model, ModelResponse
from .prompts import PromptLibrary
from .spec import EpisodePlan, LoadedSpec
from .store import JSONText, Store, Writer, messages, model_calls, utcnow, verdicts
from .verdict import Verdict

MESSAGES, CALLS, VERDICTS = messages, model_calls, verdicts

# Episode states a resume runs again; "failed" only with retry_failed; "done" never.
INCOMPLETE = ("pending", "running", "interrupted", "stopped")


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
    counts: dict[str, int] = field(default_factory=dict)
    calls: int = 0
    cache_hits: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    errors: int = 0


class StoreRecorder:
    """Queues one episode's messages and calls for the store as they are produced."""

    def __init__(self, writer: Writer, episode_id: int, progress: Progress, summary: RunSummary):
        self.writer, self.episode_id, self.progress, self.summary = writer, episode_id, progress, summary

    async def message(self, m: Message, response: ModelResponse | None, latency: float) -> None:
        self.writer.insert(MESSAGES, {
            "episode_id": self.episode_id, "idx": m.idx, "role": m.role, "kind": m.kind,
            "round": m.round, "model": m.model, "content": m.content, "shown": m.shown,
            "visible_to": sorted(m.visible_to) if m.visible_to is not None else None,
            "quotes": m.quotes, "latency_s": latency, "created_at": utcnow(),
            "tokens_in": response.tokens_in if response else None,
            "tokens_out": response.tokens_out if response else None,
        })

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
        })
        s = self.summary
        if r.cache_hit:
            s.cache_hits += 1
        else:
            s.calls += 1
            s.cost_usd += r.cost_usd or 0.0
        if resp is not None:
            s.tokens_in += resp.tokens_in or 0
            s.tokens_out += resp.tokens_out or 0
        else:
            s.errors += 1
        self.progress.call(r)


class Claims:
    """Claims episodes a batch at a time (one transaction each, not one per episode), in the
    order the runner starts them."""

    MAX_BATCH = 500  # ids in one SQL IN (...)

    def __init__(self, store: Store, planned_at: str, order: list[tuple[int, bool]], batch: int):
        self.store, self.planned_at = store, planned_at
        self.order = [ep_id for ep_id, _ in order]
        self.reset = {ep_id for ep_id, redo in order if redo}
        self.position = {ep_id: i for i, ep_id in enumerate(self.order)}
        self.batch = max(1, min(batch, self.MAX_BATCH))
        self.decided: dict[int, bool] = {}  # claimed (True) or lost (False), not yet taken

    def take(self, ep_id: int) -> bool:
        """Whether this process runs the episode; claims it and the next ones if needed."""
        if ep_id not in self.decided:
            start = self.position[ep_id]
            chunk = [i for i in self.order[start:start + self.batch] if i not in self.decided]
            won = self.store.claim_episodes(chunk, self.planned_at, self.reset)
            self.decided.update({i: i in won for i in chunk})
        return self.decided.pop(ep_id)

    def unstarted(self) -> list[int]:
        return [ep_id for ep_id, won in self.decided.items() if won]


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
                    "spec_hash": loaded.spec_hash, "status": "created", "package_version": __version__,
                    "created_at": utcnow(), "updated_at": utcnow()})
    store.save_items(_item_row(it) for it in loaded.items)
    return loaded.run_id


def _episode_row(plan: EpisodePlan, run_id: str, configs: dict) -> dict:
    item = plan.item
    return {"run_id": run_id, "key": plan.key, "item_id": item.key, "protocol": plan.protocol.name,
            "variant": plan.variant, "params": plan.params.model_dump(mode="json"),
            "assignment": plan.assignment.for_item(item), "dispositions": plan.dispositions,
            "misaligned": plan.misaligned, "roles": plan.roles,
            "models": {a: configs[a] for a in set(plan.roles.values())}, "seed": plan.seed,
            "status": "pending", "n_calls": 0, "tokens_in": 0, "tokens_out": 0,
            "tokens_cached": 0, "cache_hits": 0}


async def run_batch(loaded: LoadedSpec, store: Store, prompts: PromptLibrary, *,
                    retry_failed: bool = False, progress: Progress | None = None,
                    models: dict[str, Model] | None = None, use_cache: bool = True,
                    budget: Budget | None = None) -> RunSummary:
    """Run every pending episode of a spec; safe to call again to resume."""
    progress = progress or _Quiet()
    run_id = register_run(loaded, store)
    planned_at = utcnow()  # episodes another process starts after this are its, not ours
    status = store.episode_status(run_id)
    pending = todo(loaded.plans, status, retry_failed)
    summary = RunSummary(run_id, planned=len(loaded.plans), skipped=len(loaded.plans) - len(pending))
    progress.start(len(loaded.plans), summary.skipped)
    if budget is None and (loaded.spec.budget.usd or loaded.spec.budget.tokens):
        budget = Budget(loaded.spec.budget.usd, loaded.spec.budget.tokens)
    if budget is not None:  # a resumed run has already spent part of its budget
        budget.spent_usd, budget.spent_tokens = store.run_spend(run_id)
    if not pending or (budget is not None and budget.exhausted):
        summary.status = "budget_exhausted" if pending else _final_status(store, run_id)
        store.set_run_status(run_id, summary.status)
        return summary

    configs = {alias: cfg.public() for alias, cfg in loaded.models.items()}
    ids = store.create_episodes(run_id, [_episode_row(p, run_id, configs) for p, ep_id in pending
                                         if ep_id is None])
    writer = store.writer()
    needed = {alias for plan, _ in pending for alias in plan.roles.values()}
    cache = StoreCache(store, writer, sorted({loaded.models[a].model for a in needed})) if use_cache else None
    models = models or {alias: Model(alias, loaded.models[alias], cache=cache, budget=budget)
                        for alias in needed}
    store.set_run_status(run_id, "running")
    gate = asyncio.Semaphore(loaded.spec.concurrency)
    claims = Claims(store, planned_at, [(ids[p.key][0], ep_id is not None) for p, ep_id in pending],
                    batch=loaded.spec.concurrency)

    async def one(plan: EpisodePlan, existing: int | None) -> None:
        async with gate:
            if budget is not None and budget.exhausted:
                return  # never started: stays pending for the next run
            ep_id = ids[plan.key][0]
            if not claims.take(ep_id):
                result = "skipped"  # another process runs it
            else:
                result = await run_episode(plan, ep_id, prompts, models, writer, progress, summary)
        summary.counts[result] = summary.counts.get(result, 0) + 1
        progress.episode(result)

    flusher = asyncio.create_task(writer.run())
    try:
        with _batch_gc():
            await asyncio.gather(*(one(plan, ep_id) for plan, ep_id in pending))
        writer.flush()
        summary.status = ("budget_exhausted" if budget is not None and budget.exhausted
                          and summary.counts.get("done", 0) < len(pending) else _final_status(store, run_id))
    except asyncio.CancelledError:
        summary.status = "interrupted"
        raise
    finally:
        flusher.cancel()
        writer.flush()  # what finished before a Ctrl-C or an error is kept
        store.release_episodes(claims.unstarted())
        store.set_run_status(run_id, summary.status if summary.status != "running" else "interrupted")
        await asyncio.shield(_close(models.values()))
    return summary


@contextlib.contextmanager
def _batch_gc():
    """Tune the cyclic garbage collector for the batch. With the default thresholds it ran
    ~850 times in a 2,000-call run, and each full pass walked the ~1,000 classes the SDKs
    define: ~15% of the run's CPU. Freezing what exists before the batch (it lives until
    exit anyway) and collecting the youngest generation every 50,000 allocations instead of
    700 cut that to ~4% (bench/RESULTS.md). Cycles are still collected, only less often."""
    threshold = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()


async def _close(models) -> None:
    await asyncio.gather(*(m.aclose() for m in models), return_exceptions=True)


def _final_status(store: Store, run_id: str) -> str:
    states = {s for _, s in store.episode_status(run_id).values()}
    return "finished" if states <= {"done"} else "incomplete"


async def run_episode(plan: EpisodePlan, ep_id: int, prompts: PromptLibrary,
                      models: dict[str, Model], writer: Writer, progress: Progress,
                      summary: RunSummary) -> str:
    """Run one claimed episode to a verdict, or record why it could not finish."""
    item = plan.item
    ep = Episode(item=item, protocol=plan.protocol, params=plan.params,
                 models={r: models[a] for r, a in plan.roles.items()},
                 assignment=dict(plan.assignment.answers), dispositions=plan.dispositions,
                 prompts=prompts, recorder=StoreRecorder(writer, ep_id, progress, summary))
    t0 = time.perf_counter()

    def finish(verdict: dict | None, status: str, error: str | None = None) -> str:
        # Verdict and status go in the same flush: an episode is done exactly when its
        # verdict is stored.
        if verdict is not None:
            writer.insert(VERDICTS, {"episode_id": ep_id, "created_at": utcnow(), **verdict})
        writer.update_episode(ep_id, {**ep.totals(), "duration_s": time.perf_counter() - t0,
                                      "status": status, "error": error, "finished_at": utcnow()})
        return status

    try:
        verdict = await plan.protocol.fn(ep, **plan.params.model_dump())
        if not isinstance(verdict, Verdict):
            raise TypeError(f"protocol {plan.protocol.name} returned {type(verdict).__name__}, "
                            "expected a Verdict")
    except asyncio.CancelledError:
        finish(None, "interrupted", "interrupted")
        raise
    except BudgetExhausted as exc:  # not the episode's fault: it runs again on resume
        return finish(None, "stopped", str(exc))
    except Exception as exc:  # recorded, never a default verdict
        return finish(None, "failed", f"{type(exc).__name__}: {exc}")
    return finish(verdict.as_row(plan.protocol.judge, item.answer_index), "done")


def _item_row(item) -> dict:
    return {"id": item.key, "dataset": item.dataset, "question": item.question,
            "choices": list(item.choices), "answer_index": item.answer_index,
            "context": item.context, "source": item.source, "license": item.license,
            "meta": item.meta}
