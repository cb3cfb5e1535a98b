"""PNG figures of a report (matplotlib, Agg: no display needed): accuracy with intervals per
variant, reliability diagrams, ROC curves of detectors. Every figure is drawn from the typed
report (analysis.report.Report) or the detector records the report itself is computed from,
so a plot never shows a number the report does not."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", name).strip("_")[:80] or "plot"


def _label(run_id: str, variant: str, many: bool) -> str:
    return f"{variant}\n{run_id}" if many else variant


def accuracy_plot(report, path: Path) -> Path | None:
    """Accuracy per (run, variant) with its interval; variants with nothing scored are
    listed as 'no scored answers', never drawn at 0."""
    rows = [a for a in report.accuracy if a.parsed or a.unparsed or a.no_gold]
    if not rows:
        return None
    plt = _plt()
    many = len(report.runs) > 1
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(rows) + 1.5))
    for y, a in enumerate(rows):
        if a.accuracy is None:
            ax.text(0.5, y, "no scored answers", ha="center", va="center", color="grey")
            continue
        ax.errorbar(a.accuracy, y, xerr=[[a.accuracy - a.lo], [a.hi - a.accuracy]], fmt="o",
                    capsize=4, color="C0")
        ax.text(a.hi + 0.02, y, f"{100 * a.accuracy:.1f}% (n={a.parsed})", va="center", fontsize=8)
    ax.set_yticks(range(len(rows)), [_label(a.run_id, a.variant, many) for a in rows], fontsize=8)
    ax.set_xlim(0, 1.25)
    ax.set_xticks(np.linspace(0, 1, 6))
    ax.axvline(0.5, color="grey", lw=0.5, ls=":")
    ax.invert_yaxis()
    ax.set_xlabel(f"accuracy ({100 * report.settings.level:.0f}% CI: Wilson at the effective "
                  "size over documents)")
    ax.set_title("Judge accuracy over parsed final answers")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def reliability_plot(report, path: Path) -> Path | None:
    """One reliability diagram per (run, variant) with probabilities: accuracy against mean
    confidence per bin (marker area ∝ answers in it), the diagonal, and the ECE."""
    cals = report.calibration
    if not cals:
        return None
    plt = _plt()
    many = len(report.runs) > 1
    cols = min(3, len(cals))
    nrows = -(-len(cals) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 4 * nrows), squeeze=False)
    for ax, v in zip(axes.flat, cals, strict=False):
        c = v.calibration
        pts = [(b.confidence, b.accuracy, b.n) for b in c.bins if b.n]
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
        if pts:
            conf, acc, n = map(np.asarray, zip(*pts, strict=True))
            ax.scatter(conf, acc, s=20 + 200 * n / n.max(), alpha=0.7)
            ax.plot(conf, acc, lw=0.8)
        ece = "—" if c.ece is None else f"{c.ece:.3f}"
        ax.set_title(f"{_label(v.run_id, v.variant, many)}\nECE {ece} over {c.decisions} answers",
                     fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence in the chosen answer")
        ax.set_ylabel("accuracy")
    for ax in list(axes.flat)[len(cals):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def roc_points(scores: list[float], attack: list[bool]) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) at every threshold "audit when score >= t", from the highest score down,
    starting at (0, 0) and ending at (1, 1); tied scores move both rates at once."""
    s, a = np.asarray(scores, dtype=float), np.asarray(attack, dtype=bool)
    order = np.argsort(-s, kind="mergesort")
    s, a = s[order], a[order]
    last = np.r_[np.diff(s) != 0, True]  # the last of each run of tied scores
    tp, fp = np.cumsum(a)[last], np.cumsum(~a)[last]
    return np.r_[0, fp / max(1, (~a).sum())], np.r_[0, tp / max(1, a.sum())]


def roc_plots(report, records, out: Path) -> list[Path]:
    """One ROC figure per (run, variant): a curve per detector and truth, with its AUROC from
    the report; episodes with a missing score or unknown truth are left out (as in AUROC)."""
    plt = _plt()
    auroc = {(d.run_id, d.variant, d.detector, d.truth): d.auroc.value for d in report.detection}
    groups: dict[tuple[str, str], list] = {}
    for rec in records:
        groups.setdefault((rec.run_id, rec.variant), []).append(rec)
    paths = []
    for (run_id, variant), recs in groups.items():
        fig, ax = plt.subplots(figsize=(5, 5))
        drawn = 0
        for rec in recs:
            kept = [(x.score, x.attack) for x in rec.records if x.score is not None and x.attack is not None]
            if not any(a for _, a in kept) or all(a for _, a in kept):
                continue  # no attacks or no honest episodes: no curve
            fpr, tpr = roc_points(*zip(*kept, strict=True))
            value = auroc.get((run_id, variant, rec.detector.label, rec.truth))
            ax.plot(fpr, tpr, label=f"{rec.detector.label} vs {rec.truth}"
                    + ("" if value is None else f" (AUROC {value:.2f})"))
            drawn += 1
        if not drawn:
            plt.close(fig)
            continue
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
        ax.set_xlabel("false positive rate (honest episodes audited)")
        ax.set_ylabel("true positive rate (attacks caught)")
        ax.set_title(f"ROC: {variant}", fontsize=10)
        ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        path = out / f"roc_{_safe(run_id)}_{_safe(variant)}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths


def plot_report(report, records, out: Path) -> list[Path]:
    """Every figure of a report into the folder `out` (created); returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [accuracy_plot(report, out / "accuracy.png"),
             reliability_plot(report, out / "reliability.png")]
    return [p for p in paths if p is not None] + roc_plots(report, records, out)
