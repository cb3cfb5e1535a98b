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

CONTEXT_PREVIEW = 700  # characters of hidden context shown unless --raw
_MARK = re.compile(r"<(v|u)_quote>(.*?)</\1_quote>", re.DOTALL)


def letter(i: int | None) -> str:
    return "?" if i is None else chr(ord("A") + int(i))


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
    """The whole episode: item, hidden context, assignment, transcript, verdict."""
    ep, item, verdict = data["episode"], data["item"] or {}, data["verdict"]
    gold = item.get("answer_index")
    parts: list[RenderableType] = []
    head = Text.assemble(("Episode ", "bold"), (str(ep["id"]), "bold cyan"),
                         f"  run {ep['run_id']}  ·  {ep['variant'] or ep['protocol']}  ·  ",
                         (ep["status"], "green" if ep["status"] == "done" else "red"))
    parts.append(head)
    if ep.get("error"):
        parts.append(Text(f"error: {ep['error']}", style="red"))

    q = Text.assemble(("Question ", "bold"), (f"({ep['item_id']})\n", "dim"), item.get("question", "?"))
    for i, choice in enumerate(item.get("choices") or []):
        q.append(f"\n  {letter(i)}) ")
        q.append(choice, style="bold" if i == gold else "")
        if i == gold:
            q.append("  ★ gold", style="bold yellow")
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
    parts.append(_verdict(verdict, item, ep))
    return Group(*parts)


def _setup(ep: dict) -> Table:
    t = Table(title="Assignment", title_justify="left", title_style="bold", box=box.SIMPLE_HEAD,
              pad_edge=False)
    for col in ("role", "model", "disposition", "argues for", "ground truth"):
        t.add_column(col)
    assignment, disp = ep.get("assignment") or {}, ep.get("dispositions") or {}
    misaligned = set(ep.get("misaligned") or [])
    for role, alias in (ep.get("roles") or {}).items():
        a = assignment.get(role)
        argues = Text("—") if a is None else Text(
            f"{letter(a['answer'])} " + ("(correct)" if a["correct"] else "(incorrect)"),
            style="green" if a["correct"] else "red")
        d = disp.get(role, "honest")
        t.add_row(Text(role), Text(str(alias)), Text(d, style="" if d == "honest" else "yellow"), argues,
                  Text("misaligned", style="red") if role in misaligned else Text("aligned", style="dim"))
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


def _verdict(v: dict | None, item: dict, ep: dict) -> RenderableType:
    if v is None:
        return Panel(Text("no verdict (episode " + ep["status"] + ")", style="red"), title="verdict",
                     title_align="left", border_style="red")
    if not v["parsed"]:
        body = Text.assemble(("UNPARSED", "bold red"), " — counted and excluded, never scored\n",
                             ("raw: ", "dim"), v["raw"])
        return Panel(body, title=f"verdict ({v['role']})", title_align="left", border_style="red")
    choices = item.get("choices") or []
    chosen = v["chosen"]
    body = Text.assemble(("chosen: ", "bold"), f"{letter(chosen)}) ",
                         choices[chosen] if chosen is not None and chosen < len(choices) else "")
    body.append("  ✓ correct" if v["correct"] else "  ✗ incorrect",
                style="bold green" if v["correct"] else "bold red")
    if v.get("probabilities"):
        probs = "  ".join(f"{letter(i)} {p:.2f}" for i, p in enumerate(v["probabilities"]))
        body.append(f"\nprobabilities: {probs} ({v.get('prob_source') or '?'})")
    if v.get("flagged") is not None or v.get("suspicion") is not None:
        body.append(f"\nflagged: {v.get('flagged')}  suspicion: {v.get('suspicion')}")
    return Panel(body, title=f"verdict ({v['role']})", title_align="left",
                 border_style="green" if v["correct"] else "red")


# -- report ---------------------------------------------------------------------------------
def pct(est: float | None) -> str:
    return "—" if est is None else f"{100 * est:.1f}%"


