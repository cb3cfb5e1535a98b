"""What the run, comparison and detection pages show, from oversight.analysis (never
recomputed here): the report, the paired comparison, the detectors' records; PNG figures
from oversight/review/plots.py; SVG geometry (numbers only) for ROC curves and histograms.

Each is computed once per state of its runs (`Reader.version`) and kept in memory.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .queries import Reader

PLOT_W, PLOT_H = 320, 240  # SVG drawing area of a ROC curve or a histogram
MAX_POINTS = 400  # points of a ROC polyline


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


class Figures:
    def __init__(self, reader: Reader):
        self.reader = reader
        self.store = reader.store
        self.cache = Cache()

    def _key(self, kind: str, run_ids: tuple[str, ...], *extra) -> tuple:
        return (kind, self.reader.version(run_ids), *extra)

    def report(self, run_ids: tuple[str, ...]):
        """analysis.report.build_report of the runs."""
        from ..analysis.report import build_report
        return self.cache.get(self._key("report", run_ids),
                              lambda: build_report(self.store, list(run_ids)))

    def png(self, run_ids: tuple[str, ...], name: str) -> bytes | None:
        """review/plots.py's accuracy or reliability figure of the runs' report, as PNG."""
        from ..review import plots
        draw = {"accuracy": plots.accuracy_plot, "reliability": plots.reliability_plot}[name]

        def make() -> bytes | None:
            buf = io.BytesIO()
            return buf.getvalue() if draw(self.report(run_ids), buf) is not None else None
        return self.cache.get(self._key("png", run_ids, name), make)

    def records(self, run_ids: tuple[str, ...]) -> list:
        """analysis.flagging.detector_records of the runs (the records AUROC is computed from)."""
        from ..analysis.flagging import detector_records

        def make() -> list:
            return detector_records(self.store.results(list(run_ids)),
                                    self.store.decisions(list(run_ids), kinds=("flag", "score")))
        return self.cache.get(self._key("records", run_ids), make)

    def results(self, run_id: str) -> list[dict]:
        return self.cache.get(self._key("results", (run_id,)),
                              lambda: self.store.results([run_id]))

    def comparison(self, a: tuple[str, str | None], b: tuple[str, str | None]):
        """analysis.compare.compare_rows of two sides (run id, variant or None)."""
        from ..analysis.compare import compare_rows, variant_of

        def rows(run_id: str, variant: str | None) -> list[dict]:
            got = self.results(run_id)
            return [r for r in got if variant is None or variant_of(r) == variant]

        def name(side: tuple[str, str | None]) -> str:
            return side[0] if side[1] is None else f"{side[0]}:{side[1]}"

        key = ("compare", self.reader.version((a[0], b[0])), a, b)
        return self.cache.get(key, lambda: compare_rows(rows(*a), rows(*b), name(a), name(b)))


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
        kept = [(x.score, x.attack) for x in rec.records
                if x.score is not None and x.attack is not None]
        n_attack = sum(1 for _, a in kept if a)
        if not kept or n_attack in (0, len(kept)):
            continue
        fpr, tpr = roc_points(*zip(*kept, strict=True))
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
                         det.auroc if det else None, marks, len(kept) - n_attack, n_attack))
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
        scored = [(x.score, x.attack) for x in rec.records if x.score is not None]
        known = [(s, a) for s, a in scored if a is not None]
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
                             len(rec.records) - len(scored)))
    return out
