"""Calibration of answer decisions that carry a probability per choice: ECE with its
reliability table, the multi-class Brier score, and selective accuracy against coverage.

Rows as base.py states them. Only scored rows are used (done, parsed, with a gold); among
them a row without usable probabilities is counted and excluded, never given a confidence.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

import numpy as np

from .base import EXCLUSIONS, Columns, Frozen


class CalibrationBin(Frozen):
    """One bin of a reliability table: forecasts with confidence in [lo, hi)."""

    lo: float
    hi: float  # the last bin is closed: [lo, 1]
    n: int
    confidence: float | None  # mean confidence of its forecasts; None when n = 0
    accuracy: float | None  # fraction of its forecasts that came true; None when n = 0


class Reliability(Frozen):
    """ECE and its reliability table (`ece_of`)."""

    ece: float | None  # None without forecasts
    forecasts: int
    bins: list[CalibrationBin]


def ece_of(confidence: Sequence[float], outcome: Sequence[float], bins: int = 10) -> Reliability:
    """Expected calibration error of forecasts c_i ∈ [0, 1] of events o_i ∈ {0, 1}:
    ECE = Σ_b (n_b/N)·|acc_b − conf_b| = Σ_b |Σ_{i∈b} (o_i − c_i)| / N over `bins`
    equal-width bins; bin b holds [b/B, (b+1)/B), the last [1 − 1/B, 1] (edges are the
    floats k/B, so c = 0.29 is in bin 29 of 100 although 0.29·100 < 29 in floating point).
    Any confidence definition works: pass the probability of the chosen answer, of the
    correct answer, or every (decision, choice) pair. Empty bins are listed, n = 0."""
    c = np.asarray(confidence, dtype=float)
    o = np.asarray(outcome, dtype=float)
    if c.shape != o.shape or c.ndim != 1:
        raise ValueError("confidence and outcome must be 1-d and of the same length")
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins!r}")
    if not np.all((c >= 0) & (c <= 1)):
        raise ValueError("confidences must lie in [0, 1]")
    edges = np.arange(bins + 1) / bins  # k/B correctly rounded: the float a user writes
    idx = np.minimum(np.searchsorted(edges, c, side="right") - 1, bins - 1)
    n_b = np.bincount(idx, minlength=bins)
    c_b = np.bincount(idx, weights=c, minlength=bins)
    o_b = np.bincount(idx, weights=o, minlength=bins)
    table = [CalibrationBin(lo=b / bins, hi=(b + 1) / bins, n=int(n_b[b]),
                            confidence=float(c_b[b] / n_b[b]) if n_b[b] else None,
                            accuracy=float(o_b[b] / n_b[b]) if n_b[b] else None)
             for b in range(bins)]
    ece = float(np.abs(o_b - c_b).sum() / c.size) if c.size else None
    return Reliability(ece=ece, forecasts=int(c.size), bins=table)


class SelectivePoint(Frozen):
    """Accuracy of the most confident decisions at one coverage (`selective_accuracy`)."""

    target: float  # the coverage asked for
    coverage: float  # the coverage reached: n / N (ties at the cut all go in)
    n: int
    threshold: float  # lowest confidence kept
    accuracy: float


def selective_accuracy(confidence: Sequence[float], correct: Sequence[float],
                       steps: int = 10) -> list[SelectivePoint]:
    """Sort decisions by confidence, highest first; at coverage j/steps (j = 1..steps) keep
    the top k = ⌈j·N/steps⌉, and every decision tied with the k-th in confidence (a threshold
    cannot split a tie), and report the accuracy and the coverage actually reached. Empty
    without decisions."""
    c = np.asarray(confidence, dtype=float)
    y = np.asarray(correct, dtype=float)
    n = c.size
    if n == 0:
        return []
    order = np.argsort(-c, kind="stable")
    desc, hits = c[order], np.cumsum(y[order])
    out = []
    for j in range(1, steps + 1):
        k = -(-j * n // steps)  # ⌈j·N/steps⌉ in integers: no 0.3·10 = 3.0000000000000004
        kept = int(np.searchsorted(-desc, -desc[k - 1], side="right"))
        out.append(SelectivePoint(target=j / steps, coverage=kept / n, n=kept,
                                  threshold=float(desc[k - 1]),
                                  accuracy=float(hits[kept - 1] / kept)))
    return out


class Calibration(Frozen):
    """Calibration of one set of rows (`calibration`)."""

    confidence: str  # "chosen" or "each": what the ECE forecasts are
    n: int  # decisions in the ECE
    forecasts: int  # = n ("chosen") or Σ choices over those decisions ("each")
    ece: float | None
    bins: list[CalibrationBin]
    brier: float | None  # multi-class Brier, in [0, 2]; None without a decision to score
    brier_n: int
    selective: list[SelectivePoint]  # by probability of the chosen answer, over `decisions`
    decisions: int  # scored rows with usable probabilities
    no_choice_target: int  # among them, target not a choice index: no Brier (nor "each" ECE)
    without_probabilities: int  # excluded: scored, probabilities None or empty
    invalid_probabilities: int  # excluded: not a list of numbers, each finite, in [0, 1]
    unparsed: int
    no_gold: int
    no_answer: int
    not_done: int


def calibration(rows: Iterable[dict], bins: int = 10, *,
                confidence: Literal["chosen", "each"] = "chosen",
                steps: int = 10) -> Calibration:
    """Over the scored rows with usable probabilities p (one per choice, each in [0, 1]):

    - confidence="chosen": one forecast per decision, c = p[chosen] (the max probability
      when chosen is not an index into p) of the event correct. confidence="each": every
      (decision, choice k) pair is a forecast p_k of the event k == target (all-class
      calibration; decisions whose target is not a choice index are excluded). ECE and
      table by `ece_of` with `bins` equal-width bins.
    - Brier = mean over decisions of Σ_k (p_k − 1[k = target])² (Brier 1950, multi-class;
      range [0, 2]); needs target to be a choice index within p, else excluded and counted.
    - selective accuracy (`selective_accuracy`, `steps` coverages) by the probability of the
      chosen answer, outcome correct.
    """
    return _calibration(Columns.of(rows, CALIBRATION_KEYS), bins, confidence, steps)


CALIBRATION_KEYS = ("status", "parsed", "correct", "probabilities", "chosen", "target")


def _calibration(cols: Columns, bins: int, confidence: str, steps: int) -> Calibration:
    """`calibration` of the rows of `cols`."""
    if confidence not in ("chosen", "each"):
        raise ValueError(f"confidence must be 'chosen' or 'each', got {confidence!r}")
    state = cols.state()
    counts = {name: int(np.count_nonzero(state == code))
              for code, name in enumerate(EXCLUSIONS, start=1)}
    scored = np.flatnonzero(state == 0)
    probs = cols["probabilities"][scored].tolist()
    # per scored row: −1 without probabilities, −2 not a list, else the number of choices
    if set(map(type, probs)) <= {list, type(None)}:
        size = np.fromiter(map(len, (p or () for p in probs)), dtype=np.intp, count=len(probs))
        size[size == 0] = -1
    else:
        size = np.fromiter((len(p) if isinstance(p, list | tuple) and p else -1 if not p else -2
                            for p in probs), dtype=np.intp, count=len(probs))
    counts["without_probabilities"] = int(np.count_nonzero(size == -1))
    counts["invalid_probabilities"] = int(np.count_nonzero(size == -2))
    chosen_all, target_all = cols.choice("chosen")[scored], cols.choice("target")[scored]
    right_all = cols.truthy("correct")[scored]
    sizes, first = np.unique(size[size > 0], return_index=True)
    conf, right, brier, each_p, each_o = [], [], [], [], []
    for k in sizes[np.argsort(first, kind="stable")].tolist():  # in order of first appearance
        at = np.flatnonzero(size == k)
        p = _matrix([probs[i] for i in at.tolist()], k)
        ok = np.isfinite(p).all(axis=1) & (p >= 0).all(axis=1) & (p <= 1).all(axis=1)
        counts["invalid_probabilities"] += int((~ok).sum())
        p, at = p[ok], at[ok]
        chosen = np.where(chosen_all[at] < k, chosen_all[at], -1)
        conf.append(np.where(chosen >= 0, p[np.arange(at.size), np.maximum(chosen, 0)],
                             p.max(axis=1, initial=0.0)))
        right.append(right_all[at].astype(float))
        target = np.where(target_all[at] < k, target_all[at], -1)
        gold = np.arange(k) == target[target >= 0, None]
        brier.append(((p[target >= 0] - gold) ** 2).sum(axis=1))
        each_p.append(p[target >= 0].ravel())
        each_o.append(gold.ravel())
    conf, right, brier = (np.concatenate(x) if x else np.zeros(0) for x in (conf, right, brier))
    if confidence == "chosen":
        rel, n = ece_of(conf, right, bins), conf.size
    else:
        rel = ece_of(np.concatenate(each_p) if each_p else [],
                     np.concatenate(each_o) if each_o else [], bins)
        n = brier.size
    return Calibration(confidence=confidence, n=n, forecasts=rel.forecasts, ece=rel.ece,
                       bins=rel.bins, brier=float(brier.mean()) if brier.size else None,
                       brier_n=brier.size, selective=selective_accuracy(conf, right, steps),
                       decisions=conf.size, no_choice_target=conf.size - brier.size, **counts)


def _matrix(probs: list, k: int) -> np.ndarray:
    """Rows of k probabilities as a float matrix; a row that is not k numbers becomes NaN
    (invalid)."""
    try:
        return np.array(probs, dtype=float).reshape(len(probs), k)
    except (TypeError, ValueError):
        out = np.full((len(probs), k), np.nan)
        for i, p in enumerate(probs):
            try:
                out[i] = np.asarray(p, dtype=float)
            except (TypeError, ValueError):
                pass
        return out


__all__ = ["Calibration", "CalibrationBin", "Reliability", "SelectivePoint", "calibration",
           "ece_of", "selective_accuracy"]
