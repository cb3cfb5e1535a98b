"""Terminal tables for the review sections: calibration, position bias, debaters, re-judged
judges, and `oversight compare`. Every string from the store goes into a rich `Text`."""

from __future__ import annotations

from rich import box
from rich.console import RenderableType
from rich.table import Table
from rich.text import Text


def pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def num(x: float | None, fmt: str = ".3f") -> str:
    return "—" if x is None else format(x, fmt)


def interval(lo: float | None, hi: float | None) -> str:
    return "—" if lo is None or hi is None else f"{100 * lo:.1f}–{100 * hi:.1f}%"


def run_labels(runs) -> dict[str, str]:
    """Short labels for the run column when several runs are shown: their names when those
    are unique, else their ids; {} for one run (no run column)."""
    if len(runs) < 2:
        return {}
    names = [r.name for r in runs]
    unique = len(set(names)) == len(names)
    return {r.id: r.name if unique else r.id for r in runs}


def table(title: str, many: dict, cols: tuple[str, ...], caption: str | None = None) -> Table:
    """A report table that fits the terminal: cells wrap (never cut); the explanation is a
    caption under it."""
    t = Table(title=Text(title), title_justify="left", title_style="bold", box=box.SIMPLE_HEAD,
              pad_edge=False, collapse_padding=True, caption=Text(caption) if caption else None,
              caption_justify="left", caption_style="dim")
    if many:
        t.add_column("run", overflow="fold", min_width=6)
    for i, col in enumerate(cols):
        t.add_column(col, justify="left" if i == 0 else "right", overflow="fold",
                     min_width=13 if i == 0 else 11 if "CI" in col else None)
    return t


def _run(many: dict, run_id: str) -> list[Text]:
    return [Text(many[run_id])] if many else []


def calibration_table(report, many: dict) -> RenderableType | None:
    if not report.calibration:
        return None
    t = table("Calibration of final answers", many,
              ("variant", "answers", "no probs", "ECE", "Brier", "top 50%"),
              "confidence: the probability given to the chosen answer; ECE over 10 equal bins; "
              "Brier: Σ over choices, 0–2; top 50%: accuracy of the most confident half")
    for v in report.calibration:
        c = v.calibration
        half = next((p for p in c.selective if p.target >= 0.5), None)
        t.add_row(*_run(many, v.run_id), Text(v.variant), str(c.decisions),
                  Text(str(c.without_probabilities), style="yellow" if c.without_probabilities else ""),
                  num(c.ece), num(c.brier), "—" if half is None else pct(half.accuracy))
    return t


def position_table(report, many: dict) -> RenderableType | None:
    if not report.position:
        return None
    t = table("Position bias", many,
              ("variant", "answers", "first", "95% CI", "acc 1st", "acc 2nd", "flips"),
              "first: answers choosing the first choice; acc 1st/2nd: accuracy when the gold "
              "is first/second; flips: pairs of the same item under swapped assignments whose "
              "answers differ")
    for v in report.position:
        p = v.position
        gold = {g.position: g for g in p.by_gold}
        flips = "—" if p.flip_rate is None else f"{pct(p.flip_rate)} ({p.flips}/{p.flip_pairs})"
        t.add_row(*_run(many, v.run_id), Text(v.variant), str(p.n), pct(p.first),
                  interval(p.first_lo, p.first_hi),
                  *(pct(gold[i].accuracy) if i in gold else "—" for i in (0, 1)), flips)
    return t


def debaters_table(report, many: dict) -> RenderableType | None:
    if not report.debaters:
        return None
    t = table("Debaters", many,
              ("model", "matches", "wins", "95% CI", "right", "wrong", "rating", "CI"),
              "wins: the judge chose its answer; right/wrong: win rate when it argued the "
              "correct/incorrect answer; rating: Bradley–Terry, Elo scale, mean 0")
    for d in report.debaters:
        ratings = {r.model: r for r in (d.bradley_terry.ratings if d.bradley_terry else [])}
        for w in d.win_rates:
            r = ratings.get(w.model)
            rating = "—" if r is None or r.rating is None else f"{r.rating:+.0f}"
            ci = "—" if r is None or r.lo is None else f"{r.lo:+.0f}…{r.hi:+.0f}"
            t.add_row(*_run(many, d.run_id), Text(w.model), str(w.matches), pct(w.win_rate),
                      interval(w.lo, w.hi), pct(w.correct_win_rate), pct(w.incorrect_win_rate),
                      rating, ci)
    return t


def judges_table(report) -> RenderableType | None:
    if not report.judges:
        return None
    pairs = sorted({(j.run_id, j.source_run_id) for j in report.judges})
    t = table("Re-judged, on the same episodes", {},
              ("variant", "original", "new", "Δ pts", "95% CI", "p", "agree", "flips",
               "kappa"), "; ".join(f"{a} judged {b} again" for a, b in pairs)
              + ". original, new: accuracy on each judge's scored answers; Δ: new − original "
              "on the items both scored, items weighted equally, paired cluster bootstrap CI; "
              "p: exact McNemar, else a sign-flip test")
    for j in report.judges:
        d, a = j.difference, j.agreement
        t.add_row(Text(j.variant if len(pairs) == 1 else f"{j.variant} ({j.run_id})"), pct(j.original.mean),
                  pct(j.rejudged.mean), _signed(d.difference).replace(" pts", ""), _ci(d.lo, d.hi),
                  num(d.p_value, ".3g"), f"{a.agree}/{a.items}", pct(a.flip_rate), num(a.kappa, ".2f"))
    return t


def _signed(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:+.1f} pts"


def _ci(lo: float | None, hi: float | None) -> str:
    return "—" if lo is None or hi is None else f"{100 * lo:+.1f}…{100 * hi:+.1f}"


def comparison_view(comparison) -> RenderableType:
    """`oversight compare`: per pair of variants, accuracy on shared items, the paired
    difference with its interval and test, and agreement."""
    t = table("Paired comparison on shared items", {},
              ("variant", "items", "acc A", "acc B", "A − B", "95% CI", "p", "agree", "kappa"))
    tests, unpaired = set(), []
    for p in comparison.pairs:
        d, a = p.difference, p.agreement
        label = p.variant_a if p.variant_a == p.variant_b else f"{p.variant_a} / {p.variant_b}"
        tests.add(d.test)
        if d.only_a or d.only_b:
            unpaired.append(f"{label}: {d.only_a} items scored in A only, {d.only_b} in B only")
        t.add_row(Text(label), str(d.shared), pct(d.accuracy_a),
                  pct(d.accuracy_b), _signed(d.difference).replace(" pts", ""), _ci(d.lo, d.hi),
                  num(d.p_value, ".3g"), f"{a.agree}/{a.items}", num(a.kappa, ".2f"))
    t.caption = Text(f"A = {comparison.a}, B = {comparison.b}. items: scored on both sides "
                 f"({'; '.join(unpaired) + ', excluded' if unpaired else 'no other'}). A − B in "
                 "percentage points, "
                 "items weighted equally; 95% CI: paired cluster bootstrap over documents; p: "
                 + ", ".join(sorted(x for x in tests if x)) + "; agree: "
                 + ("same episodes" if any(p.paired_by == "episode" for p in comparison.pairs)
                    else "items") + " with the same answer", style="dim")
    t.caption_justify, t.caption_style = "left", "dim"
    return t
