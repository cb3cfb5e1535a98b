"""What the run, comparison and detection pages show, from oversight.analysis (never
recomputed here): the report, the paired comparison, the detectors' records; PNG figures
from oversight/review/plots.py; SVG geometry (numbers only) for ROC curves and histograms.

Each is computed once per state of its runs (`Reader.version`) and kept in memory. The store
is read as columns (`Store.result_columns`, `Store.decision_columns`), only the keys used:
the detection records come from the very columns `build_report` read for the report.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .queries import Reader

PLOT_W, PLOT_H = 320, 240  # SVG drawing area of a ROC curve or a histogram
MAX_POINTS = 400  # points of a ROC polyline
# what analysis.compare.compare_rows reads of a `Store.results()` row
COMPARE_KEYS = ("id", "variant", "protocol", "item_id", "document", "status", "parsed",
                "chosen", "correct", "source_episode_id")
EPISODE_KEYS = ("run_id", "variant", "protocol", "status")  # of a decision's episode


class Cache:
    """A small LRU of computed figures; one computation per key at a time."""

    def __init__(self, size: int = 32):
        self.size = size
        self.items: OrderedDict[tuple, Any] = OrderedDict()
        self.lock = threading.Lock()
        self.busy: dict[tuple, threading.Lock] = {}

    def get(self, key: tuple, make: Callable[[], Any]) -> Any:
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
                return self.items[key]
            gate = self.busy.setdefault(key, threading.Lock())
        with gate:
            with self.lock:
                if key in self.items:
                    return self.items[key]
            value = make()
            with self.lock:
                self.items[key] = value
                self.busy.pop(key, None)
                while len(self.items) > self.size:
                    self.items.popitem(last=False)
            return value


class Recorded:
    """The store as `build_report` reads it, keeping the result and decision columns read."""

    def __init__(self, store):
        self._store = store
        self.read_results: dict | None = None
        self.read_decisions: dict | None = None

    def __getattr__(self, name: str):
        return getattr(self._store, name)

    def result_columns(self, run_ids, keys=None) -> dict:
        self.read_results = self._store.result_columns(run_ids, keys)
        return self.read_results

    def decision_columns(self, run_ids, kinds=None, keys=None) -> dict:
        self.read_decisions = self._store.decision_columns(run_ids, kinds, keys)
        return self.read_decisions


class Figures:
    def __init__(self, reader: Reader):
        self.reader = reader
        self.store = reader.store
        self.cache = Cache()
        self.reads: OrderedDict[tuple, Recorded] = OrderedDict()  # the reports' last reads
        self.lock = threading.Lock()

    def _key(self, kind: str, run_ids: tuple[str, ...], *extra) -> tuple:
        return (kind, self.reader.version(run_ids), *extra)

    def report(self, run_ids: tuple[str, ...]):
        """analysis.report.build_report of the runs (its columns kept for `records`)."""
        from ..analysis.report import build_report
        key = self._key("report", run_ids)

        def make():
            seen = Recorded(self.store)
            report = build_report(seen, list(run_ids))
            with self.lock:
                self.reads[key[1:]] = seen
                while len(self.reads) > 2:
                    self.reads.popitem(last=False)
            return report
        return self.cache.get(key, make)

    def png(self, run_ids: tuple[str, ...], name: str) -> bytes | None:
        """review/plots.py's accuracy or reliability figure of the runs' report, as PNG."""
        from ..review import plots
        draw = {"accuracy": plots.accuracy_plot, "reliability": plots.reliability_plot}[name]

        def make() -> bytes | None:
            buf = io.BytesIO()
            return buf.getvalue() if draw(self.report(run_ids), buf) is not None else None
        return self.cache.get(self._key("png", run_ids, name), make)

    def records(self, run_ids: tuple[str, ...]) -> list:
        """The detector record sets of the runs (analysis.flagging's, that AUROC is computed
        from), as columns: from the columns the report read, else read again."""
        from ..analysis.base import Columns
        from ..analysis.flagging import DETECTOR_KINDS, RESULT_KEYS, TRUTHS, _sets
        key = self._key("records", run_ids)

        def make() -> list:
            self.report(run_ids)
            with self.lock:
                seen = self.reads.pop(key[1:], None)
            if seen is None or seen.read_results is None or seen.read_decisions is None:
                seen = Recorded(self.store)
                seen.result_columns(list(run_ids), RESULT_KEYS)
                seen.decision_columns(list(run_ids), DETECTOR_KINDS,
                                      self.store.DETECTION_KEYS + EPISODE_KEYS)
            res, dec = seen.read_results, seen.read_decisions
            if not all(k in dec for k in EPISODE_KEYS):  # build_report joined them: else read
                dec = self.store.decision_columns(list(run_ids), DETECTOR_KINDS,
                                                  self.store.DETECTION_KEYS + EPISODE_KEYS)
            return _sets(Columns(res, len(res["id"])), Columns(dec, len(dec["episode_id"])),
                         TRUTHS)
        return self.cache.get(key, make)

    def detection(self, run_ids: tuple[str, ...]) -> tuple[list, list]:
        """The ROC curves and the histograms of the runs' detectors."""
        def make() -> tuple[list, list]:
            report = self.report(run_ids)
            records = self.records(run_ids) if report.detection else []
            return roc_curves(report, records), histograms(report, records)
        return self.cache.get(self._key("detection", run_ids), make)

    def results(self, run_id: str) -> dict[str, list]:
        """A run's results as columns, the keys `comparison` reads."""
        return self.cache.get(self._key("results", (run_id,)),
                              lambda: self.store.result_columns([run_id], COMPARE_KEYS))

    def comparison(self, a: tuple[str, str | None], b: tuple[str, str | None]):
        """analysis.compare.compare_rows of two sides (run id, variant or None)."""
        from ..analysis.compare import compare_rows

        def rows(run_id: str, variant: str | None) -> list[dict]:
            """The side's rows: of its variant (variant_of: the variant, else the protocol)."""
            got = self.results(run_id)
            at = range(len(got["id"])) if variant is None else [
                i for i, (v, p) in enumerate(zip(got["variant"], got["protocol"], strict=True))
                if (v or p) == variant]
            cols = list(got.values())
            return [dict(zip(got, [c[i] for c in cols], strict=True)) for i in at]

        def name(side: tuple[str, str | None]) -> str:
            return side[0] if side[1] is None else f"{side[0]}:{side[1]}"

        key = ("compare", self.reader.version((a[0], b[0])), a, b)
        return self.cache.get(key, lambda: compare_rows(rows(*a), rows(*b), name(a), name(b)))


