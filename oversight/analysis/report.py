"""The report of one or more runs as one typed model: what `oversight report` prints and what
`oversight report --json` writes, so the terminal and scripts read the same figures.

`build_report(store, run_ids)` reads the store; `report_from_rows` does the same from rows
(`Store.run`, `Store.results`, `Store.decisions`). Sections, each per (run, variant):
accuracy (intervals over documents; per assignment and treatment label), calibration of the
final answers' probabilities, position bias, debaters (win rates and Bradley–Terry ratings,
per run), judges (a re-judging next to the run it judged again: accuracy, agreement, flips),
detection per detector × truth (flagging.py), tokens and cost, and the settings used.

JSON: `Report.to_json()` is strict JSON. A figure that does not exist (no data, 0/0) is null,
never 0; a non-finite float (the −∞ threshold of an audit budget ≥ 1) is null too, and that
budget says `audits_all: true`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any

import numpy as np

from ..tuning import InChild, paused_gc
from .base import Columns, factorize, group_rows, identity_codes
from .base import Frozen as _Model
from .calibration import Calibration, _calibration
from .flagging import (
    DEFAULT_BUDGETS,
    DETECTOR_KINDS,
    LEVEL,
    TRUTHS,
    Detection,
    _detection,
    check_budgets,
    decision_columns,
)
from .flagging import RESULT_KEYS as FLAGGING_RESULT_KEYS
from .intervals import (
    Accuracy,
    Agreement,
    PairedDifference,
    _accuracy,
    accuracy_interval,
    agreement,
    paired_difference,
)
from .metrics import assignment_label
from .position import PositionBias, _item_codes, _position_bias
from .ratings import BradleyTerry, WinRate, _play, bradley_terry, win_rates

# bumped when a key changes meaning or goes away (2: intervals over documents, Wilson at the
# effective size, instead of a percentile bootstrap over episodes; new sections)
FORMAT = "oversight.report/2"


class RunInfo(_Model):
    """A run as stored (see `oversight runs`); `rejudges` names the run a re-judging judged
    again (None for a run of protocols)."""

    id: str
    rejudges: str | None = None
    name: str
    status: str
    spec_path: str | None
    created_at: str
    updated_at: str
    package_version: str


class GroupAccuracy(_Model):
    """Accuracy of one group of a variant's episodes (an assignment or treatment label):
    parsed correct final answers / parsed final answers with a gold, over finished episodes;
    unparsed ones and ones without gold are counted and excluded; None (not 0) when nothing
    was scored. lo–hi: `intervals.accuracy_interval` (Wilson at the effective size, clusters
    = documents, else items)."""

    label: str
    episodes: int
    done: int
    failed: int
    parsed: int  # scored: parsed answers with a gold
    unparsed: int
    no_gold: int = 0
    accuracy: float | None
    lo: float | None
    hi: float | None
    clusters: int = 0  # documents (else items) among the scored episodes
    design_effect: float | None = None
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
    no_gold: int = 0
    accuracy: float | None
    lo: float | None
    hi: float | None
    clusters: int = 0
    design_effect: float | None = None
    episode_ids: list[int]
    by_assignment: list[GroupAccuracy]
    by_treatment: list[GroupAccuracy]


class VariantCalibration(_Model):
    """Calibration of one (run, variant)'s final answers (`calibration.calibration`, ten
    bins, confidence = the probability given to the chosen answer); listed only when some
    final answer has probabilities."""

    run_id: str
    variant: str
    calibration: Calibration


class VariantPosition(_Model):
    """Position bias of one (run, variant)'s final answers (`position.position_bias`);
    listed only for variants whose answers name choices."""

    run_id: str
    variant: str
    position: PositionBias


class Debaters(_Model):
    """Who persuades the judge, over one run's two-advocate episodes (all its variants):
    win rates and Bradley–Terry ratings of the advocates' models (`ratings`)."""

    run_id: str
    matches: int
    excluded: dict[str, int]  # episodes that made no match, by reason
    win_rates: list[WinRate]
    bradley_terry: BradleyTerry | None  # None with fewer than two rated models


