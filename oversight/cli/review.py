"""Review commands: report, compare, export, plot, import. Every one opens the store read-only
(except import, which writes an imported study as a run) and renders the typed results of
oversight.analysis; none of them calls a model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .app import DbOpt, _console, _fail, _resolve_runs, _store, app

BudgetOpt = Annotated[list[str] | None, typer.Option(
    "--budget", metavar="B", help="An audit budget for detection, a fraction (0.02) or a "
    "percentage (2%); repeatable (default: 1%, 5%, 10%)")]
WhereOpt = Annotated[list[str] | None, typer.Option(
    "--where", metavar="PARAM=VALUE", help="Only episodes whose protocol parameter PARAM is "
    "VALUE (JSON: true, 3, \"x\"; else the text); repeatable, all must hold")]
RunsArg = Annotated[list[str], typer.Argument(
    metavar="RUN", help="Run id, unique id prefix, or run name (latest)")]


def print_report(store, run_ids: list[str], *, as_json: bool = False,
                 budgets: list[float] | None = None, where: dict | None = None,
                 child: bool = True) -> None:
    """The report of the runs (analysis.report.Report): rich tables, or strict JSON on stdout;
    `child`: as `build_report`'s."""
    from ..analysis.flagging import DEFAULT_BUDGETS
    from ..analysis.report import build_report
    report = build_report(store, run_ids, budgets=budgets or DEFAULT_BUDGETS, where=where,
                          child=child)
    if as_json:
        typer.echo(report.to_json())
        return
    from .render import report_view
    _console().print(report_view(report))


def parse_budgets(values: list[str] | None) -> list[float] | None:
    """--budget values: a fraction (0.05) or a percentage (5%), each in [0, 1]."""
    import math
    out = []
    for v in values or []:
        text = v.strip()
        try:
            b = float(text[:-1]) / 100 if text.endswith("%") else float(text)
        except ValueError:
            b = math.nan
        if not 0 <= b <= 1:
            raise _fail(f"--budget: expected a fraction in [0, 1] (0.05) or a percentage (5%), "
                        f"got {v[:40]!r}")
        out.append(b)
    return out or None


def parse_where(values: list[str] | None) -> dict | None:
    """--where PARAM=VALUE filters: VALUE read as JSON when it is JSON, else as text."""
    import json
    out = {}
    for v in values or []:
        name, sep, value = v.partition("=")
        if not sep or not name.strip():
            raise _fail(f"--where: expected PARAM=VALUE, got {v[:60]!r}")
        try:
            out[name.strip()] = json.loads(value)
        except ValueError:
            out[name.strip()] = value
    return out or None


@app.command()
def report(run_refs: RunsArg, db: DbOpt = None,
           as_json: Annotated[bool, typer.Option("--json", help="The whole report as JSON on stdout "
                                                 "(strict: null for missing or non-finite figures)")] = False,
           budget: BudgetOpt = None, where: WhereOpt = None) -> None:
    """Accuracy (intervals over documents), calibration, position bias, debaters, re-judged
    judges side by side, detection and cost, per run and variant."""
    from ..tuning import paused_gc
    budgets, filters = parse_budgets(budget), parse_where(where)
    with paused_gc():  # imports and a report's columns: objects, no cycles to collect
        store = _store(db)
        print_report(store, _resolve_runs(store, run_refs), as_json=as_json, budgets=budgets,
                     where=filters)


def _side(store, ref: str) -> tuple[str, list[dict]]:
    """RUN or RUN:VARIANT -> (what it names, its result rows)."""
    run_ref, sep, variant = ref.partition(":")
    (run_id,) = _resolve_runs(store, [run_ref])
    rows = store.results([run_id])
    if sep:
        rows = [r for r in rows if (r.get("variant") or r["protocol"]) == variant]
        if not rows:
            raise _fail(f"{ref}: run {run_id} has no variant {variant!r} (see `oversight "
                        f"report {run_id}`)")
    return (f"{run_id}:{variant}" if sep else run_id), rows


@app.command()
def compare(a: Annotated[str, typer.Argument(metavar="A", help="RUN, or RUN:VARIANT")],
            b: Annotated[str, typer.Argument(metavar="B", help="RUN, or RUN:VARIANT")],
            db: DbOpt = None,
            as_json: Annotated[bool, typer.Option("--json", help="The comparison as JSON")] = False,
            where: WhereOpt = None) -> None:
    """Paired comparison of two runs (variant by variant), two variants, or a re-judging and
    its source, on the items they share: difference in accuracy with a paired cluster
    bootstrap CI, an exact McNemar or sign-flip p-value, and agreement."""
    from ..analysis.compare import compare_rows
    from ..analysis.report import matches_where
    filters = parse_where(where)
    store = _store(db)
    (name_a, rows_a), (name_b, rows_b) = _side(store, a), _side(store, b)
    rows_a = [r for r in rows_a if matches_where(r, filters)]
    rows_b = [r for r in rows_b if matches_where(r, filters)]
    result = compare_rows(rows_a, rows_b, name_a, name_b)
    if as_json:
        typer.echo(result.model_dump_json(indent=2))
        return
    if not result.pairs:
        raise _fail(f"{name_a} and {name_b} share no variant name; compare one variant of each: "
                    "RUN:VARIANT")
    from .render_review import comparison_view
    _console().print(comparison_view(result))


