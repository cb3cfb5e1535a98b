"""Metrics from result rows (Store.results()): plain dicts in, numbers out.

Knows nothing of protocols beyond the columns. A row's answer is the deciding role's last
answer decision in a finished episode. An unparsed answer is counted and excluded, never
scored; so is one with no gold to compare with: a group with nothing scored has no accuracy
(None), not 0.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

# Cap on resampled values held in memory at once; resamples are drawn in chunks beyond it.
_CHUNK_VALUES = 2_000_000


@dataclass(frozen=True)
class Estimate:
    """A proportion with its 95% interval; mean/lo/hi are None when nothing was scored."""

    mean: float | None
    lo: float | None
    hi: float | None
    n: int  # scored (parsed) verdicts
    unparsed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def bootstrap_ci(values: Sequence[float], stat: Callable = np.mean, n_resamples: int = 10_000,
                 seed: int = 0, level: float = 0.95) -> tuple[float | None, float | None]:
    """Percentile bootstrap CI of `stat` over `values`. Seeded, so reports are reproducible.

    `stat` must accept an `axis` keyword (numpy reductions do); (None, None) for no values.
    """
    x = np.asarray(values, dtype=float)
    n = x.size
    if n == 0:
        return None, None
    rng = np.random.default_rng(seed)
    if stat is np.mean and np.isin(x, (0.0, 1.0)).all():
        # 0/1 outcomes (accuracy): the mean of n draws with replacement is Binomial(n, p)/n,
        # the same distribution in O(resamples) instead of O(resamples * n).
        means = rng.binomial(n, x.mean(), size=n_resamples) / n
        alpha = (1.0 - level) / 2.0
        lo, hi = np.percentile(means, [100 * alpha, 100 * (1 - alpha)])
        return float(lo), float(hi)
    chunk = max(1, min(n_resamples, _CHUNK_VALUES // n))
    stats = []
    for start in range(0, n_resamples, chunk):
        idx = rng.integers(0, n, size=(min(chunk, n_resamples - start), n))
        stats.append(np.asarray(stat(x[idx], axis=1), dtype=float))
    alpha = (1.0 - level) / 2.0
    lo, hi = np.percentile(np.concatenate(stats), [100 * alpha, 100 * (1 - alpha)])
    return float(lo), float(hi)


def _answered(row: dict) -> bool:
    """A finished episode whose deciding role gave an answer (parsed or not)."""
    return row.get("status", "done") == "done" and row.get("parsed") is not None


def accuracy(rows: Iterable[dict], level: float = 0.95) -> Estimate:
    """`intervals.accuracy_interval` as an Estimate: the fraction of parsed answers with a
    gold that are correct, over finished episodes; unparsed answers are counted (`unparsed`)
    and excluded, answers with no gold are excluded; the interval is over documents and never
    zero width at 0% or 100%."""
    from .intervals import accuracy_interval  # (intervals reads this module's constants)
    est = accuracy_interval(rows, level=level)
    return Estimate(est.mean, est.lo, est.hi, est.n, est.unparsed)


def assignment_label(assignment: dict | None) -> str | None:
    """A readable label for an assignment (role -> {answer, correct}); None without advocates.

    One advocate: "<role> correct|incorrect"; several: which of them argued the right answer.
    """
    if not assignment:
        return None
    right = sorted(r for r, a in assignment.items() if a.get("correct"))
    if len(assignment) == 1:
        (role,) = assignment
        return f"{role} {'correct' if right else 'incorrect'}"
    return f"{'+'.join(right)} correct" if right else "none correct"


def _group(rows: Iterable[dict], key: Callable[[dict], Any]) -> dict[Any, list[dict]]:
    groups: dict[Any, list[dict]] = {}  # insertion order = order of first appearance
    for r in rows:
        groups.setdefault(key(r), []).append(r)
    return groups


def by_label(rows: Iterable[dict], level: float = 0.95) -> list[dict]:
    """Accuracy per assignment label (e.g. consultant correct vs incorrect)."""
    groups = _group(rows, lambda r: assignment_label(r.get("assignment")))
    return [{"label": label, **_counts(g), **_acc_fields(accuracy(g, level))}
            for label, g in sorted(groups.items(), key=lambda kv: kv[0] or "") if label is not None]


def _counts(rows: list[dict]) -> dict[str, Any]:
    status: dict[str, int] = {}
    for r in rows:
        status[r["status"]] = status.get(r["status"], 0) + 1
    return {"episodes": len(rows), "done": status.get("done", 0),
            "failed": status.get("failed", 0), "status": status}


def _acc_fields(est: Estimate) -> dict[str, Any]:
    return {"accuracy": est.mean, "lo": est.lo, "hi": est.hi, "parsed": est.n,
            "unparsed": est.unparsed}


def summarise(rows: Iterable[dict], level: float = 0.95) -> list[dict]:
    """One dict per (run, variant): episode counts, verdicts, accuracy with CI, tokens, and
    accuracy per assignment label."""
    out = []
    for (run_id, variant), g in _group(rows, lambda r: (r["run_id"], r.get("variant") or r["protocol"])).items():
        ran = [r for r in g if r["status"] != "pending"]  # pending ones have spent nothing yet
        tin = sum(r.get("tokens_in") or 0 for r in g)
        tout = sum(r.get("tokens_out") or 0 for r in g)
        labels = by_label(g, level)
        # None unless every episode that ran has a known price: never a silent underestimate
        costs = [r.get("cost_usd") for r in ran]
        cost = sum(costs) if ran and None not in costs else None
        n_correct = sum(1 for r in g if r.get("correct") and _answered(r))
        out.append({
            "run_id": run_id, "variant": variant, "protocol": g[0]["protocol"],
            **_counts(g), **_acc_fields(accuracy(g, level)),
            "tokens_in": tin, "tokens_out": tout,
            "tokens_in_mean": tin / len(ran) if ran else None,
            "tokens_out_mean": tout / len(ran) if ran else None,
            "cost_usd": cost,
            "cost_per_correct": cost / n_correct if cost is not None and n_correct else None,
            "episode_ids": [r["id"] for r in g],
            "by_label": labels if len(labels) > 1 else [],
        })
    return out
