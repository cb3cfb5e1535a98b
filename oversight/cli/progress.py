"""A rich progress display for a batch (implements runner.Progress).

Drawn on stderr so stdout carries only the report (pipeable, diffable).
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..models.totals import Totals


def resume_note(total: int, skipped: int) -> str:
    return f"{skipped} of {total} episodes already in the store; resuming"


class QuietProgress:
    """--quiet: no bar, but still say when a run resumes."""

    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True)

    def __enter__(self) -> QuietProgress:  # noqa: PYI034
        return self

    def __exit__(self, *exc) -> None:
        pass

    def start(self, total: int, skipped: int) -> None:
        if skipped:
            self.console.print(resume_note(total, skipped))

    def call(self, record) -> None:
        pass

    def episode(self, status: str) -> None:
        pass


class RichProgress:
    """Episodes bar with done/total, plus calls, tokens in/out and errors as they happen."""

    def __init__(self, console: Console | None = None, label: str = "episodes"):
        self.console = console or Console(stderr=True)
        self.failed = 0
        self.bar = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[calls]}"),
            TextColumn("tokens {task.fields[tin]:,} in / {task.fields[tout]:,} out"),
            TextColumn("{task.fields[cost]}"), TextColumn("{task.fields[errs]}"),
            TimeElapsedColumn(), console=self.console, transient=False,
        )
        self.task = self.bar.add_task(label, total=None, calls="calls 0", tin=0, tout=0, cost="",
                                      errs="")
        self.usage = Totals()

    def __enter__(self) -> RichProgress:  # noqa: PYI034
        self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.stop()

    # -- runner.Progress ------------------------------------------------------------------
    def start(self, total: int, skipped: int) -> None:
        if skipped:
            self.console.print(resume_note(total, skipped), style="dim")
        self.bar.update(self.task, total=total, completed=skipped)

    def call(self, record) -> None:
        self.usage.add(record)
        self._refresh()

    def episode(self, status: str) -> None:
        if status == "failed":
            self.failed += 1
        self._refresh()
        self.bar.advance(self.task)

    def _refresh(self) -> None:
        u, errs = self.usage, []
        if u.errors:  # failed attempts, including ones the retry layer then recovered
            errs.append(f"[red]{u.errors} call errors[/]")
        if self.failed:
            errs.append(f"[red]{self.failed} failed[/]")
        calls = f"calls {u.calls}" + (f" (+{u.cache_hits} cached)" if u.cache_hits else "")
        self.bar.update(self.task, calls=calls, tin=u.tokens_in, tout=u.tokens_out,
                        cost=f"${u.cost_usd:.4f}" if u.cost_usd else "",
                        errs=" ".join(errs) or "[green]no errors[/]")