class JudgeComparison(_Model):
    """A re-judging next to the run it judged again, per variant: each judge's accuracy on
    its own episodes, their agreement on the same episodes (flip rate = 1 − agreement), and
    the paired accuracy difference (rejudged − original) on shared items."""

    run_id: str  # the re-judging
    source_run_id: str
    variant: str
    original: Accuracy
    rejudged: Accuracy
    agreement: Agreement
    difference: PairedDifference


class Usage(_Model):
    """Tokens and cost of one (run, variant); means over the episodes that ran (not pending);
    cost None unless every episode that ran has a known price (never an underestimate);
    cost_per_correct = cost / correct final answers (None with none); tokens_per_correct
    likewise."""

    run_id: str
    variant: str
    tokens_in: int
    tokens_out: int
    tokens_in_mean: float | None
    tokens_out_mean: float | None
    cost_usd: float | None
    cost_per_correct: float | None
    cost_per_episode: float | None = None
    tokens_per_correct: float | None = None


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
    where: dict[str, Any] = {}  # only episodes whose params matched these
    nonfinite: str = "null"  # how non-finite floats are written in JSON


class Report(_Model):
    """The whole report. `detection` is empty when no run has flag or score decisions;
    `usage` and `accuracy` have one entry per (run, variant), in order of first episode."""

    format: str = FORMAT
    runs: list[RunInfo]
    accuracy: list[VariantAccuracy]
    calibration: list[VariantCalibration] = []
    position: list[VariantPosition] = []
    debaters: list[Debaters] = []
    judges: list[JudgeComparison] = []
    usage: list[Usage]
    detection: list[Detection]
    settings: Settings

    def to_json(self, indent: int | None = 2) -> str:
        """Strict JSON (no NaN or Infinity: non-finite floats are null)."""
        return self.model_dump_json(indent=indent)


def _status(g: Columns) -> dict[str, int]:
    """Episodes by status, in order of first appearance."""
    return g.counts("status")


def _accuracy_fields(g: Columns) -> dict[str, Any]:
    status, est = _status(g), _accuracy(g, LEVEL)
    return {"episodes": len(g), "done": status.get("done", 0), "failed": status.get("failed", 0),
            "parsed": est.n, "unparsed": est.unparsed, "no_gold": est.no_gold,
            "accuracy": est.mean, "lo": est.lo, "hi": est.hi, "clusters": est.clusters,
            "design_effect": est.design_effect, "episode_ids": g["id"].tolist()}


def _groups(g: Columns, keys: Sequence[Any]) -> list[GroupAccuracy]:
    """Accuracy per non-None key (one per row; str(key) is the label), sorted by label;
    empty unless there are at least two groups."""
    labels = [None if k is None else str(k) for k in keys]
    codes, n = factorize(labels)
    groups = {label: at for label, at in zip(dict.fromkeys(labels), group_rows(codes, n),
                                              strict=True) if label is not None}
    if len(groups) < 2:
        return []
    return [GroupAccuracy(label=label, **_accuracy_fields(g.take(groups[label])))
            for label in sorted(groups)]


def _assignment_labels(g: Columns) -> list[str | None]:
    """`assignment_label` of each row, worked out once per assignment object."""
    codes, objects = identity_codes(g["assignment"].tolist())
    labels = [assignment_label(a) for a in objects]
    return [labels[c] for c in codes.tolist()]


def _usage(run_id: str, variant: str, g: Columns) -> Usage:
    ran = ~g.equals("status", "pending")  # pending ones have spent nothing yet
    n_ran = int(np.count_nonzero(ran))
    tin = sum(filter(None, g["tokens_in"].tolist()))  # = Σ (x or 0): a false x adds nothing
    tout = sum(filter(None, g["tokens_out"].tolist()))
    costs = g["cost_usd"][ran].tolist()
    cost = sum(costs) if n_ran and None not in costs else None
    n_correct = int(np.count_nonzero(g.equals("status", "done") & g.truthy("parsed")
                                     & g.truthy("correct")))
    return Usage(run_id=run_id, variant=variant, tokens_in=tin, tokens_out=tout,
                 tokens_in_mean=tin / n_ran if n_ran else None,
                 tokens_out_mean=tout / n_ran if n_ran else None, cost_usd=cost,
                 cost_per_correct=cost / n_correct if cost is not None and n_correct else None,
                 cost_per_episode=cost / n_ran if cost is not None and n_ran else None,
                 tokens_per_correct=(tin + tout) / n_correct if n_correct else None)


