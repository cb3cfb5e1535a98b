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

from .assign import Assignment
from .episode import DISPOSITIONS
from .errors import DataError, SpecError
from .items import Item, load_dataset
from .models import PROVIDERS, ModelConfig
from .models.pricing import price_for
from .registry import ProtocolDef, param_errors


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataSpec(_Strict):
    datasets: list[str] = Field(min_length=1)  # built-in names or JSONL paths
    limit: int | None = Field(default=None, ge=1)  # items per dataset, in file order
    mapping: dict[str, str] = {}  # source field -> schema field


class ProtocolSpec(_Strict):
    name: str
    params: dict[str, Any] = {}
    roles: dict[str, str] = {}  # role -> model alias or "provider/model"
    dispositions: dict[str, str] = {}
    sweep: dict[str, list[Any]] = {}  # "params.x" / "roles.r" / "dispositions.r" -> values


class BudgetSpec(_Strict):
    """Run-wide caps; reaching one stops new calls and leaves the run resumable."""

    usd: float | None = Field(default=None, gt=0)
    tokens: int | None = Field(default=None, gt=0)


class BatchSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    seed: int = 0
    concurrency: int = Field(default=16, ge=1)  # episodes in flight at once
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
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(str(path), "<file>", f"cannot read: {exc.strerror}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(str(path), "<toml>", str(exc)) from None
    try:
        spec = BatchSpec(**raw)
    except ValidationError as exc:
        raise _err(path, exc) from None
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
        if cfg.api_key_env and cfg.api_key_env not in os.environ:
            raise SpecError(str(path), f"models.{alias}.api_key_env",
                            f"environment variable {cfg.api_key_env} is not set")
        if cfg.provider == "openai" and not cfg.base_url and "OPENAI_API_KEY" not in os.environ \
                and not cfg.api_key_env:
            raise SpecError(str(path), f"models.{alias}",
                            "provider 'openai' without base_url needs OPENAI_API_KEY in the environment")
    return models


def _load_items(path: Path, spec: BatchSpec, limit: int | None) -> list[Item]:
    items: list[Item] = []
    seen: dict[str, int] = {}
    cap = min(x for x in (spec.data.limit, limit) if x) if (spec.data.limit or limit) else None
    for i, name in enumerate(spec.data.datasets):
        try:
            loaded = load_dataset(name, base_dir=path.parent, mapping=spec.data.mapping or None)
        except FileNotFoundError:
            raise SpecError(str(path), f"data.datasets[{i}]",
                            f"{name!r} is neither a built-in dataset nor an existing file") from None
        except DataError as exc:
            raise SpecError(str(path), f"data.datasets[{i}]", str(exc)) from None
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
        for key in pspec.sweep:
            section, _, field = key.partition(".")
            if section not in ("params", "roles", "dispositions") or not field:
                raise SpecError(str(path), f"{where}.sweep.{key}",
                                "expected 'params.<name>', 'roles.<role>' or 'dispositions.<role>'")
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
                for assignment in proto.schedule(item, proto.advocates, rng):
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
                                             dict(roles), dict(dispositions), spec.seed))
    return plans
