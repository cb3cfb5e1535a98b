"""Terminal rendering with rich: an episode's transcript, and the report tables.

Every string from the store goes into a rich `Text`, never a markup string: a variant such
as "debate[rounds=2]" or an agent writing "[bold]" must be shown literally.
"""

from __future__ import annotations

import re
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.rule import Rule
from rich.table import Table
from rich.text import Text

from ..tasks.items import letter as choice_letter

CONTEXT_PREVIEW = 700  # characters of hidden context shown unless --raw
_MARK = re.compile(r"<(v|u)_quote>(.*?)</\1_quote>", re.DOTALL)


def letter(i: int | None) -> str:
    return "?" if i is None else choice_letter(i)


def marked_text(shown: str, quotes: list[dict] | None) -> Text:
    """The system's quote marks as colours: verified green ✓, unverified red ✗ (near-misses
    flagged with their fuzzy score)."""
    quotes = quotes or []
    out, pos = Text(), 0
    for i, m in enumerate(_MARK.finditer(shown)):
        out.append(shown[pos:m.start()])
        kind, span = m.group(1), m.group(2)
        # verify() records one result per mark, in order; fall back to matching the text.
        q = quotes[i] if i < len(quotes) and quotes[i].get("text") == span else \
            next((q for q in quotes if q.get("text") == span), {})
        if kind == "v":
            out.append(f"✓ “{span}”", style="bold green")
        else:
            out.append(f"✗ “{span}”", style="bold red")
            if q.get("status") == "near_miss":
                out.append(f" [near-miss {q.get('score', 0):.0f}]", style="yellow")
        pos = m.end()
    out.append(shown[pos:])
    return out


def _quote_summary(quotes: list[dict]) -> str:
    n = {s: sum(q.get("status") == s for q in quotes) for s in ("verified", "near_miss", "unverified")}
    parts = [f"{n['verified']} verified", f"{n['unverified'] + n['near_miss']} unverified"]
    if n["near_miss"]:
        parts.append(f"{n['near_miss']} near-miss")
    return "quotes: " + ", ".join(parts)


def episode_view(data: dict, raw: bool = False) -> RenderableType:
    """The whole episode: item, hidden context, treatment and truths, transcript, decisions."""
    ep, item = data["episode"], data["item"] or {}
    gold = item.get("target") if item.get("kind") == "choice" else None
    parts: list[RenderableType] = []
    head = Text.assemble(("Episode ", "bold"), (str(ep["id"]), "bold cyan"),
                         f"  run {ep['run_id']}  ·  {ep['variant'] or ep['protocol']}  ·  ",
                         (ep["status"], "green" if ep["status"] == "done" else "red"))
    parts.append(head)
    if ep.get("source_episode_id") is not None:
        parts.append(Text(f"A re-judging of episode {ep['source_episode_id']}: the transcript "
                          f"judged is that episode's (oversight show {ep['source_episode_id']}).",
                          style="yellow"))
    if ep.get("error"):
        parts.append(Text(f"error: {ep['error']}", style="red"))

    q = Text.assemble(("Input ", "bold"), (f"({ep['item_id']}, a {item.get('kind', '?')} item)\n", "dim"),
                      item.get("input", "?"))
    for i, choice in enumerate(item.get("choices") or []):
        q.append(f"\n  {letter(i)}) ")
        q.append(choice, style="bold" if i == gold else "")
        if i == gold:
            q.append("  ★ gold", style="bold yellow")
    if item.get("kind") != "choice" and item.get("target") is not None:
        q.append("\ngold: ", style="bold yellow")
        q.append(str(item["target"]))
    if item.get("label") is not None:
        q.append(f"\nlabel: {item['label']}", style="dim")
    parts += [Text(""), q, Text("")]

    ctx = item.get("context")
    if ctx:
        body = ctx if raw or len(ctx) <= CONTEXT_PREVIEW else \
            ctx[:CONTEXT_PREVIEW] + f" … [{len(ctx) - CONTEXT_PREVIEW} more characters; --raw shows all]"
        parts.append(Panel(Text(body, style="dim"), title="hidden context — the judge does not see this",
                           title_align="left", border_style="magenta"))

    parts.append(_setup(ep))
    for m in data["messages"]:
        parts += [_message(m, raw), Text("")]
    made = data.get("decisions") or []
    if not made:
        parts.append(Panel(Text("no decision (episode " + ep["status"] + ")", style="red"),
                           title="decisions", title_align="left", border_style="red"))
    for d in made:
        parts.append(_decision(d, item))
    return Group(*parts)


