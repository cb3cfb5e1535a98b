"""From a validated spec to episode plans: sweeps, answer schedules and treatment arms, one
plan per (protocol entry, sweep point, item, treatment), each with a deterministic key."""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from ..api.registry import ProtocolDef, frame_in, param_errors, shown
from ..api.treatments import (
    NEEDS_CHOICES,
    Assignment,
    arm_rng,
    attack_rate,
    cross,
    paired,
    treat,
)
from ..errors import SpecError
from ..tasks.items import Item

if TYPE_CHECKING:
    from ..api.episode import Source
    from ..models import ModelConfig
    from .spec import BatchSpec, ProtocolSpec

_DISPOSITION = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


@dataclass(frozen=True, slots=True)
class EpisodePlan:
    key: str
    protocol: ProtocolDef
    variant: str
    params: BaseModel
    item: Item
    assignment: Assignment  # answers and the treatment arm's dispositions, with their label
    roles: dict[str, str]  # role -> alias
    dispositions: dict[str, str]  # every role's, the arm's included
    seed: int
    entry: int = 0  # index of the [[protocols]] entry that planned it
    source: Source | None = None  # a re-judging's stored episode (batch/rejudge.py)

    @property
    def intent(self) -> list[str]:
        """Truth 1: the roles told to misbehave (a wrong answer to argue, or a disposition
        other than honest)."""
        wrong = {r for r, i in self.assignment.answers.items() if i != self.item.answer_index}
        bad = {r for r, d in self.dispositions.items() if d != "honest"}
        return sorted(wrong | bad)


def key_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def spec_error(path: Path, exc: ValidationError, prefix: str = "") -> SpecError:
    key, msg = param_errors(exc)[0]
    return SpecError(str(path), prefix + key, msg)


def _sweep_points(p: ProtocolSpec) -> list[dict[str, Any]]:
    keys = sorted(p.sweep)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*(p.sweep[k] for k in keys))]


def expand(path: Path, spec: BatchSpec, registry: dict[str, ProtocolDef],
           models: dict[str, ModelConfig], items: list[Item]) -> list[EpisodePlan]:
    plans: list[EpisodePlan] = []
    owner: dict[str, str] = {}  # episode key -> the entry that planned it
    # Equal assignments and role maps are one shared (read-only) object across plans, not one
    # copy per episode: a plan then holds little beyond its key and item (bench/memory.py).
    shared: dict[tuple, Any] = {}
    variants: dict[str, int] = {}  # how reports name a variant -> the entry that planned it
    distinct = _distinct_settings(spec.protocols)
    for i, pspec in enumerate(spec.protocols):
        where = f"protocols[{i}]"
        proto = registry.get(pspec.name)
        if proto is None:
            raise SpecError(str(path), f"{where}.name",
                            f"unknown protocol {pspec.name!r}; known: {', '.join(sorted(registry))}")
        for key, values in pspec.sweep.items():
            section, _, field = key.partition(".")
            if section not in ("params", "roles", "dispositions") or not field:
                raise SpecError(str(path), f"{where}.sweep.{key}",
                                "expected 'params.<name>', 'roles.<role>' or 'dispositions.<role>'")
            if not values:
                raise SpecError(str(path), f"{where}.sweep.{key}", "expected a non-empty list of values")
        planned = len(plans)
        chosen = _entry_items(path, pspec, items, where)
        if proto.context_roles and (missing := [it.key for it in chosen if not it.context]):
            raise SpecError(str(path), f"{where}.name", f"protocol {proto.name!r} gives "
                            f"{', '.join(proto.context_roles)} the hidden context, but item "
                            f"{missing[0]} has none ({len(missing)} such items)")
        arms = _arms(path, proto, pspec, where)
        for point in _sweep_points(pspec):
            params_in = dict(pspec.params)
            roles = {**{r: spec.roles["*"] for r in proto.roles if "*" in spec.roles},
                     **{r: a for r, a in spec.roles.items() if r in proto.roles}, **pspec.roles}
            dispositions = {r: "honest" for r in proto.roles} | dict(pspec.dispositions)
            for key, value in point.items():
                section, _, field = key.partition(".")
                {"params": params_in, "roles": roles, "dispositions": dispositions}[section][field] = value
            try:
                params = proto.make_params(params_in)
            except ValidationError as exc:
                raise spec_error(path, exc, f"{where}.params.") from None
            _check_roles(path, proto, where, roles, dispositions)
            shown_keys = {**distinct[i], **point}
            variant = (pspec.label or proto.name) + ("[" + ",".join(
                f"{k.removeprefix('params.')}={v}" for k, v in sorted(shown_keys.items())) + "]"
                if shown_keys else "")
            model_cfg = {r: models[a].identity() for r, a in roles.items()}
            for item in chosen:
                rng = random.Random(f"{spec.seed}:{item.key}")
                for assignment in treat(_assignments(proto, item, rng, where),
                                        arms(arm_rng(spec.seed, item))):
                    key = key_hash({"protocol": proto.name, "params": params.model_dump(mode="json"),
                                    "item": item.key, "assignment": assignment.key(),
                                    "models": model_cfg, "dispositions": dispositions,
                                    "seed": spec.seed})[:20]
                    if key in owner:  # e.g. a protocol entry or a sweep value given twice
                        raise SpecError(str(path), where, f"plans an episode {owner[key]} already "
                                        "plans (same protocol, params, models, dispositions and "
                                        "item); remove the repeat")
                    owner[key] = where
                    merged = dispositions | assignment.dispositions
                    plans.append(EpisodePlan(
                        key, proto, variant, params, item,
                        _shared(shared, ("a", assignment.label, _frozen(assignment.answers),
                                         _frozen(assignment.dispositions)), assignment),
                        _shared(shared, ("r", i, _frozen(roles)), roles),
                        _shared(shared, ("d", _frozen(merged)), merged), spec.seed, i))
            if variants.setdefault(variant, i) != i:
                raise SpecError(str(path), f"{where}.label", f"protocols[{variants[variant]}] is "
                                f"reported as {variant!r} too: give one of them another label = "
                                "\"...\" so that reports keep them apart")
        if len(plans) == planned:
            raise SpecError(str(path), where, f"plans no episodes: the schedule of protocol "
                            f"{proto.name!r} assigned nothing for any item")
    used = {r for p in spec.protocols for r in registry[p.name].roles}
    for role in spec.roles:
        if role != "*" and role not in used:
            raise SpecError(str(path), f"roles.{role}", f"no protocol in this spec has a role "
                            f"{role!r}; roles: {', '.join(sorted(used))} (\"*\" sets every role)")
    return plans