EXPORT_TABLES = ("episodes", "messages", "decisions", "calls")


@app.command()
def export(run_refs: RunsArg, db: DbOpt = None,
           fmt: Annotated[str, typer.Option("--format", metavar="FORMAT",
                                            help="jsonl, csv, parquet, or inspect (.eval logs)")] = "jsonl",
           table: Annotated[str, typer.Option("--table", metavar="TABLE",
                                              help="episodes, messages, decisions or calls")] = "episodes",
           out: Annotated[str | None, typer.Option("--out", metavar="PATH", help="The file to "
                                                   "write (default: stdout; a folder for inspect)")] = None) -> None:
    """Export runs' episodes, messages, decisions or calls as JSONL, CSV or Parquet, or as
    inspect_ai .eval logs (`inspect view --log-dir OUT`)."""
    from ..review.export import FORMATS
    from ..review.export import export as write
    if table not in EXPORT_TABLES:
        raise _fail(f"--table: expected one of {', '.join(EXPORT_TABLES)}, got {table!r}")
    if fmt != "inspect" and fmt not in FORMATS:
        raise _fail(f"--format: expected one of {', '.join([*FORMATS, 'inspect'])}, got {fmt!r}")
    if fmt in ("parquet", "inspect") and out in (None, "-"):
        raise _fail(f"--format {fmt}: give --out (a {'folder' if fmt == 'inspect' else 'file'})")
    store = _store(db)
    run_ids = _resolve_runs(store, run_refs)
    err = _console(stderr=True)
    if fmt == "inspect":
        try:
            from ..review.inspect_log import write_inspect_logs
            paths = [p for run_id in run_ids for p in write_inspect_logs(store, run_id, Path(out))]
        except ImportError as exc:
            raise _fail(str(exc)) from None
        err.print(f"{len(paths)} log(s) in {out}: open them with `inspect view --log-dir {out}`",
                  markup=False)
        return
    from ..review.export import ExportError
    try:
        n = write(store, run_ids, table, fmt, out or "-")
    except BrokenPipeError:  # `| head`: the reader has all it wanted
        import os
        import sys
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return
    except ExportError as exc:
        raise _fail(str(exc)) from None
    except OSError as exc:
        raise _fail(f"--out: {exc}") from None
    if out not in (None, "-"):
        err.print(f"{n:,} {table} rows → {out}", markup=False)


@app.command()
def plot(run_refs: RunsArg,
         out: Annotated[Path, typer.Option("--out", metavar="DIR", help="The folder for the PNGs")],
         db: DbOpt = None, where: WhereOpt = None) -> None:
    """PNG figures of the report: accuracy with intervals per variant, reliability diagrams,
    ROC curves of every detector."""
    from ..analysis.flagging import detector_records
    from ..analysis.report import build_report, matches_where
    from ..review.plots import plot_report
    filters = parse_where(where)
    store = _store(db)
    run_ids = _resolve_runs(store, run_refs)
    report = build_report(store, run_ids, where=filters)
    records = []
    if report.detection:  # the ROC curves' points: the records the report's AUROC came from
        results = [r for r in store.results(run_ids) if matches_where(r, filters)]
        kept = {r["id"] for r in results}
        records = detector_records(results, [d for d in store.decisions(
            run_ids, kinds=("flag", "score")) if d["episode_id"] in kept])
    try:
        paths = plot_report(report, records, out)
    except OSError as exc:
        raise _fail(f"--out: {exc}") from None
    for p in paths:
        _console().print(str(p), markup=False)
    if not paths:
        _console(stderr=True).print("nothing to plot: no scored answers, probabilities or "
                                    "detectors in these runs", markup=False)


# kind -> (its reader: folder -> what it read, checked; its importer: (store, that) -> run id)
IMPORTERS = {"nyu-debate": ("oversight.importers.nyu_release:read_release",
                            "oversight.importers.nyu_debate:import_nyu_debate")}


@app.command("import")
def import_(kind: Annotated[str, typer.Argument(metavar="KIND", help="nyu-debate: Michael et al. "
                                                "2023's release (pub/ of julianmichael/debate)")],
            path: Annotated[Path, typer.Argument(metavar="DIR", help="The release's folder")],
            db: DbOpt = None) -> None:
    """Import a released study as a run of ordinary episodes (idempotent)."""
    import importlib

    from ..errors import OversightError
    if kind not in IMPORTERS:
        raise _fail(f"KIND: expected one of {', '.join(IMPORTERS)}, got {kind!r}")
    reader, importer = (getattr(importlib.import_module(module), name) for module, _, name
                        in (ref.partition(":") for ref in IMPORTERS[kind]))
    if not path.is_dir():
        raise _fail(f"{path}: expected the release's folder")
    try:
        release = reader(path)  # read and checked whole before a store is opened or made
        store = _store(db, create=True)
        run_id = importer(store, release)
    except (OversightError, ValueError) as exc:
        raise _fail(str(exc)) from None
    _console(stderr=True).print(f"imported {kind} as run {run_id} "
                                f"(oversight report {run_id})", markup=False)
