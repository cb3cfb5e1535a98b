"""The base of every typed analysis result, the row contract the statistics share, and the
proportion with a cluster-aware Wilson interval they all report.

Rows are `Store.results()` dicts, one per episode. A row is *scored* when status == "done",
parsed is true and correct is not None; every other row falls in exactly one exclusion
bucket, checked in this order, so the buckets and `n` add up to the rows given:

- not_done:  status != "done" (pending, failed, …): not scored
- no_answer: parsed is None: the deciding role recorded no answer decision
- unparsed:  parsed is False: an answer that could not be parsed (never a default answer)
- no_gold:   correct is None: nothing to compare the answer with
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable, Sequence
from itertools import repeat
from numbers import Integral
from statistics import NormalDist
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

EXCLUSIONS = ("not_done", "no_answer", "unparsed", "no_gold")


class Frozen(BaseModel):
    """An immutable result; in JSON a non-finite float is null (strict JSON)."""

    model_config = ConfigDict(frozen=True, ser_json_inf_nan="null")


def row_state(row: dict) -> str:
    """"scored" or the name of the exclusion bucket the row falls in (see the module doc)."""
    if row.get("status") != "done":
        return "not_done"
    parsed = row.get("parsed")
    if parsed is None:
        return "no_answer"
    if not parsed:
        return "unparsed"
    return "no_gold" if row.get("correct") is None else "scored"


def answered(row: dict) -> bool:
    """A finished episode with a parsed answer that names a choice (gold not needed)."""
    return (row.get("status") == "done" and bool(row.get("parsed"))
            and choice_index(row.get("chosen")) is not None)


def cluster_key(row: dict) -> str:
    """The independent unit of a row: its document (items sharing one, e.g. a story, are not
    independent), else its item."""
    doc = row.get("document")
    return f"document:{doc}" if doc is not None else f"item:{row.get('item_id')}"


def choice_index(x: object) -> int | None:
    """x as a choice index (an integer >= 0, not a bool), else None."""
    if type(x) is int:  # the common case, without the slow ABC check below
        return x if x >= 0 else None
    if isinstance(x, bool) or not isinstance(x, Integral) or x < 0:
        return None
    return int(x)


def wilson(p: float, n: float, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion p over n trials (n may be an effective,
    non-integer size): (p + z²/2n ± z·√(p(1−p)/n + z²/4n²)) / (1 + z²/n), z the normal
    quantile of (1 + level)/2. Never zero width for n < ∞: Wilson(3/3) = [0.4385, 1]."""
    z2 = NormalDist().inv_cdf(0.5 + level / 2) ** 2
    den = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / den
    half = math.sqrt(z2) / den * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    lo = 0.0 if p == 0 else max(0.0, centre - half)
    return lo, 1.0 if p == 1 else min(1.0, centre + half)


def factorize(keys: Sequence) -> tuple[np.ndarray, int]:
    """Codes 0..G−1 in order of first appearance, and G."""
    first = dict.fromkeys(keys)  # the distinct keys, in order
    index = dict(zip(first, range(len(first)), strict=True))
    return np.fromiter(map(index.__getitem__, keys), dtype=np.intp, count=len(keys)), len(index)


def from_clusters(n_g: np.ndarray, s_g: np.ndarray, level: float) -> dict[str, Any]:
    """The figures of `proportion` from per-cluster sizes n_g and successes s_g (clusters
    with n_g = 0 must be left out)."""
    n, g = int(n_g.sum()), int(n_g.size)
    if n == 0:
        return dict(mean=None, lo=None, hi=None, n=0, clusters=0, design_effect=None,
                    n_eff=None)
    p = float(s_g.sum()) / n
    if 0 < p < 1 and g > 1:
        v_cluster = g / (g - 1) * float(((s_g - p * n_g) ** 2).sum()) / n**2
        deff = max(1.0, v_cluster / (p * (1 - p) / (n - 1)))  # n > 1: here g > 1
    else:  # no spread to estimate from: worst case, every episode of a cluster alike
        deff = float((n_g**2).sum()) / n
    lo, hi = wilson(p, n / deff, level)
    return dict(mean=p, lo=lo, hi=hi, n=n, clusters=g, design_effect=deff, n_eff=n / deff)