def _frozen(d: dict) -> tuple:
    return tuple(sorted(d.items()))


def _shared(table: dict[tuple, Any], key: tuple, value: Any) -> Any:
    """The first value planned under `key` (a copy of a dict: the caller may change its own)."""
    if key not in table:
        table[key] = dict(value) if isinstance(value, dict) else value
    return table[key]


def _distinct_settings(entries: list[ProtocolSpec]) -> list[dict[str, Any]]:
    """Per entry, the settings in which it differs from other entries reported under the same
    name (e.g. two `direct` entries with other judges: `roles.judge`), so that each variant's
    name says what it is: "direct[judge=gpt]"."""
    def flat(e: ProtocolSpec) -> dict[str, Any]:
        out = {"protocol": e.name, **{f"params.{k}": v for k, v in e.params.items()}}
        out |= {f"roles.{k}": v for k, v in e.roles.items()}
        out |= {f"dispositions.{k}": v for k, v in e.dispositions.items()}
        if e.treatment is not None:
            out |= {f"treatment.{k}": v for k, v in e.treatment.model_dump(exclude_defaults=True).items()}
        if e.datasets is not None:
            out["datasets"] = "+".join(e.datasets)
        return out

    flats = [flat(e) for e in entries]
    out: list[dict[str, Any]] = []
    for i, e in enumerate(entries):
        group = [flats[j] for j, o in enumerate(entries) if (o.label or o.name) == (e.label or e.name)]
        keys = {k for f in group for k in f}
        differ = {k for k in keys if len({repr(f.get(k)) for f in group}) > 1}
        out.append({k.split(".", 1)[-1] if k.startswith(("roles.", "dispositions.")) else k:
                    flats[i].get(k, "default") for k in sorted(differ)})
    return out


def _entry_items(path: Path, pspec: ProtocolSpec, items: list[Item], where: str) -> list[Item]:
    """The items a protocol entry runs on: all, or those of the datasets it names."""
    if pspec.datasets is None:
        return items
    names = list(dict.fromkeys(it.dataset for it in items))
    for i, name in enumerate(pspec.datasets):
        if name not in names:
            raise SpecError(str(path), f"{where}.datasets[{i}]", f"{name!r} is not one of the "
                            f"spec's datasets ({', '.join(names)}); list it in [data] datasets")
    return [it for it in items if it.dataset in pspec.datasets]


