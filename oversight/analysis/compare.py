"""Paired comparison of two sets of result rows (two runs, two variants, or a re-judging and
the run it judged again) on the items they share: what `oversight compare` computes."""

from __future__ import annotations

from collections.abc import Sequence

from .base import Frozen
from .intervals import (
    Accuracy,
    Agreement,
    PairedDifference,
    accuracy_interval,
    agreement,
    paired_difference,
)

FORMAT = "oversight.compare/1"


class VariantPair(Frozen):
    """One variant of A against one of B: each side's accuracy on all its episodes, the
    paired difference A − B on the items both scored (`intervals.paired_difference`), and the
    agreement of their answers (`intervals.agreement`: per item; per episode when B re-judged
    A's episodes)."""

    variant_a: str
    variant_b: str
    paired_by: str  # "item" or "episode" (a re-judging and its source)
    accuracy_a: Accuracy
    accuracy_b: Accuracy
    difference: PairedDifference
    agreement: Agreement


class Comparison(Frozen):
    """`oversight compare A B`: the pairs of variants compared, in order."""

    format: str = FORMAT
    a: str  # what A is: a run id, or run id:variant
    b: str
    pairs: list[VariantPair]
    unpaired_a: list[str]  # A's variants with no counterpart in B
    unpaired_b: list[str]
    n_resamples: int
    seed: int
    level: float


def variant_of(row: dict) -> str:
    return row.get("variant") or row["protocol"]


def _split(rows: Sequence[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(variant_of(r), []).append(r)
    return out


def compare_rows(rows_a: Sequence[dict], rows_b: Sequence[dict], a: str, b: str, *,
                 n_resamples: int = 10_000, seed: int = 0, level: float = 0.95) -> Comparison:
    """Pair A's and B's variants by name (when each side has one variant, those two), and
    compare each pair. Rows of B that re-judged rows of A (source_episode_id) are paired with
    them episode by episode for agreement; accuracy differences are always per item."""
    va, vb = _split(rows_a), _split(rows_b)
    if len(va) == 1 and len(vb) == 1:
        names = [(next(iter(va)), next(iter(vb)))]
    else:
        names = [(v, v) for v in va if v in vb]
    ids_a = {r["id"] for r in rows_a}
    pairs = []
    for name_a, name_b in names:
        ra, rb = va[name_a], vb[name_b]
        rejudged = bool(rb) and all(r.get("source_episode_id") in ids_a for r in rb)
        if rejudged:
            agree = agreement(ra, [{**r, "id": r["source_episode_id"]} for r in rb], key="id")
        else:
            agree = agreement(ra, rb)
        pairs.append(VariantPair(
            variant_a=name_a, variant_b=name_b, paired_by="episode" if rejudged else "item",
            accuracy_a=accuracy_interval(ra, level=level), accuracy_b=accuracy_interval(rb, level=level),
            difference=paired_difference(ra, rb, n_resamples=n_resamples, seed=seed, level=level),
            agreement=agree))
    paired_a, paired_b = {x for x, _ in names}, {y for _, y in names}
    return Comparison(a=a, b=b, pairs=pairs, unpaired_a=[v for v in va if v not in paired_a],
                      unpaired_b=[v for v in vb if v not in paired_b], n_resamples=n_resamples,
                      seed=seed, level=level)
