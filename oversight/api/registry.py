"""The @protocol decorator and registry.

A protocol is an async function `(ep: Episode, **params) -> Verdict`. Its keyword parameters,
typed and defaulted, become a frozen pydantic model that a batch spec sets and validates —
hashable, so it keys episodes for resume.
"""

from __future__ import annotations

import inspect
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Awaitable, Callable

from pydantic import BaseModel, ConfigDict, Strict, ValidationError, create_model

from .treatments import SCHEDULES, TREATMENTS, Schedule

ProtocolFn = Callable[..., Awaitable[Any]]


@dataclass
class ProtocolDef:
    name: str
    fn: ProtocolFn
    roles: tuple[str, ...]
    schedule: Schedule
    advocates: tuple[str, ...]  # roles that are assigned an answer to argue for
    context_roles: tuple[str, ...]  # roles allowed to read the hidden context
    decides: str  # the role whose answer is the protocol's answer (judge accuracy)
    params: type[BaseModel]
    doc: str = ""
    source: str = ""  # where it was loaded from
    prompts_dir: str | None = None
    attacker: str | None = None  # the role a treatment may tell to misbehave
    attack: str = "schemer"  # the disposition it is told, unless the spec says otherwise
    treatment: str = "none"  # default treatment schedule: none | paired | attack_rate | cross
    artefact: str | None = None  # the role whose answer is the artefact (outcome truth)

    @property
    def judge(self) -> str:  # the name this field had
        return self.decides

    def make_params(self, values: dict[str, Any]) -> BaseModel:
        """Validate spec values; raises pydantic.ValidationError naming the bad field."""
        return self.params(**values)


REGISTRY: dict[str, ProtocolDef] = {}
_loading_source: list[str] = []  # set by the plugin loader so errors can name the file


class ProtocolConflict(Exception):
    pass


def protocol(*, roles: tuple[str, ...], decides: str | None = None,
             assign: str | Schedule = "judge_only", advocates: tuple[str, ...] | None = None,
             context: tuple[str, ...] = (), attacker: str | None = None, attack: str = "schemer",
             treatment: str | None = None, artefact: str | None = None, name: str | None = None,
             judge: str | None = None) -> Callable[[ProtocolFn], ProtocolFn]:
    """Register an async protocol.

    roles: every role the protocol uses; decides: the role whose answer is the protocol's
    (required when there are several roles; `judge=` is the same); assign: an answer schedule
    (treatments.py) for the advocates (default: every role but the decider, when the schedule
    assigns any); context: roles that may read the item's hidden context; attacker: the role a
    treatment may tell to misbehave, `attack` the disposition it gets (default "schemer"),
    `treatment` the default schedule of those arms ("paired" when there is an attacker);
    artefact: the role whose answer is judged bad or not (the outcome truth).
    """
    if isinstance(assign, str) and assign not in SCHEDULES:
        raise ValueError(f"@protocol(assign={assign!r}): unknown schedule; known: "
                         f"{', '.join(sorted(SCHEDULES))} (or pass a schedule function)")
    if not isinstance(assign, str) and not callable(assign):
        raise TypeError("@protocol(assign=...): expected a schedule name or function")
    schedule = SCHEDULES[assign] if isinstance(assign, str) else assign
    if decides is not None and judge is not None and decides != judge:
        raise TypeError(f"@protocol: decides={decides!r} and judge={judge!r} disagree; give one")
    decider = decides or judge
    _check_roles(roles, advocates, context, decider)
    for arg, role in (("attacker", attacker), ("artefact", artefact)):
        if role is not None and role not in roles:
            raise TypeError(f"@protocol({arg}={role!r}): not one of roles {tuple(roles)}")
    if decider is None:
        if len(roles) != 1:
            raise TypeError(f"@protocol(roles={tuple(roles)}): name the role whose answer is the "
                            "protocol's with decides=... (it is never guessed from the order)")
        decider = roles[0]
    arity = getattr(schedule, "advocates", None)
    if advocates is None:
        advocates = () if arity == 0 else tuple(r for r in roles if r != decider)
    if arity is not None and len(advocates) != arity:
        raise TypeError(f"@protocol(assign={getattr(schedule, '__name__', schedule)!r}): the "
                        f"schedule assigns answers to {arity} advocate(s), but the protocol has "
                        f"{len(advocates)}: {tuple(advocates)} (set advocates=...)")
    treatment = treatment or ("paired" if attacker else "none")
    if treatment not in TREATMENTS:
        raise ValueError(f"@protocol(treatment={treatment!r}): expected one of {', '.join(TREATMENTS)}")

    def register(fn: ProtocolFn) -> ProtocolFn:
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"protocol {fn.__name__} must be declared with 'async def'")
        proto = ProtocolDef(
            name=name or fn.__name__, fn=fn, roles=tuple(roles), schedule=schedule,
            advocates=tuple(advocates), context_roles=tuple(context), decides=decider,
            params=_params_model(fn), doc=inspect.getdoc(fn) or "",
            source=_loading_source[-1] if _loading_source else fn.__module__,
            attacker=attacker, attack=attack, treatment=treatment, artefact=artefact,
        )
        previous = REGISTRY.get(proto.name)
        if previous is not None and previous.source != proto.source:
            raise ProtocolConflict(f"protocol {proto.name!r} from {proto.source} is already "
                                   f"defined in {previous.source}")
        if previous is not None and previous.fn.__module__ == fn.__module__ \
                and previous.fn.__qualname__ != fn.__qualname__:  # not a reload: two functions
            raise ProtocolConflict(f"protocol {proto.name!r} is defined twice in {proto.source} "
                                   f"({previous.fn.__qualname__} and {fn.__qualname__})")
        REGISTRY[proto.name] = proto
        fn.protocol = proto  # type: ignore[attr-defined]
        return fn

    return register


