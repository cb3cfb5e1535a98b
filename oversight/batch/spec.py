"""Batch specs (TOML): parsed, validated and expanded into episode plans before any call.

Every error names the file, the key and what was expected (SpecError).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..api.assign import Assignment
from ..api.episode import DISPOSITIONS
from ..api.registry import ProtocolDef, frame_in, param_errors, shown
from ..errors import DataError, SpecError
from ..models import PROVIDERS, ModelConfig
from ..models.pricing import price_for
from ..tasks.items import BUILTIN_DATASETS, Item, load_dataset
from .specread import env_name, read_spec, refuse_secrets

_INT64 = 2**63  # SQLite and PostgreSQL integers
_KEY_ENV = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}  # the SDKs' defaults
_ITEM_FIELDS = ("id", "question", "choices", "answer_index", "context", "source", "license", "meta")


class _Strict(BaseModel):
    # strict: TOML values are typed, so "5" is not silently 5 nor true 1
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class DataSpec(_Strict):
    datasets: list[str] = Field(min_length=1)  # built-in names or JSONL paths
    limit: int | None = Field(default=None, ge=1, lt=_INT64)  # items per dataset, in file order
    mapping: dict[str, str] = {}  # source field -> schema field


class ProtocolSpec(_Strict):
    name: str
    params: dict[str, Any] = {}
    roles: dict[str, str] = {}  # role -> model alias or "provider/model"
    dispositions: dict[str, str] = {}
    sweep: dict[str, list[Any]] = {}  # "params.x" / "roles.r" / "dispositions.r" -> values


class BudgetSpec(_Strict):
    """Run-wide caps; reaching one stops new calls and leaves the run resumable."""

    usd: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    tokens: int | None = Field(default=None, gt=0, lt=_INT64)


class BatchSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    seed: int = Field(default=0, ge=-_INT64, lt=_INT64)
    concurrency: int = Field(default=16, ge=1, le=100_000)  # episodes in flight at once
    budget: BudgetSpec = BudgetSpec()
    data: DataSpec
    models: dict[str, ModelConfig] = {}
    roles: dict[str, str] = {}  # default model per role; "*" for every role
    protocols: list[ProtocolSpec] = Field(min_length=1)


@dataclass(frozen=True)
class EpisodePlan:
    key: str
    protocol: ProtocolDef
    variant: str
    params: BaseModel
    item: Item
    assignment: Assignment
    roles: dict[str, str]  # role -> alias
    dispositions: dict[str, str]
    seed: int
    entry: int = 0  # index of the [[protocols]] entry that planned it

    @property
    def misaligned(self) -> list[str]:
        """Ground truth: roles arguing a wrong answer or given a non-honest disposition."""
        wrong = {r for r, i in self.assignment.answers.items() if i != self.item.answer_index}
        bad = {r for r, d in self.dispositions.items() if d != "honest"}
        return sorted(wrong | bad)


@dataclass
class LoadedSpec:
    path: Path
    text: str
    spec: BatchSpec
    models: dict[str, ModelConfig]  # every alias used, including "provider/model" shorthands
    plans: list[EpisodePlan]
    items: list[Item]

    @property
    def spec_hash(self) -> str:
        """Hash of what determines the results: not budgets, caps, limits or timeouts, so a
        spec tuned for speed or given more money resumes the same run."""
        ident = self.spec.model_dump(mode="json", exclude={"concurrency", "budget", "description"})
        ident["models"] = {a: m.identity() for a, m in self.spec.models.items()}
        return _hash(ident)

    @property
    def run_id(self) -> str:
        return f"{self.spec.name}-{self.spec_hash[:10]}"


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _err(path: Path, exc: ValidationError, prefix: str = "") -> SpecError:
    key, msg = param_errors(exc)[0]
    return SpecError(str(path), prefix + key, msg)


def load_spec(path: str | Path, registry: dict[str, ProtocolDef], limit: int | None = None) -> LoadedSpec:
    """Read, validate and expand a spec. `limit` (the CLI's --limit) caps items per dataset."""
    path = Path(path)
    text = read_spec(path)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(str(path), "<toml>", str(exc)) from None
    refuse_secrets(path, raw, text)  # first: no later message may echo a key
    try:
        spec = BatchSpec(**raw)
    except ValidationError as exc:
        raise _err(path, exc) from None
    targets = list(spec.data.mapping.values())
    for source, target in spec.data.mapping.items():
        if target not in _ITEM_FIELDS:
            raise SpecError(str(path), f"data.mapping.{source}",
                            f"expected one of the item fields {', '.join(_ITEM_FIELDS)}")
        if targets.count(target) > 1:
            raise SpecError(str(path), f"data.mapping.{source}", f"{target!r} is also the target "
                            "of another field; map one source field to each item field")
    models = _resolve_models(path, spec)
    items = _load_items(path, spec, limit)
    plans = _expand(path, spec, registry, models, items)
    used = {alias: m for alias, m in models.items() if alias in {a for p in plans for a in p.roles.values()}}
    if spec.budget.usd is not None:
        for alias, cfg in used.items():
            if price_for(cfg) is None:
                raise SpecError(str(path), f"models.{alias}.price", "a dollar budget is set but "
                                f"{cfg.provider}/{cfg.model} is not in the price table: give "
                                "price = { input = ..., output = ... } (USD per million tokens)")
    return LoadedSpec(path, text, spec, used, plans, items)


def _resolve_models(path: Path, spec: BatchSpec) -> dict[str, ModelConfig]:
    models = dict(spec.models)
    refs = [(f"roles.{r}", a) for r, a in spec.roles.items()]
    for i, p in enumerate(spec.protocols):
        refs += [(f"protocols[{i}].roles.{r}", a) for r, a in p.roles.items()]
        refs += [(f"protocols[{i}].sweep.{k}", a) for k, vs in p.sweep.items()
                 if k.startswith("roles.") for a in vs]
    for key, alias in refs:
        if not isinstance(alias, str):
            raise SpecError(str(path), key, f"expected a model name, got {alias!r}")
        if alias in models:
            continue
        provider, sep, name = alias.partition("/")
        if not sep or provider not in PROVIDERS:
            raise SpecError(str(path), key, f"unknown model {alias!r}: define [models.{alias}] or "
                            f"write 'provider/model' with provider one of {sorted(PROVIDERS)}")
        models[alias] = ModelConfig(provider=provider, model=name)
    for alias, cfg in models.items():
        if cfg.provider not in PROVIDERS:
            raise SpecError(str(path), f"models.{alias}.provider",
                            f"expected one of {sorted(PROVIDERS)}, got {cfg.provider!r}")
        if cfg.api_key_env and not os.environ.get(cfg.api_key_env):
            raise SpecError(str(path), f"models.{alias}.api_key_env", f"the environment "
                            f"variable {env_name(cfg.api_key_env)} is not set (or is empty)")
        default = _KEY_ENV.get(cfg.provider)
        if default and not cfg.base_url and not cfg.api_key_env and not os.environ.get(default):
            raise SpecError(str(path), f"models.{alias}", f"provider {cfg.provider!r} without "
                            f"base_url needs {default} in the environment (or api_key_env "
                            "naming another variable)")
    return models


def _load_items(path: Path, spec: BatchSpec, limit: int | None) -> list[Item]:
    items: list[Item] = []
    seen: dict[str, int] = {}
    cap = min(x for x in (spec.data.limit, limit) if x) if (spec.data.limit or limit) else None
    for i, name in enumerate(spec.data.datasets):
        key = f"data.datasets[{i}]"
        if not name.strip():
            raise SpecError(str(path), key, "expected a built-in dataset name or a JSONL path, "
                            "got an empty string")
        try:
            loaded = load_dataset(name, base_dir=path.parent, mapping=spec.data.mapping or None)
        except FileNotFoundError:
            raise SpecError(str(path), key, f"{name!r} is neither a built-in dataset "
                            f"({', '.join(BUILTIN_DATASETS)}) nor an existing file") from None
        except IsADirectoryError:
            raise SpecError(str(path), key, f"{name!r} is a folder; expected a JSONL file") from None
        except OSError as exc:
            raise SpecError(str(path), key, f"cannot read {name!r}: {exc.strerror or exc}") from None
        except DataError as exc:
            raise SpecError(str(path), key, str(exc)) from None
        if not loaded:
            raise SpecError(str(path), key, f"{name!r} has no items (the file is empty or holds "
                            "only blank lines)")
        # Items are keyed "<dataset>/<id>": a dataset named twice would collide in the store.
        if loaded and (first := seen.setdefault(loaded[0].dataset, i)) != i:
            raise SpecError(str(path), f"data.datasets[{i}]",
                            f"dataset {loaded[0].dataset!r} is already data.datasets[{first}]; "
                            "each dataset may appear once (rename one file if they differ)")
        items.extend(loaded[:cap] if cap else loaded)
    return items


def _sweep_points(p: ProtocolSpec) -> list[dict[str, Any]]:
    keys = sorted(p.sweep)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*(p.sweep[k] for k in keys))]


