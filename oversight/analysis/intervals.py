"""Accuracy with an interval that respects clusters, paired differences on shared items, and
agreement between two sets of answers. Pure functions over result rows (base.py states the
row contract: what is scored, and the exclusion buckets that are counted, never scored).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from .base import EXCLUSIONS, Columns, Frozen, answered, cluster_key, factorize, from_clusters
from .metrics import _CHUNK_VALUES

Key = str | Callable[[dict], Any]


class Accuracy(Frozen):
    """Accuracy of a set of rows with its cluster-aware Wilson interval (`accuracy_interval`)."""

    mean: float | None  # correct / n; None when nothing is scored
    lo: float | None
    hi: float | None
    n: int  # scored rows
    unparsed: int  # excluded: parsed is False
    no_gold: int  # excluded: correct is None
    no_answer: int  # excluded: parsed is None (no answer decision)
    not_done: int  # excluded: status != "done"
    clusters: int  # G: documents (else items) among the scored rows
    design_effect: float | None  # deff; n_eff = n / deff
    n_eff: float | None
    level: float
    method: str = "wilson at n/deff, deff cluster-robust (document, else item)"


def accuracy_interval(rows: Iterable[dict], level: float = 0.95) -> Accuracy:
    """p̂ = correct / scored (base.py: done, parsed, with a gold); the rest is counted by bucket.

    Interval: Wilson score interval (`wilson`) at p̂ with the effective size n_eff = n/deff.
    deff = max(1, V_cluster / V_iid), V_cluster = G/(G−1)·Σ_g (S_g − p̂·n_g)² / n² over the
    G clusters (document, else item; S_g correct of n_g scored): the cluster-robust variance
    of p̂, the one a bootstrap resampling documents estimates; V_iid = p̂(1−p̂)/(n−1), the
    same estimator with every episode its own cluster, so one episode per item gives deff = 1
    exactly (p̂(1−p̂)/n would give n/(n−1) there). When V_cluster cannot be estimated
    (p̂ ∈ {0, 1}, or G = 1) the worst case is used, every episode of a cluster alike:
    deff = Σ_g n_g² / n (Kish; = n/G for equal clusters), n_eff = n² / Σ_g n_g². So the
    interval is never zero width at 0% or 100%: 3/3 on 3 different items → Wilson(3, 3) =
    [0.4385, 1.0]; 3/3 as 3 episodes of one item → n_eff = 1, Wilson at n = 1: [0.2065, 1.0].
    None for mean/lo/hi when nothing is scored. `base.proportion` is the same on columns.
    """
    return _accuracy(Columns.of(rows, ACCURACY_KEYS), level)


ACCURACY_KEYS = ("status", "parsed", "correct", "document", "item_id")  # what it reads


def _accuracy(cols: Columns, level: float) -> Accuracy:
    """`accuracy_interval` of the rows of `cols`."""
    state = cols.state()
    counts = {name: int(np.count_nonzero(state == code))
              for code, name in enumerate(EXCLUSIONS, start=1)}
    scored = state == 0
    codes, is_item = cols.clusters()
    n_g, s_g = cluster_sums(codes[scored], is_item[scored], cols.truthy("correct")[scored])
    return Accuracy(**from_clusters(n_g, s_g, level), **counts, level=level)


def cluster_sums(codes: np.ndarray, is_item: np.ndarray, y: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(n_g, s_g): rows and successes y per cluster, the documents first, then the items,
    each in order of first appearance (the order the sums of `from_clusters` run in)."""
    if not codes.size:
        return np.zeros(0), np.zeros(0)
    uniq, first, inverse = np.unique(codes, return_index=True, return_inverse=True)
    rank = np.empty(uniq.size, dtype=np.intp)
    rank[np.lexsort((first, is_item[first]))] = np.arange(uniq.size)
    g = rank[inverse.ravel()]
    return (np.bincount(g, minlength=uniq.size).astype(float),
            np.bincount(g, weights=y.astype(float), minlength=uniq.size))


def _keys(rows: list[dict], key: Key) -> list:
    return [r.get(key) for r in rows] if isinstance(key, str) else [key(r) for r in rows]


class _Items:
    """The scored rows of one side, per item (in order of first appearance)."""

    def __init__(self, rows: Iterable[dict], key: Key):
        rows = [r for r in rows if r.get("status") == "done" and r.get("parsed")
                and r.get("correct") is not None]
        keys = _keys(rows, key)
        codes, g = factorize(keys)
        self.index = {k: i for i, k in enumerate(dict.fromkeys(keys))}  # = the codes
        y = np.fromiter((bool(r["correct"]) for r in rows), float, len(rows))
        self.count = np.bincount(codes, minlength=g)
        self.mean = np.bincount(codes, weights=y, minlength=g) / np.maximum(self.count, 1)
        first = np.unique(codes, return_index=True)[1]
        self.cluster = [cluster_key(rows[j]) for j in first]