def _has_probabilities(g: Columns) -> bool:
    return bool((g.equals("status", "done") & g.truthy("probabilities")).any())


def _names_choices(g: Columns) -> bool:
    return bool((g.equals("status", "done") & ~g.is_none("chosen")).any())


def _debaters(run_id: str, g: Columns, n_resamples: int, seed: int) -> Debaters | None:
    counts, _, played = _play(g)
    if not played:
        return None
    excluded = {k: v for k, v in counts.items() if v}
    models = {x.winner for x in played} | {x.loser for x in played}
    bt = (bradley_terry(played, n_resamples=min(n_resamples, 1000), seed=seed, level=LEVEL)
          if len(models) >= 2 else None)
    return Debaters(run_id=run_id, matches=len(played), excluded=excluded,
                    win_rates=win_rates(played, level=LEVEL), bradley_terry=bt)


def _judges(cols: Columns, sources: dict[str, list[dict]], n_resamples: int,
            seed: int) -> list[JudgeComparison]:
    """Each re-judging's variants next to the episodes they judged again."""
    out = []
    by_id = {r["id"]: r for src in sources.values() for r in src}
    if not by_id:
        return out
    keys = [k for k in RESULT_KEYS if k in cols]
    at = [i for i, src in enumerate(cols["source_episode_id"]) if by_id.get(src) is not None]
    rows = [dict(zip(keys, values, strict=True))  # only the rows that judged a source again
            for values in zip(*(cols[k][at] for k in keys), strict=True)]
    per: dict[tuple[str, str, str], list[dict]] = {}
    for r in rows:
        src = by_id.get(r.get("source_episode_id"))
        if src is not None:
            key = (r["run_id"], src["run_id"], r.get("variant") or r["protocol"])
            per.setdefault(key, []).append(r)
    for (run_id, source_id, variant), new in per.items():
        old = [by_id[r["source_episode_id"]] for r in new]
        out.append(JudgeComparison(
            run_id=run_id, source_run_id=source_id, variant=variant,
            original=accuracy_interval(old, level=LEVEL),
            rejudged=accuracy_interval(new, level=LEVEL),
            agreement=agreement(old, [_as_episode(r) for r in new], key="id"),
            difference=paired_difference(new, old, n_resamples=n_resamples, seed=seed,
                                         level=LEVEL)))
    return out


def _as_episode(row: dict) -> dict:
    """A re-judging's rows are paired with their sources by the source's episode id."""
    return {**row, "id": row["source_episode_id"]}


def matches_where(row: dict, where: dict[str, Any] | None) -> bool:
    """Whether an episode's params hold every PARAM=VALUE of `where`."""
    return _holds(row.get("params"), where)


def _holds(params: dict | None, where: dict[str, Any] | None) -> bool:
    params = params or {}
    return all(k in params and params[k] == v for k, v in (where or {}).items())


def report_from_rows(runs: Iterable[dict], results: Iterable[dict], decisions: Iterable[dict], *,
                     budgets: Sequence[float] = DEFAULT_BUDGETS, seed: int = 0,
                     n_resamples: int = 10_000, n_tasks: int | None = None,
                     attack_rate: float | None = None, where: dict[str, Any] | None = None,
                     sources: dict[str, list[dict]] | None = None) -> Report:
    """The report of `runs` (Store.run rows) from their `Store.results()` and
    `Store.decisions()` rows (only episodes whose params hold `where`); `sources`: the result
    rows of the runs re-judgings judged again, by run id. Detection as
    `flagging.detection_results` at the audit `budgets` (default 1%, 5%, 10%)."""
    budgets = check_budgets(budgets)
    results = [r for r in results if matches_where(r, where)]
    if where:
        kept = {r["id"] for r in results}
        decisions = [d for d in decisions if d["episode_id"] in kept]
    return _report(runs, Columns.of(results, RESULT_KEYS), decision_columns(decisions),
                   budgets=budgets, seed=seed, n_resamples=n_resamples, n_tasks=n_tasks,
                   attack_rate=attack_rate, where=where, sources=sources)