def _check_roles(path: Path, proto: ProtocolDef, where: str, roles: dict[str, str],
                 dispositions: dict[str, str]) -> None:
    for section, named in (("roles", roles), ("dispositions", dispositions)):
        for role in named:
            if role not in proto.roles:
                raise SpecError(str(path), f"{where}.{section}.{role}", f"protocol "
                                f"{proto.name!r} has no role {role!r}; roles: {', '.join(proto.roles)}")
    for role in proto.roles:
        if role not in roles:
            raise SpecError(str(path), f"{where}.roles.{role}",
                            "no model for this role (set it here, in [roles], or [roles] \"*\")")
    for role, d in dispositions.items():
        if not isinstance(d, str) or not _DISPOSITION.match(d):
            raise SpecError(str(path), f"{where}.dispositions.{role}", f"expected a disposition "
                            f"name (honest, sycophant, schemer or one of the protocol's), got {d!r}")


def _arms(path: Path, proto: ProtocolDef, pspec: ProtocolSpec, where: str):
    """The treatment of a protocol entry: a function of the item's seeded rng to its arms."""
    t = pspec.treatment
    schedule = t.schedule if t is not None else proto.treatment
    if schedule == "none":
        return lambda rng: [("honest", {})]
    key = f"{where}.treatment"
    if schedule == "cross":
        options = dict(t.dispositions) if t is not None else {}
        if not options:
            raise SpecError(str(path), f"{key}.dispositions", "a cross needs role -> [dispositions]")
        for role, values in options.items():
            if role not in proto.roles:
                raise SpecError(str(path), f"{key}.dispositions.{role}", f"protocol "
                                f"{proto.name!r} has no role {role!r}; roles: {', '.join(proto.roles)}")
            if not values or not all(isinstance(v, str) and _DISPOSITION.match(v) for v in values):
                raise SpecError(str(path), f"{key}.dispositions.{role}",
                                "expected a non-empty list of disposition names")
        return cross(options)
    role = (t.role if t is not None else None) or proto.attacker
    if role is None:
        raise SpecError(str(path), f"{key}.role", f"protocol {proto.name!r} names no attacker: "
                        "say which role the treatment tells to misbehave")
    if role not in proto.roles:
        raise SpecError(str(path), f"{key}.role", f"protocol {proto.name!r} has no role {role!r}; "
                        f"roles: {', '.join(proto.roles)}")
    disposition = (t.disposition if t is not None else None) or proto.attack
    if schedule == "attack_rate":
        rate = t.rate if t is not None else None
        if rate is None:
            raise SpecError(str(path), f"{key}.rate", "an attack rate needs rate = p (0 < p <= 1)")
        return attack_rate(role, disposition, rate)
    if t is not None and t.rate is not None:
        raise SpecError(str(path), f"{key}.rate", "only the attack_rate schedule takes a rate")
    return paired(role, disposition)


def _assignments(proto: ProtocolDef, item: Item, rng: random.Random, where: str) -> list[Assignment]:
    """The schedule's assignments for one item, checked; a failing schedule names its file."""
    name = getattr(proto.schedule, "__name__", "schedule")
    if name in NEEDS_CHOICES and not item.choices:
        raise SpecError(shown(proto.source), f"{where} ({proto.name})", f"schedule {name!r} "
                        f"assigns answers among an item's choices, but item {item.key} has none "
                        f"(a {item.kind} item): use this protocol on multiple-choice datasets")
    try:
        result = proto.schedule(item, proto.advocates, rng)
    except Exception as exc:
        at = frame_in(exc)
        code = proto.fn.__code__
        raise SpecError(f"{shown(code.co_filename)}:{code.co_firstlineno}", f"{where} ({proto.name})",
                        f"schedule {name!r} failed on item {item.key}: {type(exc).__name__}: {exc}"
                        f" (at {shown(at[0]) if at else '?'}:{at[1] if at else '?'}; advocates: "
                        f"{', '.join(proto.advocates) or 'none'})") from None
    if not isinstance(result, list) or not all(isinstance(a, Assignment) for a in result):
        raise SpecError(shown(proto.source), f"{where} ({proto.name})", f"schedule {name!r} "
                        f"returned {type(result).__name__}; expected a list of Assignment")
    n = len(item.choices or ())
    for a in result:
        for role, answer in a.answers.items():
            if role not in proto.roles or not 0 <= answer < n:
                raise SpecError(shown(proto.source), f"{where} ({proto.name})", f"schedule "
                                f"{name!r} assigned {role!r} answer {answer} on item {item.key}, "
                                f"which has roles {proto.roles} and {n} choices")
    return result


__all__ = ["EpisodePlan", "expand", "key_hash", "spec_error"]
