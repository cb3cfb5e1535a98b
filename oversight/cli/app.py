"""The `oversight` command line.

Only typer is imported at module level so `oversight --help` stays fast; the runner, store,
numpy and the SDKs are imported inside the commands that need them.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="A lab bench for scalable-oversight research: run protocols over "
                       "question sets and review every transcript and verdict.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  # plain click help: rich help formatting costs ~0.15 s on every --help
                  rich_markup_mode=None)

DbOpt = Annotated[str | None, typer.Option(
    "--db", metavar="PATH|URL",
    help="SQLite path or SQLAlchemy URL (default: $OVERSIGHT_DB, else runs/oversight.db)")]
ProtoOpt = Annotated[list[Path] | None, typer.Option(
    "--protocols", metavar="DIR", help="A folder of protocol modules (repeatable); its sibling prompts/ joins the prompt path")]
PromptOpt = Annotated[list[Path] | None, typer.Option(
    "--prompts", metavar="DIR", help="A folder of prompt templates (repeatable); searched before the built-ins")]

EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


def _console(stderr: bool = False):
    from rich.console import Console
    return Console(stderr=stderr, highlight=False)


def _fail(message: str) -> typer.Exit:
    """Print `error: ...` on stderr (no traceback) and return the exit to raise."""
    from rich.markup import escape  # messages quote spec text such as "[models.x]"
    _console(stderr=True).print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    return typer.Exit(EXIT_USAGE)


def _oversight_error(exc: Exception) -> typer.Exit:
    from ..errors import SpecError
    if isinstance(exc, SpecError):
        return _fail(f"{exc.file}: {exc.key}: {exc.message}")
    return _fail(str(exc))


def _plugins(protocols: list[Path] | None, prompts: list[Path] | None):
    """Load built-in, installed and user protocols; a broken plugin or a missing folder is a
    usage error naming the file (and line)."""
    from ..api.plugins import load_all
    from ..errors import OversightError
    try:
        return load_all(protocols or [], prompts or [])
    except OversightError as exc:
        raise _oversight_error(exc) from None


def _store(db: str | None, *, create: bool = False):
    """Open the store: read-only unless `create` (a run), so `show`, `report` and the like
    never create, migrate or write to a database. A bad store is a usage error (exit 2)."""
    from ..errors import StoreError
    from ..store import Store
    try:
        return Store(db, readonly=not create)
    except StoreError as exc:
        raise _fail(str(exc)) from None


def _resolve_runs(store, refs: list[str]) -> list[str]:
    ids = []
    for ref in refs:
        run_id = store.find_run(ref)
        if run_id is None:
            raise _fail(f"no run matches {ref!r} (give an id, a unique id prefix, or a run name; "
                        f"see `oversight runs`)")
        ids.append(run_id)
    return list(dict.fromkeys(ids))


@app.command()
def run(spec: Annotated[Path, typer.Argument(metavar="SPEC.toml", help="The batch spec (TOML)")],
        db: DbOpt = None,
        limit: Annotated[int | None, typer.Option(metavar="N", help="At most N items per dataset")] = None,
        retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Run failed episodes again")] = False,
        protocols: ProtoOpt = None, prompts: PromptOpt = None,
        dry_run: Annotated[bool, typer.Option("--dry-run", help="Print episodes, calls and an estimated "
                                              "token and cost range; call nothing")] = False,
        no_cache: Annotated[bool, typer.Option("--no-cache", help="Neither read nor fill the response cache")] = False,
        budget_usd: Annotated[float | None, typer.Option(min=0, metavar="USD", help="Override [budget] usd")] = None,
        budget_tokens: Annotated[int | None, typer.Option(min=0, metavar="N", help="Override [budget] tokens")] = None,
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display")] = False) -> None:
    """Run a batch spec; re-running the same spec resumes it (finished episodes are skipped)."""
    from ..errors import OversightError
    from ..tuning import paused_gc

    if limit is not None and limit < 1:
        raise _fail(f"--limit: expected a number of items of at least 1, got {limit}")
    with paused_gc():  # start-up imports (and the protocol modules)
        from ..batch.preflight import preflight
        from ..batch.spec import load_spec
        registry, library = _plugins(protocols, prompts)
    try:
        # every check before any call or db write; the run's id covers its code and templates
        loaded = load_spec(spec, registry, limit=limit, prompts=library)
        preflight(loaded, library)  # every template and protocol tried against stand-in models
    except OversightError as exc:
        raise _oversight_error(exc) from None

    if dry_run:
        _dry_run(loaded, library, db, retry_failed)
        return
    _execute(loaded, library, db, retry_failed=retry_failed, no_cache=no_cache,
             budget_usd=budget_usd, budget_tokens=budget_tokens, quiet=quiet)


@app.command()
def rejudge(run_ref: Annotated[str, typer.Argument(metavar="RUN", help="The run whose transcripts to judge again")],
            model: Annotated[str, typer.Option("--model", metavar="MODEL", help="The new judge: "
                                               "'provider/model' or a model alias of RUN's spec")],
            role: Annotated[str | None, typer.Option("--role", metavar="ROLE", help="The role to "
                                                     "judge again (default: RUN's deciding role)")] = None,
            db: DbOpt = None, protocols: ProtoOpt = None, prompts: PromptOpt = None,
            concurrency: Annotated[int, typer.Option(min=1, max=100_000, help="Episodes in flight at once")] = 16,
            no_cache: Annotated[bool, typer.Option("--no-cache", help="Neither read nor fill the response cache")] = False,
            budget_usd: Annotated[float | None, typer.Option(min=0, metavar="USD", help="Stop at this spend")] = None,
            variant: Annotated[list[str] | None, typer.Option("--variant", metavar="VARIANT", help="Only this variant's episodes (repeatable)")] = None,
            where: Annotated[list[str] | None, typer.Option("--where", metavar="PARAM=VALUE", help="Only episodes whose protocol parameter PARAM is VALUE (repeatable)")] = None,
            limit: Annotated[int | None, typer.Option(min=1, metavar="N", help="Only the first N episodes chosen")] = None,
            quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display")] = False) -> None:
    """Judge a run's stored transcripts again with another model (or prompts): a new run whose
    episodes point to the originals, which stay as they are. Re-running resumes it."""
    from ..batch.preflight import preflight
    from ..batch.rejudge import load_rejudge
    from ..errors import OversightError

    registry, library = _plugins(protocols, prompts)
    reader = _store(db)
    (run_id,) = _resolve_runs(reader, [run_ref])
    source = reader.run(run_id)
    role = role or reader.deciding_role(run_id)
    if role is None:
        raise _fail(f"--role: run {run_id} has no finished episode with a deciding role; name one")
    from .review import parse_where
    filters = parse_where(where)
    command = " ".join(["oversight rejudge", run_id, "--role", role, "--model", model,
                        *(f"--prompts {p}" for p in prompts or []),
                        *(f"--variant {v}" for v in variant or []),
                        *(f"--where {w}" for w in where or []),
                        *([f"--limit {limit}"] if limit else [])])
    try:
        loaded = load_rejudge(reader, source, role, model, registry, library, command,
                              concurrency, variants=variant, where=filters, limit=limit)
        preflight(loaded, library)
    except OversightError as exc:
        raise _oversight_error(exc) from None
    reader.close()
    _execute(loaded, library, db, retry_failed=False, no_cache=no_cache, budget_usd=budget_usd,
             budget_tokens=None, quiet=quiet)


EXIT_SIGNAL = {"SIGINT": EXIT_INTERRUPTED, "SIGTERM": 143}  # 128 + the signal's number


def _execute(loaded, library, db, *, retry_failed: bool, no_cache: bool,
             budget_usd: float | None, budget_tokens: int | None, quiet: bool) -> None:
    """Run a validated spec against the store, report, and exit with what happened to *this*
    run: 0 when its episodes are done (or being finished by another live worker), 1 when some
    failed or were left, 130/143 when stopped by Ctrl-C/SIGTERM."""
    import os

    from rich.markup import escape

    from ..tuning import paused_gc
    with paused_gc():  # start-up imports (the SDKs: in run_batch, when models are made)
        from ..batch.runner import run_batch
        from ..batch.workers import LEASE_SECONDS
        from ..errors import OversightError, StoreError
        from ..models import Budget
        from ..store import safe_url
        from .interrupts import run_until_signal
    budget = None
    if budget_usd is not None or budget_tokens is not None or loaded.spec.budget.usd or loaded.spec.budget.tokens:
        budget = Budget(budget_usd if budget_usd is not None else loaded.spec.budget.usd,
                        budget_tokens if budget_tokens is not None else loaded.spec.budget.tokens)
    lease = _lease_seconds(os.environ.get("OVERSIGHT_LEASE_SECONDS"), LEASE_SECONDS)
    store = _store(db, create=True)
    err = _console(stderr=True)
    err.print(f"[bold]{loaded.run_id}[/]: {len(loaded.plans)} episodes "
              f"({len(loaded.items)} items) → {escape(safe_url(store.url))}")
    earlier = [r for r in store.same_spec(loaded.spec.name, loaded.spec_hash) if r["id"] != loaded.run_id]
    if earlier and loaded.code is not None:
        from ..batch.identity import changed
        diffs = changed(earlier[-1]["code"], loaded.code)
        err.print(f"[yellow]note:[/] run {earlier[-1]['id']} ran this spec with other protocol code or "
                  f"templates ({escape(', '.join(diffs[:6]) or 'from an older oversight')}"
                  f"{', …' if len(diffs) > 6 else ''}): this is a new run, which does not resume "
                  "it. Restore the old files to resume that run.")

    def notice(first: bool, name: str) -> None:
        if first:
            err.print(f"\n[yellow]{name}: stopping.[/] Finishing writes and marking the episodes in "
                      "flight for redo; another signal will not cut this short.")
        else:
            err.print(f"[yellow]{name}: still stopping[/] (writes are being finished).")

    from .progress import QuietProgress, RichProgress
    progress = QuietProgress(err) if quiet else RichProgress(err)
    try:
        with progress:
            summary, caught = run_until_signal(
                lambda: run_batch(loaded, store, library, retry_failed=retry_failed,
                                  progress=progress, use_cache=not no_cache, budget=budget,
                                  lease_seconds=lease), notice)
    except StoreError as exc:  # the store failed mid-run: not a usage error
        err.print(f"[bold red]error:[/] {escape(str(exc))}\nEpisodes in flight keep their lease "
                  "and are redone by the next run (at once from this machine).", soft_wrap=True)
        raise typer.Exit(EXIT_FAILED) from None
    except OversightError as exc:
        raise _oversight_error(exc) from None
    if caught is not None:
        err.print(f"[yellow]interrupted ({caught}).[/] The store is consistent: finished episodes are "
                  "kept and the ones in flight will be redone. Re-run the same command to resume.")
        raise typer.Exit(EXIT_SIGNAL.get(caught, EXIT_INTERRUPTED))

    from .review import print_report
    # The run's plans and items are no longer needed: the report (which reads every episode
    # back) reuses their memory instead of adding to it (bench/memory.py).
    loaded.plans, loaded.items = [], []
    # No child process: one forked now would start from this process's whole heap (its peak
    # resident size would pass the run's own; bench/memory.py).
    print_report(store, [summary.run_id], child=False)
    states = summary.states
    left = sum(n for s, n in states.items() if s != "done")
    if summary.status == "running":
        err.print(f"{summary.others} episode(s) are being run by another worker (live leases); "
                  "this worker's share is done.")
    if summary.status == "budget_exhausted":
        err.print(f"[yellow]budget exhausted:[/] {left} episode(s) not finished; raise \\[budget] in "
                  "the spec and re-run to continue.")
    if states.get("failed"):
        err.print(f"[red]{states['failed']} episode(s) failed[/] (see `oversight show ID`); "
                  "re-run with --retry-failed to try them again.")
    elif summary.status == "incomplete":
        err.print(f"[yellow]{left} episode(s) not finished[/]; re-run the same command to finish them.")
    if summary.status not in ("finished", "running") or states.get("failed"):
        raise typer.Exit(EXIT_FAILED)


def _lease_seconds(value: str | None, default: float) -> float:
    """$OVERSIGHT_LEASE_SECONDS: how long a worker's lease lasts without renewal."""
    import math
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 1:
        raise _fail(f"OVERSIGHT_LEASE_SECONDS: expected a number of seconds of at least 1, "
                    f"got {value[:40]!r}")
    return seconds