# what the report reads of `Store.results()` rows (and of `Store.decisions()` rows: detection's)
RESULT_KEYS = ("id", "run_id", "protocol", "variant", "item_id", "assignment", "intent",
               "target", "probabilities", "status", "tokens_in", "tokens_out", "cost_usd",
               "outcome", "treatment", "source_episode_id", "document", "parsed", "chosen",
               "correct", "role_models")


def _report(runs: Iterable[dict], cols: Columns, decisions: Columns | None, *,
            budgets: Sequence[float] = DEFAULT_BUDGETS, seed: int = 0,
            n_resamples: int = 10_000, n_tasks: int | None = None,
            attack_rate: float | None = None, where: dict[str, Any] | None = None,
            sources: dict[str, list[dict]] | None = None,
            detection: Callable[[], list[Detection]] | None = None) -> Report:
    """`report_from_rows` on columns: the rows already filtered by `where`; the detection
    section is computed from `decisions` unless a `detection()` gives it (asked for last, so
    that a child process computing it has the most time)."""
    budgets = check_budgets(budgets)
    for derive in (cols.state, cols.answered, cols.clusters, cols.cluster_keys,
                   lambda: cols.codes("status"), lambda: _item_codes(cols)):
        derive()  # once for all rows, before the groups take their share
    acc, usage, cal, pos = [], [], [], []
    for (run_id, variant), at in cols.groups().items():
        g = cols.take(at)
        acc.append(VariantAccuracy(
            run_id=run_id, variant=variant, protocol=g["protocol"][0], status=_status(g),
            **_accuracy_fields(g), by_assignment=_groups(g, _assignment_labels(g)),
            by_treatment=_groups(g, g["treatment"].tolist())))
        usage.append(_usage(run_id, variant, g))
        if _has_probabilities(g):
            cal.append(VariantCalibration(run_id=run_id, variant=variant,
                                          calibration=_calibration(g, 10, "chosen", 10)))
        if _names_choices(g):
            pos.append(VariantPosition(run_id=run_id, variant=variant,
                                       position=_position_bias(g, LEVEL)))
    debaters = [d for run_id, at in cols.groups(by_run=True).items()
                if (d := _debaters(run_id, cols.take(at), n_resamples, seed)) is not None]
    judges = _judges(cols, sources or {}, n_resamples, seed)
    infos = [RunInfo(id=r["id"], name=r["name"], status=r["status"], spec_path=r.get("spec_path"),
                     created_at=r["created_at"], updated_at=r["updated_at"],
                     package_version=r["package_version"], rejudges=rejudged_run(r))
             for r in runs]
    det = detection() if detection is not None else _detection(
        cols, decisions, budgets, seed=seed, n_resamples=n_resamples, n_tasks=n_tasks,
        attack_rate=attack_rate)
    return Report(runs=infos, accuracy=acc, calibration=cal, position=pos, debaters=debaters,
                  judges=judges, usage=usage, detection=det, settings=Settings(
        level=LEVEL, ci="accuracy: Wilson at the effective size over documents (else items); "
        "differences: paired cluster bootstrap; AUROC: percentile bootstrap over items",
        n_resamples=n_resamples, seed=seed, budgets=list(budgets), truths=list(TRUTHS),
        n_tasks=n_tasks, attack_rate=attack_rate, where=dict(where or {})))


def rejudged_run(run: dict) -> str | None:
    """The run a re-judging judged again (from its spec: data = ["run:<id>:<role>"])."""
    data = ((run.get("spec") or {}).get("data") or {}).get("datasets") or []
    ref = data[0] if data and isinstance(data[0], str) else ""
    return ref.split(":")[1] if ref.startswith("run:") and ref.count(":") >= 2 else None


