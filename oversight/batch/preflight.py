"""Preflight: every template and protocol a run uses, tried before any call or store write.

For each [[protocols]] entry, sweep point and dataset, the episode(s) of the dataset's first
item run against the dry run's stand-in models (estimate.py), which answer at once with a
parseable verdict: no network, no store. A missing or broken template, or a protocol that
raises, becomes a SpecError naming the template or protocol file and line, the protocol
entry and the role, instead of failing every episode after paid calls.
"""

from __future__ import annotations

import asyncio
import traceback
from pathlib import Path
from typing import Any

import jinja2

from ..api.decisions import Decision, Decisions
from ..api.prompts import PromptLibrary, TemplateMissing
from ..api.registry import frame_in, shown
from ..errors import SpecError
from .estimate import quiet_unretrieved, run_episode, stand_in_models
from .spec import EpisodePlan, LoadedSpec

TRIAL_SECONDS = 30.0  # per trial episode; the stand-ins answer at once


def preflight(loaded: LoadedSpec, prompts: PromptLibrary) -> None:
    """Raise SpecError for the first template or protocol that fails a trial episode."""
    check_dispositions(loaded, prompts)
    asyncio.run(_preflight(trial_plans(loaded.plans), loaded, prompts))


def check_dispositions(loaded: LoadedSpec, prompts: PromptLibrary) -> None:
    """Every disposition a plan gives a role has an overlay (the protocol's or the shared)."""
    seen = set()
    for p in loaded.plans:
        for role, d in p.dispositions.items():
            # a role the protocol does not have (a re-judging keeps its source's) renders nothing
            if d == "honest" or role not in p.protocol.roles or (p.entry, role, d) in seen:
                continue
            seen.add((p.entry, role, d))
            try:
                prompts.overlay(p.protocol.name, d)
            except TemplateMissing as exc:
                searched = ", ".join(shown(x) for x in prompts.dirs)
                raise SpecError(str(loaded.path), f"protocols[{p.entry}].dispositions.{role}",
                                f"no disposition {d!r} for protocol {p.protocol.name!r}: looked "
                                f"for {' and '.join(exc.tried)} in {searched}") from None


def trial_plans(plans: list[EpisodePlan]) -> list[EpisodePlan]:
    """The episodes of the first item of each dataset, per protocol entry and variant, and
    of the first item under each treatment arm (so that every disposition overlay a treatment
    can select is rendered, even when an attack rate leaves the first item honest)."""
    first: dict[tuple, str] = {}
    chosen = []
    for p in plans:
        by_dataset = first.setdefault((p.entry, p.variant, p.item.dataset), p.item.key)
        by_arm = first.setdefault((p.entry, p.variant, p.item.dataset, _arm(p)), p.item.key)
        if p.item.key in (by_dataset, by_arm):
            chosen.append(p)
    return chosen


def _arm(plan: EpisodePlan) -> tuple:
    return tuple(sorted(plan.dispositions.items()))


async def _preflight(plans: list[EpisodePlan], loaded: LoadedSpec, prompts: PromptLibrary) -> None:
    # A failed trial may leave a simultaneous turn's exception unretrieved: it is reported
    # below as a named error, not logged with a traceback when the task is collected.
    asyncio.get_running_loop().set_exception_handler(quiet_unretrieved)
    _, models = stand_in_models(loaded.models, fraction=0.0)
    for plan in plans:
        watched = _Watched(prompts, plan)
        try:
            result = await asyncio.wait_for(run_episode(plan, models, watched), TRIAL_SECONDS)
        except Exception as exc:  # every failure becomes a named error
            if watched.failure is not None:
                raise watched.failure from None
            raise _protocol_failed(plan, exc) from None
        if result is not None and not isinstance(result, (Decision, Decisions)):
            code = plan.protocol.fn.__code__
            raise SpecError(f"{shown(code.co_filename)}:{code.co_firstlineno}", _entry(plan),
                            f"returned {type(result).__name__}; a protocol returns nothing, or "
                            "the Decision(s) it made (e.g. `return await judge.decide()`)")


def _entry(plan: EpisodePlan, role: str | None = None) -> str:
    return f"protocols[{plan.entry}] ({plan.protocol.name})" + (f", role {role}" if role else "")


def _protocol_failed(plan: EpisodePlan, exc: BaseException) -> SpecError:
    """The protocol's own line if it is on the stack, else the deepest frame."""
    trial = (f"in a trial episode on {plan.item.key} against stand-in models that answer "
             "'Answer: A' at once; no model was called")
    if isinstance(exc, TimeoutError):
        return SpecError(shown(plan.protocol.source), _entry(plan), f"did not finish within "
                         f"{TRIAL_SECONDS:g} s {trial} (an endless loop?)")
    source = plan.protocol.fn.__code__.co_filename
    at = frame_in(exc, {str(Path(source).resolve())}) or frame_in(exc)
    what = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
    return SpecError(f"{shown(at[0])}:{at[1]}" if at else shown(plan.protocol.source),
                     _entry(plan), f"{type(exc).__name__}: {what} ({trial})")


class _Watched:
    """The run's prompt library, keeping the first template failure as a SpecError (protocol
    code may catch or wrap the exception itself)."""

    def __init__(self, library: PromptLibrary, plan: EpisodePlan):
        self.library, self.plan = library, plan
        self.failure: SpecError | None = None
        self._dirs = [str(Path(d).resolve()) for d in library.dirs]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.library, name)

    def find(self, protocol: str, role: str, purpose: str | None = None) -> str:
        try:
            return self.library.find(protocol, role, purpose)
        except Exception as exc:
            self._note(exc, role, None)
            raise

    def render(self, name: str, **variables: Any) -> tuple[str, str]:
        try:
            return self.library.render(name, **variables)
        except Exception as exc:
            self._note(exc, variables.get("role"), name)
            raise

    def _note(self, exc: Exception, role: str | None, name: str | None) -> None:
        if self.failure is None:
            file, message = self._describe(exc, name)
            self.failure = SpecError(file, _entry(self.plan, role), message)

    def _describe(self, exc: Exception, name: str | None) -> tuple[str, str]:
        """(template file[:line], what went wrong)."""
        searched = ", ".join(shown(d) for d in self.library.dirs)
        if isinstance(exc, TemplateMissing):
            return exc.tried[0], (f"no template for this role (looked for "
                                  f"{' and '.join(exc.tried)} in {searched})")
        if isinstance(exc, jinja2.TemplateSyntaxError):
            file = shown(exc.filename) if exc.filename else (exc.name or name or "<template>")
            return f"{file}:{exc.lineno}", f"template syntax error: {exc.message}"
        at = frame_in(exc, self._template_files(exc))
        file = f"{shown(at[0])}:{at[1]}" if at else self._path(name)
        if isinstance(exc, jinja2.TemplateNotFound):
            return file, f"template {exc.name!r} not found (searched {searched})"
        if isinstance(exc, jinja2.UndefinedError):
            return file, str(exc.message)
        return file, f"{type(exc).__name__}: {exc}"

    def _template_files(self, exc: BaseException) -> set[str]:
        """Resolved paths on the traceback that lie in a prompt folder."""
        found = set()
        for frame in traceback.extract_tb(exc.__traceback__):
            path = str(Path(frame.filename).resolve())
            if any(path.startswith(d.rstrip("/") + "/") for d in self._dirs):
                found.add(path)
        return found

    def _path(self, name: str | None) -> str:
        for d in self.library.dirs if name else ():
            if (Path(d) / name).is_file():
                return shown(Path(d) / name)
        return name or "<template>"
