"""Position bias of a judge: how often it picks the first choice, its accuracy by where the
gold answer sits, and how often its answer flips when the same item is argued the other way
round. Pure functions over result rows (base.py states the row contract).
"""

from __future__ import annotations

from collections.abc import Iterable
from operator import itemgetter

import numpy as np

from .base import (
    HUGE,
    Columns,
    Frozen,
    factorize,
    factorize_many,
    first_codes,
    identity_codes,
    proportion,
)

_ANSWER = itemgetter("answer")


class GoldPosition(Frozen):
    """Accuracy of the scored rows whose gold answer is at one position."""

    position: int
    n: int  # 0 for an empty group
    correct: int
    accuracy: float | None  # None when n = 0
    lo: float | None  # Wilson at n/deff, clusters as accuracy_interval
    hi: float | None


class PositionBias(Frozen):
    """See `position_bias`."""

    n: int  # answered rows: finished, parsed, naming a choice index
    by_chosen: list[int]  # answered rows by chosen position 0, 1, …
    first: float | None  # P(chosen == 0); None when n = 0
    first_lo: float | None  # Wilson at n/deff, clusters as accuracy_interval
    first_hi: float | None
    by_gold: list[GoldPosition]  # positions 0 .. the highest chosen or gold position
    no_choice_target: int  # scored rows whose target is not a choice index: not in by_gold
    flip_items: int  # items (per run and variant) answered under >= 2 assignments
    flip_pairs: int  # differently-assigned pairs of answered rows among them
    flips: int  # those pairs whose chosen answers differ
    flip_rate: float | None  # mean over flip_items of the item's flips / pairs; None without
    no_assignment: int  # answered rows without an assignment: not in the flip analysis
    no_choice: int  # excluded: parsed, but the answer is not a choice index
    unparsed: int
    no_answer: int
    not_done: int


def _signature(assignment: dict) -> frozenset:
    """Which answer each role argued, as a hashable value."""
    return frozenset((role, repr(a.get("answer") if isinstance(a, dict) else a))
                     for role, a in assignment.items())


def _assignment_codes(assignments: list[dict]) -> np.ndarray:
    """A code per assignment, equal for equal role -> answer mappings: a fast key (roles and
    answers in dict order) first, then `_signature` once per distinct fast key, so that
    role order does not matter. Each key is computed once per distinct object (the rows of a
    store share the parsed assignments of equal texts)."""
    obj, objects = identity_codes(assignments)
    try:
        fast_obj, _ = factorize([(*a, *map(_ANSWER, a.values())) for a in objects])
    except (KeyError, TypeError):  # an advocate without a hashable "answer": the slow way
        return factorize([_signature(a) for a in objects])[0][obj]
    fast = fast_obj[obj]
    first = np.unique(fast, return_index=True)[1]
    canonical, _ = factorize([_signature(assignments[i]) for i in first])
    return canonical[fast]


def _sum_sq_per(group: np.ndarray, *codes: np.ndarray) -> np.ndarray:
    """Per group g: Σ over the distinct values v of `codes` within g of count(g, v)²."""
    key = group
    for c in codes:  # one integer key for (group, *codes), renumbered after each step
        key = np.unique(key * (int(c.max()) + 1) + c, return_inverse=True)[1].ravel()
    n = np.bincount(key)
    first = np.zeros(n.size, dtype=np.intp)
    first[key] = group  # the group of each distinct key
    return np.bincount(first, weights=n.astype(float) ** 2, minlength=int(group.max()) + 1)


def _flips(item: np.ndarray, sig: np.ndarray, chosen: np.ndarray
           ) -> tuple[int, int, int, float | None]:
    """(items, pairs, flips, flip rate) over answered rows with an assignment, given per row
    its item (codes in order of first appearance), assignment and chosen answer; see
    `position_bias`. Counted in closed form per item: pairs with different assignments
    = (n² − Σ_s n_s²)/2; of them, with the same chosen answer = (Σ_c m_c² − Σ_{s,c} m_sc²)/2."""
    if not item.size:
        return 0, 0, 0, None
    n = np.bincount(item).astype(float)
    differ = (n**2 - _sum_sq_per(item, sig)) / 2
    same = (_sum_sq_per(item, chosen) - _sum_sq_per(item, sig, chosen)) / 2
    has = differ > 0
    if not has.any():
        return 0, 0, 0, None
    flips = differ[has] - same[has]
    return (int(has.sum()), int(differ[has].sum()), int(flips.sum()),
            float((flips / differ[has]).mean()))