def _dry_run(loaded, library, db, retry_failed: bool) -> None:
    """What a run would do, from the plans and the store, without a single call."""
    from rich.table import Table

    from ..batch.estimate import LOW_FRACTION, estimate
    from ..batch.runner import todo
    from ..store import target_of
    target = target_of(db)
    status = {}
    if "://" in target or Path(target).expanduser().exists():  # a dry run never creates a store
        status = _store(db).episode_status(loaded.run_id)
    pending = [plan for plan, _ in todo(loaded.plans, status, retry_failed)]
    est = estimate(pending, len(loaded.plans) - len(pending), loaded.models, library)
    out = _console()
    out.print(f"[bold]{loaded.run_id}[/]: {len(loaded.plans)} episodes planned, "
              f"{est.skipped} already in the store, {est.episodes} to run")
    t = Table(caption=f"low: replies of {LOW_FRACTION:.0%} of max_tokens; high: every reply at "
                      "max_tokens. Cache hits would make it cheaper.", caption_justify="left")
    for col in ("model", "calls", "tokens in", "tokens out", "cost (USD)"):
        t.add_column(col, justify="left" if col == "model" else "right")
    lo_total = hi_total = lo_saved = hi_saved = 0.0
    priced = True
    for alias, m in est.per_model.items():
        cost = m.cost()
        if cost is None:
            priced = False
        else:
            lo_total, hi_total = lo_total + cost[0], hi_total + cost[1]
        price = "no price" if cost is None else f"{cost[0]:.4f}–{cost[1]:.4f}"
        if (saved := m.saving()) is not None:  # batch = true: at the batch price
            lo_saved, hi_saved = lo_saved + saved[0], hi_saved + saved[1]
            price += f" batch (saves {saved[0]:.4f}–{saved[1]:.4f})"
        t.add_row(alias, f"{m.calls:,}", f"{m.tokens_in[0]:,}–{m.tokens_in[1]:,}",
                  f"{m.tokens_out[0]:,}–{m.tokens_out[1]:,}", price)
    out.print(t)
    out.print(f"total: ${lo_total:.4f}–${hi_total:.4f}" + ("" if priced else " (plus unpriced models)"))
    if lo_saved or hi_saved:
        out.print(f"provider batches (batch = true) save ${lo_saved:.4f}–${hi_saved:.4f} against "
                  f"ordinary calls (${lo_total + lo_saved:.4f}–${hi_total + hi_saved:.4f})")


