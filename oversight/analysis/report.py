"""The report of one or more runs as one typed model: what `oversight report` prints and what
`oversight report --json` writes, so the terminal and scripts read the same figures.

`build_report(store, run_ids)` reads the store; `report_from_rows` does the same from rows
(`Store.run`, `Store.results`, `Store.decisions`). Sections: the runs, accuracy per variant
(and per assignment label and per treatment label), tokens and cost per variant, detection
per variant × detector × truth (flagging.py), and the settings every figure was computed with.

JSON: `Report.to_json()` is strict JSON. A figure that does not exist (no data, 0/0) is null,
never 0; a non-finite float (the −∞ threshold of an audit budget ≥ 1) is null too, and that
budget says `audits_all: true`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict

from .flagging import DEFAULT_BUDGETS, LEVEL, TRUTHS, Detection, check_budgets, detection_results
from .metrics import _counts, accuracy, assignment_label, summarise

FORMAT = "oversight.report/1"  # bumped when a key changes meaning or goes away


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, ser_json_inf_nan="null")


class RunInfo(_Model):
    """A run as stored (see `oversight runs`)."""

    id: str
    name: str
    status: str
    spec_path: str | None
    created_at: str
    updated_at: str
    package_version: str


class GroupAccuracy(_Model):
    """Accuracy of one group of a variant's episodes (an assignment or treatment label):
    parsed correct final answers / parsed final answers with a gold, over finished episodes;
    unparsed ones are counted and excluded; None (not 0) when nothing was scored."""

    label: str
    episodes: int
    done: int
    failed: int
    parsed: int  # scored: parsed answers with a gold
    unparsed: int
    accuracy: float | None
    lo: float | None  # bootstrap CI (settings.level)
    hi: float | None
    episode_ids: list[int]


class VariantAccuracy(_Model):
    """Accuracy of the deciding role's final answers of one (run, variant), as `GroupAccuracy`,
    with the episodes by status, and split by assignment label (which advocate argued the
    correct answer) and by treatment label; each split is empty unless it has two groups."""

    run_id: str
    variant: str
    protocol: str
    episodes: int
    done: int
    failed: int
    status: dict[str, int]
    parsed: int
    unparsed: int
    accuracy: float | None
    lo: float | None
    hi: float | None
    episode_ids: list[int]
    by_assignment: list[GroupAccuracy]
    by_treatment: list[GroupAccuracy]


class Usage(_Model):
    """Tokens and cost of one (run, variant); means over the episodes that ran (not pending);
    cost None unless every episode that ran has a known price (never an underestimate);
    cost_per_correct = cost / correct final answers."""

    run_id: str
    variant: str
    tokens_in: int
    tokens_out: int
    tokens_in_mean: float | None
    tokens_out_mean: float | None
    cost_usd: float | None
    cost_per_correct: float | None


class Settings(_Model):
    """How the figures were computed."""

    level: float  # of every CI
    ci: str  # the CI method
    n_resamples: int
    seed: int  # of the bootstraps and of the tie-breaking at audit thresholds
    budgets: list[float]  # audit budgets, fractions of honest episodes audited
    truths: list[str]
    n_tasks: int | None  # deployment safety: tasks per deployment (None: not computed)
    attack_rate: float | None  # deployment safety: P(a task is attacked)
    nonfinite: str = "null"  # how non-finite floats are written in JSON


class Report(_Model):
    """The whole report. `detection` is empty when no run has flag or score decisions;
    `usage` and `accuracy` have one entry per (run, variant), in order of first episode."""

    format: str = FORMAT
    runs: list[RunInfo]
    accuracy: list[VariantAccuracy]
    usage: list[Usage]
    detection: list[Detection]
    settings: Settings

    def to_json(self, indent: int | None = 2) -> str:
        """Strict JSON (no NaN or Infinity: non-finite floats are null)."""
        return self.model_dump_json(indent=indent)


def _groups(rows: list[dict], key: Callable[[dict], Any], **bootstrap: Any) -> list[GroupAccuracy]:
    """Accuracy per non-None key, sorted by key; empty unless there are at least two groups."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        k = key(r)
        if k is not None:
            groups.setdefault(str(k), []).append(r)
    if len(groups) < 2:
        return []
    out = []
    for label, g in sorted(groups.items()):
        c, est = _counts(g), accuracy(g, **bootstrap)
        out.append(GroupAccuracy(label=label, episodes=c["episodes"], done=c["done"],
                                 failed=c["failed"], parsed=est.n, unparsed=est.unparsed,
                                 accuracy=est.mean, lo=est.lo, hi=est.hi,
                                 episode_ids=[r["id"] for r in g]))
    return out


