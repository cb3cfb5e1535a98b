"""The @protocol decorator and registry.

A protocol is an async function `(ep: Episode, **params) -> Verdict`. Its keyword parameters,
typed and defaulted, become a frozen pydantic model that a batch spec sets and validates —
hashable, so it keys episodes for resume.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Annotated, Any, Awaitable, Callable

from pydantic import BaseModel, ConfigDict, Strict, ValidationError, create_model

from .assign import SCHEDULES, Schedule

ProtocolFn = Callable[..., Awaitable[Any]]


@dataclass
class ProtocolDef:
    name: str
    fn: ProtocolFn
    roles: tuple[str, ...]
    schedule: Schedule
    advocates: tuple[str, ...]  # roles that are assigned an answer to argue for
    context_roles: tuple[str, ...]  # roles allowed to read the hidden context
    judge: str  # the role whose decision is the verdict
    params: type[BaseModel]
    doc: str = ""
    source: str = ""  # where it was loaded from
    prompts_dir: str | None = None

    def make_params(self, values: dict[str, Any]) -> BaseModel:
        """Validate spec values; raises pydantic.ValidationError naming the bad field."""
        return self.params(**values)


REGISTRY: dict[str, ProtocolDef] = {}
_loading_source: list[str] = []  # set by the plugin loader so errors can name the file


class ProtocolConflict(Exception):
    pass


def protocol(*, roles: tuple[str, ...], assign: str | Schedule = "judge_only",
             advocates: tuple[str, ...] | None = None, context: tuple[str, ...] = (),
             judge: str | None = None, name: str | None = None) -> Callable[[ProtocolFn], ProtocolFn]:
    """Register an async protocol.

    roles: every role the protocol uses; assign: a schedule name or function (see assign.py);
    advocates: roles that argue an assigned answer (default: every role but the judge);
    context: roles that may read the item's hidden context; judge: the deciding role
    (default: the last role).
    """
    schedule = SCHEDULES[assign] if isinstance(assign, str) else assign

    def register(fn: ProtocolFn) -> ProtocolFn:
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"protocol {fn.__name__} must be declared with 'async def'")
        judge_role = judge or roles[-1]
        proto = ProtocolDef(
            name=name or fn.__name__, fn=fn, roles=tuple(roles), schedule=schedule,
            advocates=tuple(advocates if advocates is not None else (r for r in roles if r != judge_role)),
            context_roles=tuple(context), judge=judge_role, params=_params_model(fn),
            doc=inspect.getdoc(fn) or "", source=_loading_source[-1] if _loading_source else fn.__module__,
        )
        previous = REGISTRY.get(proto.name)
        if previous is not None and previous.source != proto.source:
            raise ProtocolConflict(f"protocol {proto.name!r} from {proto.source} is already "
                                   f"defined in {previous.source}")
        REGISTRY[proto.name] = proto
        fn.protocol = proto  # type: ignore[attr-defined]
        return fn

    return register


def _params_model(fn: ProtocolFn) -> type[BaseModel]:
    sig = inspect.signature(fn)
    hints = inspect.get_annotations(fn, eval_str=True)
    fields: dict[str, Any] = {}
    for i, (pname, p) in enumerate(sig.parameters.items()):
        if i == 0:
            continue  # the Episode
        if p.default is inspect.Parameter.empty:
            raise TypeError(f"protocol {fn.__name__}: parameter {pname!r} needs a default value")
        annotation = hints.get(pname, type(p.default))
        if annotation in (bool, int, float, str):
            # TOML values are already typed: never let `words = true` become 1 or
            # `simultaneous = "no"` become False (strict still takes an int for a float).
            annotation = Annotated[annotation, Strict()]
        fields[pname] = (annotation, p.default)
    return create_model(f"{fn.__name__}_params", __config__=ConfigDict(frozen=True, extra="forbid"),
                        **fields)


def param_errors(exc: ValidationError) -> list[tuple[str, str]]:
    """(key, message) pairs from a pydantic error, for spec error messages."""
    return [(".".join(str(p) for p in e["loc"]), e["msg"]) for e in exc.errors()]