@app.command("cache")
def cache_explain(call_id: Annotated[int, typer.Argument(metavar="CALL_ID", help="A model_calls id")],
                  db: DbOpt = None) -> None:
    """Explain whether a recorded call was served from the response cache, and why it missed."""
    from ..batch.cache import explain
    for line in explain(_store(db), call_id):
        _console().print(line, markup=False)


@app.command()
def runs(db: DbOpt = None) -> None:
    """List the runs in the store."""
    from rich.table import Table
    from rich.text import Text

    from .render import fmt_counts
    rows = _store(db).runs()
    if not rows:
        _console().print("no runs yet (start one with `oversight run SPEC.toml`)")
        return
    t = Table()
    for col in ("id", "name", "status", "episodes", "created"):
        t.add_column(col)
    for r in rows:
        t.add_row(*(Text(x) for x in (r["id"], r["name"], r["status"], fmt_counts(r["episodes"]),
                                       r["created_at"][:19].replace("T", " "))))
    _console().print(t)


def _first_sentence(doc: str) -> str:
    para = " ".join(doc.strip().split("\n\n")[0].split())
    cut = para.find(". ")
    return para if cut < 0 else para[:cut + 1]


@app.command("protocols")
def list_protocols(protocols: ProtoOpt = None, prompts: PromptOpt = None) -> None:
    """List the registered protocols: roles, schedule, parameters and where each comes from."""
    from rich.table import Table
    from rich.text import Text
    registry, _ = _plugins(protocols, prompts)
    t = Table(show_lines=True, caption=Text("(context): reads the hidden context; (decides): its "
                                            "answer is the protocol's; (attacker): the role a "
                                            "treatment tells to misbehave"), caption_justify="left")
    t.add_column("protocol", ratio=3, overflow="fold")
    for col in ("roles", "schedule", "params"):
        t.add_column(col, ratio=2, overflow="fold")
    for name, p in sorted(registry.items()):
        params = "\n".join(f"{k}={f.default!r}" for k, f in p.params.model_fields.items()) or "—"
        # Protocols without a function docstring are documented by their module (debate).
        doc = p.doc or (getattr(sys.modules.get(p.fn.__module__), "__doc__", None) or "")
        source = p.source
        try:
            source = str(Path(source).resolve().relative_to(Path.cwd()))
        except ValueError:
            pass
        roles = "\n".join(r + (" (context)" if r in p.context_roles else "")
                          + (" (decides)" if r == p.decides else "")
                          + (" (attacker)" if r == p.attacker else "") for r in p.roles)
        schedule = getattr(p.schedule, "__name__", str(p.schedule))
        if p.treatment != "none":
            schedule += f"\n{p.treatment}: {p.attacker}={p.attack}"
        t.add_row(Text.assemble((name, "bold"), "\n", _first_sentence(doc), "\n", (source, "dim")),
                  Text(roles), Text(schedule), Text(params))
    _console().print(t)


@app.command()
def show(episode_id: Annotated[int, typer.Argument(metavar="EPISODE_ID", help="Episode id (see `oversight report`)")],
         db: DbOpt = None,
         raw: Annotated[bool, typer.Option("--raw", help="The text each model wrote, unmarked, "
                                           "and the full hidden context")] = False) -> None:
    """Show one episode: item, hidden context, assignment, transcript with checked quotes, verdict."""
    from .render import episode_view
    data = _store(db).episode(episode_id)
    if data is None:
        raise _fail(f"no episode {episode_id} in this store")
    _console().print(episode_view(data, raw=raw))


@app.command()
def migrate(db: DbOpt = None) -> None:
    """Upgrade a store's schema to this version of oversight (runs do it themselves; read-only
    commands never do)."""
    from ..errors import StoreError
    from ..store import Store, safe_url, target_of
    try:
        Store(db).close()
    except StoreError as exc:
        raise _fail(str(exc)) from None
    _console().print(f"{safe_url(target_of(db))}: schema up to date")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