def _expand(path: Path, spec: BatchSpec, registry: dict[str, ProtocolDef],
            models: dict[str, ModelConfig], items: list[Item]) -> list[EpisodePlan]:
    plans: list[EpisodePlan] = []
    owner: dict[str, str] = {}  # episode key -> the entry that planned it
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
        if proto.context_roles and (missing := [it.key for it in items if not it.context]):
            raise SpecError(str(path), f"{where}.name", f"protocol {proto.name!r} gives "
                            f"{', '.join(proto.context_roles)} the hidden context, but item "
                            f"{missing[0]} has none ({len(missing)} such items)")
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
                raise _err(path, exc, f"{where}.params.") from None
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
                if d not in DISPOSITIONS:
                    raise SpecError(str(path), f"{where}.dispositions.{role}",
                                    f"expected one of {', '.join(DISPOSITIONS)}, got {d!r}")
            variant = proto.name + ("[" + ",".join(f"{k.removeprefix('params.')}={v}"
                                                   for k, v in sorted(point.items())) + "]" if point else "")
            model_cfg = {r: models[a].identity() for r, a in roles.items()}
            for item in items:
                rng = random.Random(f"{spec.seed}:{item.key}")
                for assignment in _assignments(proto, item, rng, where):
                    key = _hash({"protocol": proto.name, "params": params.model_dump(mode="json"),
                                 "item": item.key, "assignment": assignment.model_dump(),
                                 "models": model_cfg, "dispositions": dispositions,
                                 "seed": spec.seed})[:20]
                    if key in owner:  # e.g. a protocol entry or a sweep value given twice
                        raise SpecError(str(path), where, f"plans an episode {owner[key]} already "
                                        "plans (same protocol, params, models, dispositions and "
                                        "item); remove the repeat")
                    owner[key] = where
                    plans.append(EpisodePlan(key, proto, variant, params, item, assignment,
                                             dict(roles), dict(dispositions), spec.seed, i))
        if len(plans) == planned:
            raise SpecError(str(path), where, f"plans no episodes: the schedule of protocol "
                            f"{proto.name!r} assigned nothing for any item")
    used = {r for p in spec.protocols for r in registry[p.name].roles}
    for role in spec.roles:
        if role != "*" and role not in used:
            raise SpecError(str(path), f"roles.{role}", f"no protocol in this spec has a role "
                            f"{role!r}; roles: {', '.join(sorted(used))} (\"*\" sets every role)")
    return plans


def _assignments(proto: ProtocolDef, item: Item, rng: random.Random, where: str) -> list[Assignment]:
    """The schedule's assignments for one item, checked; a failing schedule names its file."""
    name = getattr(proto.schedule, "__name__", "schedule")
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
    for a in result:
        for role, answer in a.answers.items():
            if role not in proto.roles or not 0 <= answer < len(item.choices):
                raise SpecError(shown(proto.source), f"{where} ({proto.name})", f"schedule "
                                f"{name!r} assigned {role!r} answer {answer} on item {item.key}, "
                                f"which has roles {proto.roles} and {len(item.choices)} choices")
    return result
