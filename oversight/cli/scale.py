"""Commands for runs shared between stores and workers: `push` copies a run into another store
(a laptop's SQLite into the team's PostgreSQL, where several `oversight run` workers may share
it)."""

from __future__ import annotations

from typing import Annotated

import typer

from .app import DbOpt, _console, _fail, _resolve_runs, _store, app


def _same_store(a: str, b: str) -> bool:
    from pathlib import Path

    from ..store import resolve_url
    ua, ub = resolve_url(a, create_dirs=False), resolve_url(b, create_dirs=False)
    if ua.startswith("sqlite:///") and ub.startswith("sqlite:///"):
        return Path(ua[len("sqlite:///"):]).resolve() == Path(ub[len("sqlite:///"):]).resolve()
    return ua == ub


@app.command()
def push(run_ref: Annotated[str, typer.Argument(metavar="RUN", help="Run id, unique id prefix, or "
                                                "run name (latest) in the source store")],
         to: Annotated[str, typer.Option("--to", metavar="PATH|URL", help="The store to copy the "
                                         "run into, e.g. postgresql+psycopg://host/db (migrated "
                                         "first)")],
         db: DbOpt = None) -> None:
    """Copy a run (its episodes, transcripts, decisions, calls and items; not the response
    cache) into another store. Pushing again adds nothing; a target that has the run with
    other episodes is refused (exit 2), and no other run there is touched."""
    from rich.markup import escape

    from ..errors import StoreError
    from ..store import Store, safe_url, target_of
    from ..store.push import push_run

    source = _store(db)  # read-only
    try:
        (run_id,) = _resolve_runs(source, [run_ref])
        if _same_store(target_of(db), to):
            raise _fail(f"--to: {safe_url(to)} is the store the run is read from")
        try:
            target = Store(to)
        except StoreError as exc:
            raise _fail(str(exc)) from None
        try:
            result = push_run(source, target, run_id)
        except StoreError as exc:
            raise _fail(str(exc)) from None
        finally:
            target.close()
    finally:
        source.close()

    out = _console()
    where = escape(safe_url(to))
    if not result.episodes:
        out.print(f"run {run_id}: already in {where} ({result.existing} episodes); nothing to add",
                  soft_wrap=True)
        return
    rows = ", ".join(f"{n} {name}" for name, n in result.rows.items())
    out.print(f"run {run_id}: pushed {result.episodes} episode(s) ({rows}; {result.items} new "
              f"item(s)) to {where}"
              + (f", next to the {result.existing} it had" if result.existing else ""),
              soft_wrap=True)
    if result.unfinished:
        states = ", ".join(f"{n} {s}" for s, n in sorted(result.unfinished.items()))
        retry = " (--retry-failed for failed ones)" if "failed" in result.unfinished else ""
        out.print(f"note: {sum(result.unfinished.values())} of them are not done ({states}); "
                  f"`oversight run SPEC --db {where}`{retry} finishes them there", soft_wrap=True)
    for run, n in sorted(result.unlinked.items()):
        out.print(f"note: {n} episode(s) judged again episodes of run {escape(run)}, which the "
                  "target lacks: their source_episode_id is NULL there (push that run first "
                  "to keep the link)", soft_wrap=True)