def report_from_rows(runs: Iterable[dict], results: Iterable[dict], decisions: Iterable[dict], *,
                     budgets: Sequence[float] = DEFAULT_BUDGETS, seed: int = 0,
                     n_resamples: int = 10_000, n_tasks: int | None = None,
                     attack_rate: float | None = None) -> Report:
    """The report of `runs` (Store.run rows) from their `Store.results()` and
    `Store.decisions()` rows: accuracy and usage as `summarise`, detection as
    `flagging.detection` at the audit `budgets` (default 1%, 5%, 10%)."""
    budgets = check_budgets(budgets)
    results = list(results)
    boot = dict(seed=seed, n_resamples=n_resamples)
    per_variant: dict[tuple[str, str], list[dict]] = {}
    for r in results:
        per_variant.setdefault((r["run_id"], r.get("variant") or r["protocol"]), []).append(r)
    acc, usage = [], []
    for s in summarise(results, **boot):
        rows = per_variant[(s["run_id"], s["variant"])]
        acc.append(VariantAccuracy(
            run_id=s["run_id"], variant=s["variant"], protocol=s["protocol"],
            episodes=s["episodes"], done=s["done"], failed=s["failed"], status=s["status"],
            parsed=s["parsed"], unparsed=s["unparsed"], accuracy=s["accuracy"], lo=s["lo"],
            hi=s["hi"], episode_ids=s["episode_ids"],
            by_assignment=_groups(rows, lambda r: assignment_label(r.get("assignment")), **boot),
            by_treatment=_groups(rows, lambda r: r.get("treatment"), **boot)))
        usage.append(Usage(run_id=s["run_id"], variant=s["variant"], tokens_in=s["tokens_in"],
                           tokens_out=s["tokens_out"], tokens_in_mean=s["tokens_in_mean"],
                           tokens_out_mean=s["tokens_out_mean"], cost_usd=s["cost_usd"],
                           cost_per_correct=s["cost_per_correct"]))
    det = detection_results(results, decisions, budgets, seed=seed, n_resamples=n_resamples,
                    n_tasks=n_tasks, attack_rate=attack_rate)
    infos = [RunInfo(id=r["id"], name=r["name"], status=r["status"], spec_path=r.get("spec_path"),
                     created_at=r["created_at"], updated_at=r["updated_at"],
                     package_version=r["package_version"]) for r in runs]
    return Report(runs=infos, accuracy=acc, usage=usage, detection=det, settings=Settings(
        level=LEVEL, ci="percentile bootstrap (AUROC: over items)", n_resamples=n_resamples,
        seed=seed, budgets=list(budgets), truths=list(TRUTHS), n_tasks=n_tasks,
        attack_rate=attack_rate))


def build_report(store, run_ids: Sequence[str], **options: Any) -> Report:
    """The report of the given runs of `store` (see `report_from_rows` for the options)."""
    run_ids = list(run_ids)
    return report_from_rows([store.run(r) for r in run_ids], store.results(run_ids),
                            store.decisions(run_ids), **options)


__all__ = ["FORMAT", "GroupAccuracy", "Report", "RunInfo", "Settings", "Usage", "VariantAccuracy",
           "build_report", "report_from_rows"]