def mcnemar_exact(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value: min(1, 2·P(X ≤ min(b, c))), X ~ Binomial(b + c, ½)
    (= scipy.stats.binomtest(b, b + c, 0.5).pvalue); 1.0 without discordant pairs."""
    n, k = b + c, min(b, c)
    if n == 0:
        return 1.0
    j = np.arange(1, k + 1)  # log pmf(j) = log pmf(j−1) + log((n−j+1)/j), pmf(0) = 2^−n
    logpmf = np.concatenate([[-n * math.log(2)], -n * math.log(2) + np.cumsum(
        np.log(n - j + 1) - np.log(j))])
    top = logpmf.max()
    return min(1.0, 2 * math.exp(top) * float(np.exp(logpmf - top).sum()))


def sign_flip_test(d: np.ndarray, n_resamples: int = 10_000, seed: int = 0) -> tuple[float, str]:
    """Two-sided sign-flip permutation p-value of H0 "each difference is symmetric about 0",
    statistic |Σ d|: P(|Σ s_i·d_i| ≥ |Σ d_i|) over sign vectors s. Zeros cannot flip and are
    dropped; m non-zero differences: exact enumeration when m ≤ 20, else seeded Monte Carlo
    with (k + 1)/(R + 1). Returns (p, test name); 1.0 when every difference is 0."""
    d = np.asarray(d, dtype=float)
    d = d[d != 0]
    m = d.size
    if m <= 20:
        if m == 0:
            return 1.0, "sign-flip exact"
        obs, tol = abs(d.sum()), 1e-9 * np.abs(d).sum()
        total, hits, bits = 1 << (m - 1), 0, np.arange(m - 1)  # s and −s give the same |Σ|
        for start in range(0, total, 1 << 16):
            j = np.arange(start, min(total, start + (1 << 16)))
            sums = d[0] + (1 - 2 * ((j[:, None] >> bits) & 1)) @ d[1:]
            hits += int((np.abs(sums) >= obs - tol).sum())
        return hits / total, "sign-flip exact"
    rng = np.random.default_rng(seed)
    obs, tol = abs(d.sum()), 1e-9 * np.abs(d).sum()
    chunk, hits = max(1, _CHUNK_VALUES // m), 0
    for start in range(0, n_resamples, chunk):
        signs = 1 - 2 * rng.integers(0, 2, size=(min(chunk, n_resamples - start), m))
        hits += int((np.abs(signs @ d) >= obs - tol).sum())
    return (hits + 1) / (n_resamples + 1), "sign-flip monte carlo"


class PairedDifference(Frozen):
    """Accuracy of a minus accuracy of b on the items scored in both (`paired_difference`)."""

    difference: float | None  # None when no item is shared
    lo: float | None  # paired cluster bootstrap, percentile; None: < 2 clusters (or no resamples)
    hi: float | None
    p_value: float | None
    test: str | None  # "mcnemar exact", "sign-flip exact", "sign-flip monte carlo"
    shared: int  # items scored on both sides
    only_a: int  # items scored in a only (excluded)
    only_b: int
    accuracy_a: float | None  # on the shared items, item-weighted
    accuracy_b: float | None
    a_right_b_wrong: int | None  # discordant pairs, when McNemar applies
    a_wrong_b_right: int | None
    clusters: int
    n_resamples: int
    seed: int
    level: float


def paired_difference(rows_a: Iterable[dict], rows_b: Iterable[dict], *, key: Key = "item_id",
                      n_resamples: int = 10_000, seed: int = 0,
                      level: float = 0.95) -> PairedDifference:
    """difference = mean over the items scored on both sides of (a_i − b_i), a_i the mean
    correctness of item i's scored rows in a (items paired by `key`, default item_id).

    CI: paired cluster bootstrap: draw the clusters (documents, else items; side a's) of the
    shared items with replacement, all their shared items go in, the statistic is
    Σ w_g·D_g / Σ w_g·m_g (w_g times drawn, D_g the sum of differences, m_g the items of g);
    percentile interval; seeded. p-value: exact McNemar (`mcnemar_exact`) when every shared
    item has exactly one scored row per side, else the sign-flip test on the per-item
    differences (`sign_flip_test`). All None when no item is shared.
    """
    a, b = _Items(rows_a, key), _Items(rows_b, key)
    ia = np.array([i for k, i in a.index.items() if k in b.index], dtype=np.intp)
    ib = np.array([b.index[k] for k in a.index if k in b.index], dtype=np.intp)
    base = dict(shared=ia.size, only_a=len(a.index) - ia.size, only_b=len(b.index) - ia.size,
                n_resamples=n_resamples, seed=seed, level=level)
    if not ia.size:
        return PairedDifference(difference=None, lo=None, hi=None, p_value=None, test=None,
                                accuracy_a=None, accuracy_b=None, a_right_b_wrong=None,
                                a_wrong_b_right=None, clusters=0, **base)
    va, vb = a.mean[ia], b.mean[ib]
    d = va - vb
    codes, g = factorize([a.cluster[i] for i in ia])
    lo = hi = None
    if g > 1 and n_resamples > 0:
        d_g, m_g = np.bincount(codes, weights=d), np.bincount(codes).astype(float)
        rng, stats = np.random.default_rng(seed), []
        chunk = max(1, min(n_resamples, _CHUNK_VALUES // g))
        for start in range(0, n_resamples, chunk):
            m = min(chunk, n_resamples - start)
            draws = rng.integers(0, g, size=(m, g)) + g * np.arange(m)[:, None]
            w = np.bincount(draws.ravel(), minlength=m * g).reshape(m, g).astype(float)
            stats.append(w @ d_g / (w @ m_g))
        alpha = (1 - level) / 2
        lo, hi = (float(v) for v in np.percentile(np.concatenate(stats),
                                                  [100 * alpha, 100 * (1 - alpha)]))
    pairs = bool((a.count[ia] == 1).all() and (b.count[ib] == 1).all())
    b_, c_ = (int((d > 0).sum()), int((d < 0).sum())) if pairs else (None, None)
    p, test = ((mcnemar_exact(b_, c_), "mcnemar exact") if pairs
               else sign_flip_test(d, n_resamples, seed))
    return PairedDifference(difference=float(d.mean()), lo=lo, hi=hi, p_value=p, test=test,
                            accuracy_a=float(va.mean()), accuracy_b=float(vb.mean()),
                            a_right_b_wrong=b_, a_wrong_b_right=c_, clusters=g, **base)


class Agreement(Frozen):
    """How often two sets of answers pick the same choice on the same item (`agreement`)."""

    items: int  # items with exactly one parsed chosen answer on each side
    agree: int
    disagree: int
    rate: float | None  # agree / items; None without items
    flip_rate: float | None  # 1 − rate
    kappa: float | None  # Cohen's kappa; None without items or when p_e = 1
    only_a: int  # items answered in a only (excluded)
    only_b: int
    ambiguous: int  # items on both sides, several answers on one (excluded: which to pair?)


def agreement(rows_a: Iterable[dict], rows_b: Iterable[dict], *,
              key: Key = "item_id") -> Agreement:
    """Over the items (paired by `key`) with exactly one finished, parsed answer naming a
    choice on each side: rate = agreeing items / items, flip_rate = 1 − rate, and Cohen's
    kappa = (p_o − p_e) / (1 − p_e), p_o = rate, p_e = Σ_k p_a(k)·p_b(k) from each side's
    distribution of choices over those items (None when p_e = 1: both always pick one choice).
    Gold is not needed."""
    sides = []
    for rows in (rows_a, rows_b):
        rows = [r for r in rows if answered(r)]
        keys = _keys(rows, key)
        sides.append((Counter(keys), dict(zip(keys, (int(r["chosen"]) for r in rows),
                                              strict=True))))
    (na, a), (nb, b) = sides  # answers per item; the answer (the last, if several)
    both = [i for i in na if i in nb]
    ambiguous = sum(1 for i in both if na[i] > 1 or nb[i] > 1)
    pairs = [(a[i], b[i]) for i in both if na[i] == 1 == nb[i]]
    n = len(pairs)
    agree = sum(x == y for x, y in pairs)
    rate = agree / n if n else None
    kappa = None
    if n:
        pa, pb = Counter(x for x, _ in pairs), Counter(y for _, y in pairs)
        p_e = sum(c * pb[x] for x, c in pa.items()) / n**2
        kappa = (rate - p_e) / (1 - p_e) if p_e < 1 else None
    return Agreement(items=n, agree=agree, disagree=n - agree, rate=rate,
                     flip_rate=1 - rate if rate is not None else None, kappa=kappa,
                     only_a=len(na) - len(both), only_b=len(nb) - len(both), ambiguous=ambiguous)


__all__ = ["Accuracy", "Agreement", "PairedDifference", "accuracy_interval", "agreement",
           "mcnemar_exact", "paired_difference", "sign_flip_test"]