def proportion(y: Sequence[float], cluster: Sequence[int], level: float = 0.95) -> dict[str, Any]:
    """mean, lo, hi, n, clusters, design_effect, n_eff of 0/1 outcomes y with integer cluster
    codes, as `intervals.accuracy_interval` defines them: Wilson at n_eff = n/deff, deff the
    cluster-robust design effect (worst case Σn_g²/n when p̂ ∈ {0, 1} or one cluster); figures
    None when y is empty. The vectorised core, for callers that hold columns."""
    y, cluster = np.asarray(y, dtype=float), np.asarray(cluster, dtype=np.intp)
    if y.size == 0:
        return from_clusters(np.zeros(0), np.zeros(0), level)
    n_g = np.bincount(cluster).astype(float)
    s_g = np.bincount(cluster, weights=y)
    return from_clusters(n_g[n_g > 0], s_g[n_g > 0], level)


def first_codes(codes: np.ndarray) -> tuple[np.ndarray, int]:
    """Integer codes renumbered 0..G−1 in order of first appearance, and G: what `factorize`
    gives for the keys behind the codes (codes equal exactly when keys are)."""
    codes, first = _first_codes(codes)
    return codes, first.size


def _first_codes(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`first_codes`, with the position of each new code's first row."""
    codes = np.asarray(codes, dtype=np.intp)
    if codes.size == 0:
        return codes, np.zeros(0, dtype=np.intp)
    lo, hi = int(codes.min()), int(codes.max())
    if hi - lo <= 4 * codes.size:  # dense codes: first rows by a scatter, no sort of the rows
        first = np.full(hi - lo + 1, codes.size, dtype=np.intp)
        np.minimum.at(first, codes - lo, np.arange(codes.size, dtype=np.intp))
        present = np.flatnonzero(first < codes.size)
        order = np.argsort(first[present], kind="stable")
        rank = np.empty(hi - lo + 1, dtype=np.intp)
        rank[present[order]] = np.arange(present.size, dtype=np.intp)
        return rank[codes - lo], first[present[order]]
    uniq, first, inverse = np.unique(codes, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty(uniq.size, dtype=np.intp)
    rank[order] = np.arange(uniq.size)
    return rank[inverse.ravel()], first[order]


def factorize_many(*columns: Sequence) -> tuple[np.ndarray, int]:
    """`factorize` of the tuples of the columns' values, without building the tuples."""
    codes, g = factorize(columns[0])
    for column in columns[1:]:
        c, h = factorize(column)
        codes, g = first_codes(codes.astype(np.int64) * h + c)
    return codes, g


def group_rows(codes: np.ndarray, g: int) -> list[np.ndarray]:
    """The positions (ascending) of the rows of each code 0..g−1."""
    if not g:
        return []
    return np.split(np.argsort(codes, kind="stable"),
                    np.cumsum(np.bincount(codes, minlength=g))[:-1])


def identity_codes(values: Sequence) -> tuple[np.ndarray, list]:
    """A code per value, equal for the same object (not for equal ones), in order of first
    appearance, and the objects by code: per-value work done once per object (the parsed
    JSON of a store is shared between the rows that have the same text)."""
    codes, first = _first_codes(np.fromiter(map(id, values), dtype=np.int64,
                                            count=len(values)))
    return codes, [values[i] for i in first.tolist()]


HUGE = int(np.iinfo(np.intp).max)  # a choice index this large or larger: `Columns.choice`


def _choice_code(x: object) -> int:
    """choice_index(x), −1 for None; one beyond what an array holds is HUGE (the same to any
    test against a number of choices; see `Columns.choice`)."""
    c = choice_index(x)
    return -1 if c is None else min(c, HUGE)


class Columns:
    """Rows (`Store.results()` dicts) as columns, for statistics over many rows: key -> an
    object array aligned with the rows; a key the rows lack reads as None (as `row.get`).

    What the statistics derive per row (the row state, choice indices, clusters) is computed
    once, on first use, and shared by every statistic and every subset (`take`), so that a
    report over 100,000 episodes reads each row a few times in all rather than a few times
    per statistic and group. Each statistic's row function goes through the same columns
    code (`Columns.of(rows)`), so both give the same figures."""

    def __init__(self, data: dict[str, Sequence], n: int):
        self.n = n
        self._data = {k: v if isinstance(v, np.ndarray) else
                      np.fromiter(v, dtype=object, count=n) for k, v in data.items()}
        self._cache: dict[Any, Any] = {}
        self._whole: dict[Any, Any] = {}  # derived values that are not per row
        self._source: tuple[Columns, np.ndarray] | None = None  # (columns, rows) of a take

    @classmethod
    def of(cls, rows: Iterable[dict] | Columns, keys: Iterable[str]) -> Columns:
        """Columns of these rows' `keys` (rows that already are Columns pass as they are)."""
        if isinstance(rows, Columns):
            return rows
        rows = rows if isinstance(rows, list) else list(rows)
        return cls({k: [r.get(k) for r in rows] for k in keys}, len(rows))

    def __len__(self) -> int:
        return self.n

    def __contains__(self, key: str) -> bool:
        return key in self._data or (self._source is not None and key in self._source[0])

    def __getitem__(self, key: str) -> np.ndarray:
        """The object array of `key` (all None when the rows lack it)."""
        if key not in self._data:
            if self._source is not None and key in self._source[0]:
                cols, rows = self._source
                self._data[key] = cols[key][rows]
            else:
                self._data[key] = np.full(self.n, None, dtype=object)
        return self._data[key]

    def take(self, idx: np.ndarray) -> Columns:
        """The rows at positions `idx` (in that order), with what was derived from them so
        far (columns and derived values are sliced when first read)."""
        out = Columns({}, len(idx))
        out._source = (self, np.asarray(idx, dtype=np.intp))
        return out

    def derive(self, name: Any, compute: Callable[[], Any]) -> Any:
        """compute(), once: the cached value of `name`, per row (a take slices it from the
        columns it was taken from, if they have it)."""
        if name not in self._cache:
            cols = self._source[0] if self._source is not None else None
            while cols is not None and name not in cols._cache:  # computed further up?
                cols = cols._source[0] if cols._source is not None else None
            if cols is None:
                self._cache[name] = compute()
            else:
                value = self._source[0].derive(name, compute)  # sliced down the chain
                rows = self._source[1]
                self._cache[name] = (tuple(a[rows] for a in value) if isinstance(value, tuple)
                                     else value[rows])
        return self._cache[name]

    def groups(self, by_run: bool = False) -> dict[Any, np.ndarray]:
        """The positions of the rows (ascending) of each (run, variant), the variant else the
        protocol, or of each run (`by_run`), in order of first appearance."""
        def compute() -> dict[Any, np.ndarray]:
            runs = self["run_id"].tolist()
            columns = [runs]
            if not by_run:
                columns.append([v or p for v, p in zip(self["variant"].tolist(),
                                                       self["protocol"].tolist(), strict=True)])
            codes, g = factorize_many(*columns)
            first = np.unique(codes, return_index=True)[1].tolist()
            keys = [runs[i] if by_run else (runs[i], columns[1][i]) for i in first]
            return dict(zip(keys, group_rows(codes, g), strict=True))
        name = ("groups", by_run)
        if name not in self._whole:
            self._whole[name] = compute()
        return self._whole[name]

    def is_none(self, key: str) -> np.ndarray:
        """Where `key` is None (missing)."""
        return self.derive(("none", key), lambda: np.fromiter(
            map(operator.is_, self[key], repeat(None)), dtype=bool, count=self.n))

    def truthy(self, key: str) -> np.ndarray:
        """Where `key` is true (bool(value))."""
        return self.derive(("truthy", key), lambda: self[key].astype(bool))

    def equals(self, key: str, value: str) -> np.ndarray:
        """Where `key` == value (a string)."""
        return self.derive(("equals", key, value),
                           lambda: np.asarray(self[key] == value, dtype=bool))

    def choice(self, key: str) -> np.ndarray:
        """`choice_index` of `key`, −1 where it is none, HUGE where it does not fit an intp
        (then only comparisons with small numbers hold: callers that need the value itself
        check for HUGE)."""
        def compute() -> np.ndarray:
            values = self[key]
            if set(map(type, values)) <= {int, type(None)}:  # plain integers: in numpy
                try:
                    ints = np.where(self.is_none(key), -1, values).astype(np.intp)
                    return np.where(ints >= 0, ints, -1)
                except OverflowError:
                    pass
            return np.fromiter((_choice_code(v) for v in values), dtype=np.intp, count=self.n)
        return self.derive(("choice", key), compute)

    def codes(self, key: str) -> np.ndarray:
        """`factorize` of `key`: a code per row, equal for equal values; the values by code
        are `values(key)`."""
        def compute() -> np.ndarray:
            values = self[key].tolist()
            self._whole[("values", key)] = list(dict.fromkeys(values))
            return factorize(values)[0]
        return self.derive(("codes", key), compute)

    def values(self, key: str) -> list:
        """The distinct values of `key`, by `codes(key)`."""
        self.codes(key)
        cols = self  # the codes were worked out here, or on the nearest columns up that did
        while ("values", key) not in cols._whole:
            cols = cols._source[0]
        return cols._whole[("values", key)]

    def counts(self, key: str) -> dict[Any, int]:
        """Rows per value of `key`, the values in order of first appearance (a Counter's)."""
        codes = self.codes(key)
        values, first, n = np.unique(codes, return_index=True, return_counts=True)
        order = np.argsort(first, kind="stable")
        names = self.values(key)
        return {names[v]: c for v, c in zip(values[order].tolist(), n[order].tolist(),
                                            strict=True)}

    def state(self) -> np.ndarray:
        """`row_state` as a code: 0 scored, then 1 + the index in EXCLUSIONS."""
        def compute() -> np.ndarray:
            state = np.zeros(self.n, dtype=np.int8)
            state[self.is_none("correct")] = 4
            state[~self.truthy("parsed")] = 3
            state[self.is_none("parsed")] = 2
            state[~self.equals("status", "done")] = 1
            return state
        return self.derive("state", compute)

    def answered(self) -> np.ndarray:
        """`answered`: finished, parsed, and the answer names a choice."""
        return self.derive("answered", lambda: self.equals("status", "done")
                            & self.truthy("parsed") & (self.choice("chosen") >= 0))

    def clusters(self) -> tuple[np.ndarray, np.ndarray]:
        """`accuracy_interval`'s clusters: a code per row for its document, else its item (in
        a space of their own), and whether the code is an item's."""
        def compute() -> tuple[np.ndarray, np.ndarray]:
            is_item = self.is_none("document")
            keys = np.where(is_item, self["item_id"], self["document"]).tolist()
            return factorize_many(is_item.tolist(), keys)[0], is_item
        return self.derive("clusters", compute)

    def cluster_keys(self) -> np.ndarray:
        """`cluster_key` of each row as a code (equal codes, equal keys); the keys themselves
        are `cluster_names()`."""
        def compute() -> np.ndarray:
            docs, items = self["document"].tolist(), self["item_id"].tolist()
            if set(map(type, docs)) <= {str, type(None)} and set(map(type, items)) <= {str}:
                # text: one key per `clusters()` code (and one code per key)
                codes, _ = self.clusters()
                first = np.unique(codes, return_index=True)[1].tolist()
                names = [f"document:{docs[i]}" if docs[i] is not None else f"item:{items[i]}"
                         for i in first]
            else:
                keys = [f"document:{d}" if d is not None else f"item:{i}"
                        for d, i in zip(docs, items, strict=True)]
                codes, names = factorize(keys)[0], list(dict.fromkeys(keys))
            self._whole["cluster_names"] = names
            return codes
        return self.derive("cluster_keys", compute)

    def cluster_names(self) -> list[str]:
        """The keys behind `cluster_keys()` codes (a code indexes this list)."""
        self.cluster_keys()
        cols = self  # the codes were worked out here, or on the nearest columns up that did
        while "cluster_names" not in cols._whole:
            cols = cols._source[0]
        return cols._whole["cluster_names"]


__all__ = ["EXCLUSIONS", "Columns", "Frozen", "answered", "choice_index", "cluster_key",
           "HUGE", "factorize", "factorize_many", "first_codes", "from_clusters", "group_rows",
           "identity_codes", "proportion", "row_state", "wilson"]