def _check_roles(roles: Any, advocates: Any, context: Any, judge: str | None) -> None:
    """@protocol's role arguments name roles it declares (a bare string is a classic slip)."""
    def names(value: Any, arg: str) -> tuple[str, ...]:
        if isinstance(value, str) or not all(isinstance(r, str) and r for r in value):
            raise TypeError(f"@protocol({arg}=...): expected a tuple of role names such as "
                            f"('judge',) (note the comma), got {value!r}")
        return tuple(value)

    declared = names(roles, "roles")
    if not declared or len(set(declared)) != len(declared):
        raise TypeError(f"@protocol(roles=...): expected distinct role names, got {roles!r}")
    for arg, value in (("advocates", advocates), ("context", context),
                       ("judge", None if judge is None else (judge,))):
        unknown = [r for r in names(value or (), arg) if r not in declared]
        if unknown:
            raise TypeError(f"@protocol({arg}=...): {', '.join(map(repr, unknown))} is not one of "
                            f"roles {declared}")


def frame_in(exc: BaseException, files: set[str] | None = None) -> tuple[str, int] | None:
    """(file, line) of the deepest traceback frame in one of `files` (resolved paths), or
    of the deepest frame at all: where a user's protocol, schedule or template failed."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith("<")]
    if files is not None:
        frames = [f for f in frames if _resolved(f.filename) in files]
    return (frames[-1].filename, frames[-1].lineno or 0) if frames else None


def shown(path: str | Path) -> str:
    """A path as a user would type it: relative to the working folder when inside it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except (ValueError, OSError):
        return str(path)


def _resolved(filename: str) -> str:
    try:
        return str(Path(filename).resolve())
    except OSError:
        return filename


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
    return [(_dotted(e["loc"]), e["msg"].removeprefix("Value error, ")) for e in exc.errors()]


def _dotted(loc: tuple[Any, ...]) -> str:
    """('protocols', 0, 'params', 'rounds') -> 'protocols[0].params.rounds'."""
    key = ""
    for part in loc:
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
    return key