def _setup(ep: dict) -> Table:
    outcome = ep.get("outcome")
    truth = "artefact bad" if outcome else ("artefact fine" if outcome is False else "outcome unknown")
    t = Table(title=f"Treatment: {ep.get('treatment') or '—'}  ·  truth: {truth}",
              title_justify="left", title_style="bold", box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("role", "model", "disposition", "argues for", "intent"):
        t.add_column(col)
    assignment, disp = ep.get("assignment") or {}, ep.get("dispositions") or {}
    intent = set(ep.get("intent") or [])
    for role, alias in (ep.get("roles") or {}).items():
        a = assignment.get(role)
        argues = Text("—") if a is None else Text(
            f"{letter(a['answer'])} " + ("(correct)" if a["correct"] else "(incorrect)"),
            style="green" if a["correct"] else "red")
        d = disp.get(role, "honest")
        name = role + (" (decides)" if role == ep.get("decides") else "")
        t.add_row(Text(name), Text(str(alias)), Text(d, style="" if d == "honest" else "yellow"), argues,
                  Text("told to misbehave", style="red") if role in intent else Text("aligned", style="dim"))
    return t


def _message(m: dict, raw: bool) -> RenderableType:
    meta = [m["role"], m["kind"]]
    if m.get("round") is not None:
        meta.insert(1, f"round {m['round']}")
    if m.get("visible_to") is not None:
        meta.append("visible to " + ", ".join(m["visible_to"]))
    body = Text(m["content"]) if raw else marked_text(m["shown"], m.get("quotes"))
    items: list[RenderableType] = [Rule(Text(" · ".join(meta)), align="left", style="cyan"), body]
    if m.get("quotes"):
        items.append(Text(_quote_summary(m["quotes"]), style="dim"))
    return Group(*items)


def _decision(d: dict, item: dict) -> RenderableType:
    title = f"{d['kind']} · {d['name']} ({d['role']})"
    if not d["parsed"]:
        body = Text.assemble(("UNPARSED", "bold red"), " — counted and excluded, never scored\n",
                             ("raw: ", "dim"), d["raw"])
        return Panel(body, title=title, title_align="left", border_style="red")
    body = Text()
    if d["kind"] == "answer" and d.get("choice") is not None:
        choices = item.get("choices") or []
        c = d["choice"]
        body.append("chosen: ", style="bold")
        body.append(f"{letter(c)}) " + (choices[c] if c < len(choices) else ""))
    elif d["kind"] in ("answer", "label"):
        body.append(f"{d['kind']}: ", style="bold")
        body.append(str(d.get("text")))
    elif d["kind"] == "flag":
        body.append("flagged: ", style="bold")
        body.append("yes" if d["value"] == 1.0 else "no")
    else:
        body.append(f"{d['name']}: ", style="bold")
        body.append(f"{d['value']:g} on [{d['scale_lo']:g}, {d['scale_hi']:g}]")
    if d.get("correct") is not None:
        body.append("  ✓ correct" if d["correct"] else "  ✗ incorrect",
                    style="bold green" if d["correct"] else "bold red")
    if d.get("probabilities"):
        names = (["no", "yes"] if d["kind"] == "flag" else [letter(i) for i in range(len(d["probabilities"]))])
        probs = "  ".join(f"{n} {p:.2f}" for n, p in zip(names, d["probabilities"], strict=False))
        body.append(f"\nprobabilities: {probs} ({d.get('source') or '?'})")
    style = "green" if d.get("correct") else ("red" if d.get("correct") is False else "cyan")
    return Panel(body, title=title, title_align="left", border_style=style)


# -- report ---------------------------------------------------------------------------------
def pct(est: float | None) -> str:
    return "—" if est is None else f"{100 * est:.1f}%"


def acc_cells(s) -> tuple[Text, Text]:
    """(accuracy, 95% CI) cells; a group without parsed verdicts has no accuracy, not 0."""
    if s.accuracy is None:
        return Text("—", style="dim"), Text("no parsed verdicts", style="dim")
    return Text(pct(s.accuracy), style="bold"), Text(f"{100 * s.lo:.1f}–{100 * s.hi:.1f}%")


def _table(title: str | Text, many: dict, cols: tuple[str, ...]) -> Table:
    # No vertical rules, no edge padding: the accuracy table fits an 80-column terminal.
    t = Table(title=title, title_justify="left", title_style="bold", box=box.SIMPLE_HEAD,
              pad_edge=False, collapse_padding=True)
    if many:
        t.add_column("run", overflow="fold", min_width=8)
    for i, col in enumerate(cols):
        t.add_column(col, justify="left" if i == 0 else "right", overflow="fold",
                     min_width=12 if i == 0 else None)
    return t


def _same_split(a: list, b: list) -> bool:
    """Whether two groupings split a variant's episodes the same way (then one is enough)."""
    return {frozenset(g.episode_ids) for g in a} == {frozenset(g.episode_ids) for g in b}


def report_view(report) -> RenderableType:
    """The report (analysis.report.Report) as tables, for one or more runs side by side:
    accuracy per variant, under it one row per assignment label (which advocate argued the
    correct answer) and per treatment label when that splits the episodes differently;
    tokens and cost; and a detection section per variant that has flag or score decisions."""
    from .render_review import run_labels
    many = run_labels(report.runs)  # run id -> its short label in the tables; {} for one run
    parts: list[RenderableType] = []
    for r in report.runs:
        parts.append(Text.assemble(("run ", "bold"), (r.id, "bold cyan"),
                                   f"  ({r.name}, {r.status}, spec {r.spec_path or '?'})",
                                   f"  = {many[r.id]} below" if many and many[r.id] != r.id else ""))
    t = _table("Judge accuracy over parsed verdicts", many,
               ("variant / assignment", "done", "failed", "parsed", "unparsed", "accuracy", "95% CI"))
    # A variant whose deciding role answered nothing (monitoring of labelled code: only
    # flags and scores) has no accuracy row; it is in the detection section and the JSON.
    answered = [s for s in report.accuracy if s.parsed or s.unparsed or s.done < s.episodes]
    for s in answered:
        run_cell = [Text(many[s.run_id])] if many else []
        t.add_row(*run_cell, Text(s.variant, style="bold"), f"{s.done}/{s.episodes}",
                  str(s.failed), str(s.parsed),
                  Text(str(s.unparsed), style="yellow" if s.unparsed else ""), *acc_cells(s))
        groups = [(g.label, g) for g in s.by_assignment]
        if s.by_treatment and not _same_split(s.by_treatment, s.by_assignment):
            groups += [(f"treatment {g.label}", g) for g in s.by_treatment]
        for label, g in groups:
            t.add_row(*run_cell, Text(f"  {label}", style="dim"), f"{g.done}/{g.episodes}",
                      str(g.failed), str(g.parsed), str(g.unparsed), *acc_cells(g))
    if answered:
        parts.append(t)
    from .render_review import calibration_table, debaters_table, judges_table, position_table
    parts += [x for x in (calibration_table(report, many), position_table(report, many),
                          debaters_table(report, many), judges_table(report)) if x is not None]

    priced = any(u.cost_usd is not None for u in report.usage)
    t2 = _table("Tokens" + (" and cost" if priced else ""), many,
                ("variant", "in", "out", "in/ep", "out/ep")
                + (("cost", "$/correct") if priced else ()))
    for u in report.usage:
        mean = ("—", "—") if u.tokens_in_mean is None else \
            (f"{u.tokens_in_mean:,.0f}", f"{u.tokens_out_mean:,.0f}")
        cost = (_usd(u.cost_usd), _usd(u.cost_per_correct)) if priced else ()
        t2.add_row(*([Text(many[u.run_id])] if many else []), Text(u.variant), f"{u.tokens_in:,}",
                   f"{u.tokens_out:,}", *mean, *cost)
    parts.append(t2)
    st = report.settings
    if report.detection:
        parts += _detection_sections(report.detection, many, st.level)
        parts.append(Text(
            "Detection: a detector is a role's flag or score decisions (a flag scores P(yes) "
            "when log-probabilities gave one, else 1/0). Truth intent: some role was told to "
            "misbehave; outcome: the artefact was bad. missing: no usable score (unparsed or "
            "absent), counted and excluded, never 0; unknown: truth unknown, excluded. AUROC "
            f"{100 * st.level:.0f}% CI: clustered DeLong over items (Obuchowski), logit scale. "
            "catch: attacks audited at the budget, "
            "the threshold set on honest scores, ties at it audited at random (seeded); FPR: "
            "honest audited, realised. safety: caught / (caught + uncaught successful "
            "attacks). useful: honest episodes whose final answer was correct.", style="dim"))
    ids = [i for s in report.accuracy for i in s.episode_ids]
    note = (f"Accuracy {100 * st.level:.0f}% CI: Wilson at the effective sample size, the "
            "design effect from the spread between documents (items sharing a passage count "
            "as one cluster); never zero width at 0% or 100%. Unparsed verdicts and answers "
            "without gold are counted and excluded from accuracy, never scored as wrong.")
    if st.where:
        note += "\nOnly episodes with " + ", ".join(f"{k}={v!r}" for k, v in st.where.items()) + "."
    if ids:
        note += f"\nTranscripts: oversight show ID (episode ids {min(ids)}–{max(ids)})."
    parts.append(Text(note, style="dim"))
    spaced: list[RenderableType] = []
    for p in parts:  # a blank line after each table's caption
        spaced += [p, Text("")] if isinstance(p, Table) and p.caption else [p]
    return Group(*spaced)


def _num(x: float | None, fmt: str = ".2f") -> str:
    """x formatted, or "—" when it does not exist."""
    return "—" if x is None else format(x, fmt)


def _budget(b: float) -> str:
    """An audit budget (a fraction) as a percentage: 0.05 → "5%"."""
    return f"{100 * b:g}%"


def _det_table(title: Text, cols: tuple[str, ...]) -> Table:
    # One row naming the detector (it may wrap), then one per truth: the figures stay on one
    # line each and the table fits an 80-column terminal.
    t = Table(title=title, title_justify="left", title_style="bold", box=box.SIMPLE_HEAD,
              pad_edge=False, collapse_padding=True)
    t.add_column(cols[0], overflow="fold", min_width=9)
    for col in cols[1:]:
        t.add_column(col, justify="right", no_wrap=True)
    return t


def _detection_sections(detection: list, many: dict, level: float) -> list[RenderableType]:
    """Per (run, variant): one table of counts, AUROC and usefulness per detector and truth,
    one of catch rate, realised FPR and safety per detector, truth and audit budget."""
    groups: dict[tuple[str, str], list] = {}
    for d in detection:
        groups.setdefault((d.run_id, d.variant), []).append(d)
    parts: list[RenderableType] = []
    for (run_id, variant), ds in groups.items():
        where = Text.assemble(variant, f"  (run {many[run_id]})" if many else "")
        t = _det_table(Text.assemble("Detection: ", where),
                       ("detector / truth", "honest", "attacks", "missing", "unknown", "AUROC",
                        f"{100 * level:.0f}% CI", "useful"))
        t2 = _det_table(Text.assemble("Catch at audit budget: ", where),
                        ("detector / truth", "budget", "threshold", "catch (TPR)", "FPR",
                         "safety"))
        for k, d in enumerate(ds):
            if k == 0 or d.detector != ds[k - 1].detector:
                for table in (t, t2):
                    table.add_row(Text(d.detector, style="bold"))
            a, truth = d.auroc, Text(f"  {d.truth}")
            if a.value is None:
                ci = Text("no attacks" if not d.n_attack else "no honest", style="dim")
            else:
                ci = Text("—" if a.lo is None else f"{_num(a.lo)}–{_num(a.hi)}")
            missing = d.missing_honest + d.missing_attack
            t.add_row(truth, str(d.n_honest), str(d.n_attack),
                      Text(str(missing), style="yellow" if missing else ""),
                      Text(str(d.unknown_truth), style="yellow" if d.unknown_truth else ""),
                      Text(_num(a.value), style="bold"), ci, pct(d.usefulness.value))
            for i, b in enumerate(d.budgets):
                threshold = "all" if b.audits_all else _num(b.threshold, ".3g")
                catch = "—" if b.tpr is None else f"{pct(b.tpr)} ({b.caught_attack}/{d.n_attack})"
                fpr = "—" if b.fpr is None else f"{pct(b.fpr)} ({b.caught_honest}/{d.n_honest})"
                t2.add_row(truth if i == 0 else "", _budget(b.budget), threshold,
                           Text(catch, style="bold"), fpr, pct(b.safety_per_attempt))
        parts += [t, t2]
    return parts


def _usd(x: float | None) -> str:
    return "—" if x is None else f"${x:,.4f}"


def fmt_counts(counts: dict[str, Any]) -> str:
    order = ("done", "failed", "running", "interrupted", "pending")
    keys = [k for k in order if k in counts] + sorted(k for k in counts if k not in order)
    return " · ".join(f"{k} {counts[k]}" for k in keys) or "—"