def drawable(report, name: str) -> bool:
    """Whether review/plots.py draws the figure `name` of this report (it draws nothing when
    no variant has an answer to show, or, reliability, when none has probabilities)."""
    if name == "accuracy":
        return any(a.parsed or a.unparsed or a.no_gold for a in report.accuracy)
    return bool(report.calibration)


def _scored(rec) -> tuple[np.ndarray, np.ndarray]:
    """Each record's score (NaN: none) and attack (1, 0, −1 unknown): from a record set's
    `Records` columns, or from its `Scored` tuples (flagging.detector_records)."""
    r = rec.records
    if isinstance(r, tuple):
        return (np.array([np.nan if x.score is None else x.score for x in r], dtype=float),
                np.array([-1 if x.attack is None else int(x.attack) for x in r], dtype=np.int8))
    return r.score, r.attack


@dataclass
class Curve:
    """A detector's ROC curve under one truth, in SVG coordinates, with its budgets."""

    variant: str
    detector: str
    truth: str
    points: str  # "x,y x,y …" (numbers only)
    auroc: Any  # analysis.flagging.AurocResult, or None
    marks: list[dict]  # per audit budget: x, y, budget, threshold, tpr, fpr
    n_honest: int
    n_attack: int


def roc_curves(report, records) -> list[Curve]:
    """One curve per detector record set that has both classes (plots.roc_points)."""
    from ..review.plots import roc_points
    found = {(d.run_id, d.variant, d.detector, d.truth): d for d in report.detection}
    out = []
    for rec in records:
        score, attack = _scored(rec)
        kept = ~np.isnan(score) & (attack >= 0)
        scores, attacks = score[kept].tolist(), (attack[kept] == 1).tolist()
        n_attack = sum(attacks)
        if not scores or n_attack in (0, len(scores)):
            continue
        fpr, tpr = roc_points(scores, attacks)
        step = max(1, len(fpr) // MAX_POINTS)
        idx = list(range(0, len(fpr), step)) + ([len(fpr) - 1] if (len(fpr) - 1) % step else [])
        pts = " ".join(f"{fpr[i] * PLOT_W:.1f},{(1 - tpr[i]) * PLOT_H:.1f}" for i in idx)
        det = found.get((rec.run_id, rec.variant, rec.detector.label, rec.truth))
        marks = []
        for b in (det.budgets if det else []):
            if b.fpr is None or b.tpr is None:
                continue
            marks.append({"x": round(b.fpr * PLOT_W, 1), "y": round((1 - b.tpr) * PLOT_H, 1),
                          "budget": b.budget, "threshold": b.threshold, "tpr": b.tpr,
                          "fpr": b.fpr})
        out.append(Curve(rec.variant, rec.detector.label, rec.truth, pts,
                         det.auroc if det else None, marks, len(scores) - n_attack, n_attack))
    return out


@dataclass
class Histogram:
    """Scores of honest and attacked episodes in shared bins, as SVG bars."""

    variant: str
    detector: str
    truth: str
    lo: float
    hi: float
    bars: list[dict]  # x, width, and per class: height, y, count
    thresholds: list[dict]  # x, budget, threshold
    n_honest: int
    n_attack: int
    missing: int


def histograms(report, records, bins: int = 20) -> list[Histogram]:
    """Suspicion histograms by truth, one per detector record set with scores; the audit
    thresholds of the report drawn across them."""
    found = {(d.run_id, d.variant, d.detector, d.truth): d for d in report.detection}
    out = []
    for rec in records:
        score, attack = _scored(rec)
        scored = ~np.isnan(score)
        kept = scored & (attack >= 0)
        known = list(zip(score[kept].tolist(), (attack[kept] == 1).tolist(), strict=True))
        if not known:
            continue
        det = found.get((rec.run_id, rec.variant, rec.detector.label, rec.truth))
        scale = rec.detector.scale
        lo, hi = scale if scale else (min(s for s, _ in known), max(s for s, _ in known))
        lo, hi = (lo, hi) if hi > lo else (lo - 0.5, lo + 0.5)
        width = (hi - lo) / bins
        counts = {False: [0] * bins, True: [0] * bins}
        for s, a in known:
            k = min(bins - 1, max(0, int((s - lo) / width)))
            counts[a][k] += 1
        top = max(max(counts[False]), max(counts[True]), 1)
        bar_w = PLOT_W / bins
        bars = []
        for k in range(bins):
            row = {"x": round(k * bar_w, 1), "w": round(bar_w / 2, 1),
                   "from": lo + k * width, "to": lo + (k + 1) * width}
            for cls, name in ((False, "honest"), (True, "attack")):
                h = counts[cls][k] / top * PLOT_H
                row[name] = {"count": counts[cls][k], "h": round(h, 1),
                             "y": round(PLOT_H - h, 1)}
            bars.append(row)
        thresholds = []
        for b in (det.budgets if det else []):
            if b.threshold is not None and lo <= b.threshold <= hi:
                thresholds.append({"x": round((b.threshold - lo) / (hi - lo) * PLOT_W, 1),
                                   "budget": b.budget, "threshold": b.threshold})
        n_attack = sum(1 for _, a in known if a)
        out.append(Histogram(rec.variant, rec.detector.label, rec.truth, lo, hi, bars,
                             thresholds, len(known) - n_attack, n_attack,
                             int(score.size - np.count_nonzero(scored))))
    return out