def build_report(store, run_ids: Sequence[str], *, child: bool = True,
                 **options: Any) -> Report:
    """The report of the given runs of `store` (see `report_from_rows` for the options).

    Reads the store as columns (`Store.result_columns`, `Store.decision_columns`): only what
    the report reads, no dict per episode; the figures are `report_from_rows`'s. Over a large
    run (`CHILD_FROM` episodes), unless `child` is false, the detection section is computed
    in a forked child process with its own connection while this one reads and computes the
    rest (`tuning.InChild`; the same figures)."""
    run_ids = list(run_ids)
    check_budgets(options.get("budgets", DEFAULT_BUDGETS))  # refused before the store is read
    with paused_gc(freeze=False):  # many objects, no cycles: collections only cost here
        runs = [store.run(r) for r in run_ids]
        sources = {}
        for run in runs:
            if (src := rejudged_run(run)) is not None and src not in sources:
                sources[src] = store.results([src])
        where = options.get("where")
        job = None
        if (child and store.reopenable and InChild.possible()
                and store.episode_count(run_ids) >= CHILD_FROM):
            job = InChild(partial(_detection_of, store, run_ids, options, reopen=True),
                          here=partial(_detection_of, store, run_ids, options))
        try:
            keys = RESULT_KEYS if job is None else _NOT_DETECTION_KEYS
            results, decisions = _read(store, run_ids, keys, where, decisions=job is None)
            return _report(runs, results, decisions, sources=sources,
                           detection=None if job is None else job.result, **options)
        finally:
            if job is not None:
                job.cancel()


# over this many episodes `build_report` computes detection in a child process
CHILD_FROM = 20_000
# the report's result keys that only detection reads
_NOT_DETECTION_KEYS = tuple(k for k in RESULT_KEYS if k not in ("intent", "outcome"))


def _detection_of(parent, run_ids: list[str], options: dict[str, Any],
                  reopen: bool = False) -> list[Detection]:
    """The detection section of `build_report`; with `reopen`, read through a connection of
    its own (a forked child must not use its parent's)."""
    store = parent.reopen() if reopen else parent
    try:
        results, decisions = _read(store, run_ids, FLAGGING_RESULT_KEYS, options.get("where"))
        return _detection(results, decisions, options.get("budgets", DEFAULT_BUDGETS),
                          **{k: options[k] for k in ("seed", "n_resamples", "n_tasks",
                                                     "attack_rate") if k in options})
    finally:
        if reopen:
            store.close()


def _read(store, run_ids: list[str], keys: tuple[str, ...], where: dict[str, Any] | None,
          decisions: bool = True) -> tuple[Columns, Columns | None]:
    """The result columns `keys` of the runs and (`decisions`) the decision columns detection
    reads, of the episodes whose params hold `where`."""
    got = store.result_columns(run_ids, keys + (("params",) if where else ()))
    results = Columns(got, len(got["id"]))
    dec = None
    if decisions:
        # detection reads flags and scores (answers come with the results), and of a
        # decision's episode its run, variant and status: those of its result row
        episode = ("run_id", "variant", "protocol", "status")
        dec = store.decision_columns(run_ids, DETECTOR_KINDS, store.DETECTION_KEYS)
        position = dict(zip(got["id"], range(len(results)), strict=True))
        at = [position.get(e, -1) for e in dec["episode_id"]]
        if -1 in at:  # a decision of an episode without a result row (its item is missing)
            dec = store.decision_columns(run_ids, DETECTOR_KINDS,
                                         store.DETECTION_KEYS + episode)
        else:
            at_ = np.asarray(at, dtype=np.intp)
            dec |= {k: results[k][at_] for k in episode}
        dec = Columns(dec, len(dec["episode_id"]))
    if where:
        keep = np.fromiter((_holds(p, where) for p in results["params"]), dtype=bool,
                           count=len(results))
        kept = set(results["id"][keep].tolist())
        results = results.take(np.flatnonzero(keep))
        if dec is not None:
            dec = dec.take(np.flatnonzero(np.fromiter(
                (e in kept for e in dec["episode_id"]), dtype=bool, count=len(dec))))
    return results, dec


__all__ = ["FORMAT", "Debaters", "GroupAccuracy", "JudgeComparison", "Report", "RunInfo",
           "Settings", "Usage", "VariantAccuracy", "VariantCalibration", "VariantPosition",
           "build_report", "matches_where", "report_from_rows"]
