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
from .models import CallRecord, Model, ModelResponse
from .prompts import PromptLibrary
from .spec import EpisodePlan, LoadedSpec
from .store import Run, Store
from .verdict import Verdict


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
    tokens_in: int = 0
    tokens_out: int = 0
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
            "tokens_out": resp.tokens_out if resp else None, "latency_s": r.latency,
            "attempt": r.attempt, "error": r.error,
        })
        self.summary.calls += 1
        if resp is not None:
            self.summary.tokens_in += resp.tokens_in or 0
            self.summary.tokens_out += resp.tokens_out or 0
        else:
            self.summary.errors += 1
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


async def run_batch(loaded: LoadedSpec, store: Store, prompts: PromptLibrary, *,
                    retry_failed: bool = False, progress: Progress | None = None,
                    models: dict[str, Model] | None = None) -> RunSummary:
    """Run every pending episode of a spec; safe to call again to resume."""
    progress = progress or _Quiet()
    run_id = loaded.run_id
    store.save_run(Run(id=run_id, name=loaded.spec.name, spec_path=str(loaded.path),
                       spec_toml=loaded.text, spec=loaded.spec.model_dump(mode="json"),
                       spec_hash=loaded.spec_hash, package_version=__version__))
    store.save_items(_item_row(it) for it in loaded.items)
    pending = todo(loaded.plans, store.episode_status(run_id), retry_failed)
    summary = RunSummary(run_id, planned=len(loaded.plans), skipped=len(loaded.plans) - len(pending))
    progress.start(len(loaded.plans), summary.skipped)
    if not pending:
        summary.status = "finished"
        store.set_run_status(run_id, _final_status(store, run_id))
        return summary

    needed = {alias for plan, _ in pending for alias in plan.roles.values()}
    models = models or {alias: Model(alias, loaded.models[alias]) for alias in needed}
    store.set_run_status(run_id, "running")
    gate = asyncio.Semaphore(loaded.spec.concurrency)

    async def one(plan: EpisodePlan, existing: int | None) -> None:
        async with gate:
            status = await run_episode(plan, existing, run_id, store, prompts, models, progress, summary)
        summary.counts[status] = summary.counts.get(status, 0) + 1
        progress.episode(status)

    try:
        await asyncio.gather(*(one(plan, ep_id) for plan, ep_id in pending))
        summary.status = _final_status(store, run_id)
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
                      summary: RunSummary) -> str:
    """Run one episode to a stored verdict, or record why it could not finish."""
    item = plan.item
    ep_id = store.start_episode({
        "run_id": run_id, "key": plan.key, "item_id": item.key, "protocol": plan.protocol.name,
        "variant": plan.variant, "params": plan.params.model_dump(mode="json"),
        "assignment": plan.assignment.for_item(item), "dispositions": plan.dispositions,
        "misaligned": plan.misaligned, "roles": plan.roles,
        "models": {a: models[a].config.public() for a in set(plan.roles.values())},
        "seed": plan.seed,
    }, existing)
    ep = Episode(item=item, protocol=plan.protocol, params=plan.params,
                 models={r: models[a] for r, a in plan.roles.items()},
                 assignment=dict(plan.assignment.answers), dispositions=plan.dispositions,
                 prompts=prompts, recorder=StoreRecorder(store, ep_id, progress, summary))
    t0 = time.perf_counter()

    def totals() -> dict:
        return {"duration_s": time.perf_counter() - t0, "n_calls": ep.n_calls,
                "tokens_in": ep.tokens_in, "tokens_out": ep.tokens_out}

    try:
        verdict = await plan.protocol.fn(ep, **plan.params.model_dump())
        if not isinstance(verdict, Verdict):
            raise TypeError(f"protocol {plan.protocol.name} returned {type(verdict).__name__}, "
                            "expected a Verdict")
    except asyncio.CancelledError:
        store.finish_episode(ep_id, None, totals(), status="interrupted", error="interrupted")
        raise
    except Exception as exc:  # recorded, never a default verdict
        store.finish_episode(ep_id, None, totals(), status="failed", error=f"{type(exc).__name__}: {exc}")
        return "failed"
    store.finish_episode(ep_id, verdict.as_row(plan.protocol.judge, item.answer_index), totals())
    return "done"


def _item_row(item) -> dict:
    return {"id": item.key, "dataset": item.dataset, "question": item.question,
            "choices": list(item.choices), "answer_index": item.answer_index,
            "context": item.context, "source": item.source, "license": item.license,
            "meta": item.meta}
