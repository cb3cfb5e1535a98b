"""The batch runner: plans in, stored episodes out. Resumable, interruptible, concurrent.

Each episode's messages and calls are written as they happen; its verdict and final status
are committed together when it finishes. Re-running a spec skips finished episodes, redoes
ones cut off mid-way, and redoes failed ones only with retry_failed.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Protocol

from . import __version__
from .episode import Episode, Message
from .cache import StoreCache
from .models import Budget, BudgetExhausted, CallRecord, Model, ModelResponse
from .prompts import PromptLibrary
from .spec import EpisodePlan, LoadedSpec
from .store import Run, Store, utcnow
from .verdict import Verdict

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
    """Writes one episode's messages and calls as they are produced."""

    def __init__(self, store: Store, episode_id: int, progress: Progress, summary: RunSummary):
        self.store, self.episode_id, self.progress, self.summary = store, episode_id, progress, summary

    async def message(self, m: Message, response: ModelResponse | None, latency: float) -> None:
        self.store.add_message({
            "episode_id": self.episode_id, "idx": m.idx, "role": m.role, "kind": m.kind,
            "round": m.round, "model": m.model, "content": m.content, "shown": m.shown,
            "visible_to": sorted(m.visible_to) if m.visible_to is not None else None,
            "quotes": m.quotes, "latency_s": latency,
            "tokens_in": response.tokens_in if response else None,
            "tokens_out": response.tokens_out if response else None,
        })

    async def call(self, r: CallRecord, role: str) -> None:
        resp = r.response
        self.store.add_call({
            "episode_id": self.episode_id, "role": role, "provider": r.provider, "model": r.model,
            "request": r.request, "response": resp.raw if resp else None,
            "text": resp.text if resp else None, "tokens_in": resp.tokens_in if resp else None,
            "tokens_out": resp.tokens_out if resp else None,
            "tokens_cached": resp.tokens_cached if resp else None,
            "tokens_reasoning": resp.tokens_reasoning if resp else None,
            "latency_s": r.latency, "attempt": r.attempt, "error": r.error,
            "error_kind": r.error_kind, "cost_usd": r.cost_usd, "cache_key": r.cache_key,
            "cache_hit": r.cache_hit,
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
    store.save_run(Run(id=loaded.run_id, name=loaded.spec.name, spec_path=str(loaded.path),
                       spec_toml=loaded.text, spec=loaded.spec.model_dump(mode="json"),
                       spec_hash=loaded.spec_hash, package_version=__version__))
    store.save_items(_item_row(it) for it in loaded.items)
    return loaded.run_id


async def run_batch(loaded: LoadedSpec, store: Store, prompts: PromptLibrary, *,
                    retry_failed: bool = False, progress: Progress | None = None,
                    models: dict[str, Model] | None = None, use_cache: bool = True,
                    budget: Budget | None = None) -> RunSummary:
    """Run every pending episode of a spec; safe to call again to resume."""
    progress = progress or _Quiet()
    run_id = register_run(loaded, store)
    planned_at = utcnow()  # episodes another process starts after this are its, not ours
    pending = todo(loaded.plans, store.episode_status(run_id), retry_failed)
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

    needed = {alias for plan, _ in pending for alias in plan.roles.values()}
    cache = StoreCache(store) if use_cache else None
    models = models or {alias: Model(alias, loaded.models[alias], cache=cache, budget=budget)
                        for alias in needed}
    store.set_run_status(run_id, "running")
    gate = asyncio.Semaphore(loaded.spec.concurrency)

    async def one(plan: EpisodePlan, existing: int | None) -> None:
        async with gate:
            if budget is not None and budget.exhausted:
                return  # never started: stays pending for the next run
            status = await run_episode(plan, existing, run_id, store, prompts, models, progress, summary,
                                       planned_at=planned_at)
        summary.counts[status] = summary.counts.get(status, 0) + 1
        progress.episode(status)

    try:
        await asyncio.gather(*(one(plan, ep_id) for plan, ep_id in pending))
        summary.status = ("budget_exhausted" if budget is not None and budget.exhausted
                          and summary.counts.get("done", 0) < len(pending) else _final_status(store, run_id))
    except asyncio.CancelledError:
        summary.status = "interrupted"
        raise
    finally:
        store.set_run_status(run_id, summary.status if summary.status != "running" else "interrupted")
        await asyncio.shield(_close(models.values()))
    return summary


async def _close(models) -> None:
    await asyncio.gather(*(m.aclose() for m in models), return_exceptions=True)


def _final_status(store: Store, run_id: str) -> str:
    states = {s for _, s in store.episode_status(run_id).values()}
    return "finished" if states <= {"done"} else "incomplete"


async def run_episode(plan: EpisodePlan, existing: int | None, run_id: str, store: Store,
                      prompts: PromptLibrary, models: dict[str, Model], progress: Progress,
                      summary: RunSummary, planned_at: str | None = None) -> str:
    """Run one episode to a stored verdict, or record why it could not finish; "skipped"
    when another process claimed it after `planned_at` (see Store.start_episode)."""
    item = plan.item
    ep_id = store.start_episode({
        "run_id": run_id, "key": plan.key, "item_id": item.key, "protocol": plan.protocol.name,
        "variant": plan.variant, "params": plan.params.model_dump(mode="json"),
        "assignment": plan.assignment.for_item(item), "dispositions": plan.dispositions,
        "misaligned": plan.misaligned, "roles": plan.roles,
        "models": {a: models[a].config.public() for a in set(plan.roles.values())},
        "seed": plan.seed,
    }, existing, planned_at)
    if ep_id is None:
        return "skipped"
    ep = Episode(item=item, protocol=plan.protocol, params=plan.params,
                 models={r: models[a] for r, a in plan.roles.items()},
                 assignment=dict(plan.assignment.answers), dispositions=plan.dispositions,
                 prompts=prompts, recorder=StoreRecorder(store, ep_id, progress, summary))
    t0 = time.perf_counter()

    def finish(verdict: dict | None, status: str, error: str | None = None) -> str:
        store.finish_episode(ep_id, verdict, {**ep.totals(), "duration_s": time.perf_counter() - t0},
                             status=status, error=error)
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