def position_bias(rows: Iterable[dict], level: float = 0.95) -> PositionBias:
    """Over the answered rows (finished, parsed, chosen a choice index; the rest counted):

    - first = P(chosen == 0), Wilson interval at n/deff with the cluster design effect of
      `accuracy_interval`; by_chosen: counts per chosen position.
    - by_gold: accuracy of the scored rows (base.py) per gold position (target as a choice
      index), listed for every position up to the highest one seen; an empty one has n = 0
      and accuracy None.
    - flips, when an item is run in both orders: within a run and variant, an item counts
      when it has answered rows under >= 2 different assignments (role -> answer argued,
      e.g. the a_correct and b_correct arms of a debate). Every pair of its rows with
      different assignments is compared; a flip is a pair whose chosen answers differ (the
      judge followed the position or speaker, not the content). flip_rate = mean over such
      items of flips / pairs, so each item weighs once. Gold is not needed.
    """
    return _position_bias(Columns.of(rows, POSITION_KEYS), level)


# what it reads
POSITION_KEYS = ("status", "parsed", "correct", "chosen", "target", "document", "item_id",
                 "assignment", "run_id", "variant", "protocol")


def _position_bias(cols: Columns, level: float) -> PositionBias:
    """`position_bias` of the rows of `cols`."""
    ok, state = cols.answered(), cols.state()
    left = state[~ok]  # not answered: by row_state, a parsed answer naming no choice apart
    counts = {name: int(np.count_nonzero(left == code)) for code, name in
              ((1, "not_done"), (2, "no_answer"), (3, "unparsed"))}
    counts["no_choice"] = int(np.count_nonzero((left == 0) | (left == 4)))
    rows = np.flatnonzero(ok)
    chosen = cols.choice("chosen")[rows]
    cluster, _ = first_codes(cols.cluster_keys()[rows])
    first = proportion(chosen == 0, cluster, level)
    scored = ~cols.is_none("correct")[rows]
    target = cols.choice("target")[rows][scored]
    if (chosen == HUGE).any() or (target == HUGE).any():  # as np.fromiter of it would
        raise OverflowError("a choice index too large for an intp")
    y = cols.truthy("correct")[rows][scored].astype(float)
    gold_cluster = cluster[scored]
    top = int(max(chosen.max(initial=-1), target.max(initial=-1)))
    by_gold = []
    for pos in range(top + 1):
        at = target == pos
        est = proportion(y[at], np.unique(gold_cluster[at], return_inverse=True)[1], level)
        by_gold.append(GoldPosition(position=pos, n=int(at.sum()), correct=int(y[at].sum()),
                                    accuracy=est["mean"], lo=est["lo"], hi=est["hi"]))
    assigned = rows[cols.truthy("assignment")[rows]]  # answered rows with an assignment
    items, pairs, flips, rate = _flips(
        first_codes(_item_codes(cols)[assigned])[0],
        _assignment_codes(cols["assignment"][assigned].tolist()), cols.choice("chosen")[assigned])
    return PositionBias(
        n=rows.size, by_chosen=np.bincount(chosen, minlength=top + 1).tolist(),
        first=first["mean"], first_lo=first["lo"], first_hi=first["hi"], by_gold=by_gold,
        no_choice_target=int((target < 0).sum()), flip_items=items, flip_pairs=pairs,
        flips=flips, flip_rate=rate, no_assignment=rows.size - assigned.size,
        no_choice=counts["no_choice"], unparsed=counts["unparsed"],
        no_answer=counts["no_answer"], not_done=counts["not_done"])


def _item_codes(cols: Columns) -> np.ndarray:
    """A code per row for its item within its run and variant (the unit of the flips)."""
    return cols.derive("flip_item", lambda: factorize_many(
        cols["run_id"].tolist(), [v or p for v, p in zip(cols["variant"].tolist(),
                                                         cols["protocol"].tolist(), strict=True)],
        cols["item_id"].tolist())[0])


__all__ = ["GoldPosition", "PositionBias", "position_bias"]