def acc_cells(s: dict) -> tuple[Text, Text]:
    """(accuracy, 95% CI) cells; a group without parsed verdicts has no accuracy, not 0."""
    if s["accuracy"] is None:
        return Text("—", style="dim"), Text("no parsed verdicts", style="dim")
    return Text(pct(s["accuracy"]), style="bold"), Text(f"{100 * s['lo']:.1f}–{100 * s['hi']:.1f}%")


def _table(title: str, many: bool, cols: tuple[str, ...]) -> Table:
    # No vertical rules, no edge padding: the accuracy table fits an 80-column terminal.
    t = Table(title=title, title_justify="left", title_style="bold", box=box.SIMPLE_HEAD,
              pad_edge=False, collapse_padding=True)
    if many:
        t.add_column("run", overflow="fold", min_width=8)
    for i, col in enumerate(cols):
        t.add_column(col, justify="left" if i == 0 else "right", no_wrap=i > 0,
                     overflow="fold", min_width=12 if i == 0 else None)
    return t


def report_view(summaries: list[dict], runs: list[dict]) -> RenderableType:
    """Side-by-side tables for one or more runs (summaries from analysis.summarise).

    Under each variant, one row per assignment label (which advocate argued the correct answer).
    """
    many = len(runs) > 1
    parts: list[RenderableType] = []
    for r in runs:
        parts.append(Text.assemble(("run ", "bold"), (r["id"], "bold cyan"),
                                   f"  ({r['name']}, {r['status']}, spec {r.get('spec_path') or '?'})"))
    t = _table("Judge accuracy over parsed verdicts", many,
               ("variant / assignment", "done", "failed", "parsed", "unparsed", "accuracy", "95% CI"))
    for s in summaries:
        run_cell = [Text(s["run_id"])] if many else []
        t.add_row(*run_cell, Text(s["variant"], style="bold"), f"{s['done']}/{s['episodes']}",
                  str(s["failed"]), str(s["parsed"]),
                  Text(str(s["unparsed"]), style="yellow" if s["unparsed"] else ""), *acc_cells(s))
        for lab in s["by_label"]:
            t.add_row(*run_cell, Text(f"  {lab['label']}", style="dim"),
                      f"{lab['done']}/{lab['episodes']}", str(lab["failed"]), str(lab["parsed"]),
                      str(lab["unparsed"]), *acc_cells(lab))
    parts.append(t)

    priced = any(s.get("cost_usd") is not None for s in summaries)
    t2 = _table("Tokens" + (" and cost" if priced else ""), many,
                ("variant", "in", "out", "in / episode", "out / episode")
                + (("cost", "$ / correct") if priced else ()))
    for s in summaries:
        mean = ("—", "—") if s["tokens_in_mean"] is None else \
            (f"{s['tokens_in_mean']:,.0f}", f"{s['tokens_out_mean']:,.0f}")
        cost = (_usd(s.get("cost_usd")), _usd(s.get("cost_per_correct"))) if priced else ()
        t2.add_row(*([Text(s["run_id"])] if many else []), Text(s["variant"]), f"{s['tokens_in']:,}",
                   f"{s['tokens_out']:,}", *mean, *cost)
    parts.append(t2)
    ids = [i for s in summaries for i in s["episode_ids"]]
    note = ("95% CI: percentile bootstrap (10,000 resamples, seed 0). Unparsed verdicts are "
            "counted and excluded from accuracy, never scored as wrong.")
    if ids:
        note += f"\nTranscripts: oversight show ID (episode ids {min(ids)}–{max(ids)})."
    parts.append(Text(note, style="dim"))
    return Group(*parts)


def _usd(x: float | None) -> str:
    return "—" if x is None else f"${x:,.4f}"


def fmt_counts(counts: dict[str, Any]) -> str:
    order = ("done", "failed", "running", "interrupted", "pending")
    keys = [k for k in order if k in counts] + sorted(k for k in counts if k not in order)
    return " · ".join(f"{k} {counts[k]}" for k in keys) or "—"
