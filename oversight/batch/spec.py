"""Batch specs (TOML): parsed, validated and expanded into episode plans before any call.

Every error names the file, the key and what was expected (SpecError).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..api.prompts import PromptLibrary
from ..api.registry import ProtocolDef
from ..errors import DataError, SpecError
from ..models import PROVIDERS, ModelConfig
from ..models.pricing import price_for
from ..tasks.items import BUILTIN_DATASETS, DEFAULT_SOURCES, ITEM_FIELDS, Item, load_dataset
from .identity import code_identity
from .plans import EpisodePlan, expand, key_hash, spec_error
from .specread import env_name, read_spec, refuse_secrets

_INT64 = 2**63  # SQLite and PostgreSQL integers
_KEY_ENV = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}  # the SDKs' defaults
_BATCH_PROVIDERS = ("openai", "anthropic")  # `batch = true`: the providers with a batch API
# Names a `mapping` may rename a source field to: the item's fields, and the source names the
# loader reads them from by default.
_ITEM_FIELDS = tuple(dict.fromkeys([*ITEM_FIELDS, *(n for ns in DEFAULT_SOURCES.values() for n in ns)]))


class _Strict(BaseModel):
    # strict: TOML values are typed, so "5" is not silently 5 nor true 1
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class DatasetSpec(_Strict):
    """One dataset with its own profile: `fields` (item field = source field) and `constants`
    (item field = value), added to a built-in dataset's own profile."""

    name: str  # a built-in name or a JSONL/CSV path
    fields: dict[str, str] = {}
    constants: dict[str, Any] = {}
    limit: int | None = Field(default=None, ge=1, lt=_INT64)  # items of this dataset, in file order


class DataSpec(_Strict):
    datasets: list[str | DatasetSpec] = Field(min_length=1)  # names, paths, or tables
    limit: int | None = Field(default=None, ge=1, lt=_INT64)  # items per dataset, in file order
    mapping: dict[str, str] = {}  # every dataset: source field -> the name it is read as


_NAME = r"^[A-Za-z][A-Za-z0-9_]*$"  # a role's or disposition's name


class TreatmentSpec(_Strict):
    """Which roles a treatment tells to misbehave: `paired` (each item honest once and
    attacked once), `attack_rate` (each item attacked with probability `rate`, seeded),
    `cross` (every combination of `dispositions`), or `none`."""

    schedule: Literal["none", "paired", "attack_rate", "cross"] = "paired"
    role: str | None = Field(default=None, pattern=_NAME)  # default: the protocol's attacker
    disposition: str | None = Field(default=None, pattern=_NAME)  # default: the protocol's attack
    rate: float | None = Field(default=None, gt=0, le=1, allow_inf_nan=False)
    dispositions: dict[str, list[str]] = {}  # cross: role -> dispositions


class ProtocolSpec(_Strict):
    name: str
    label: str | None = Field(default=None, min_length=1)  # how reports name it (default: name)
    params: dict[str, Any] = {}
    roles: dict[str, str] = {}  # role -> model alias or "provider/model"
    dispositions: dict[str, str] = {}
    treatment: TreatmentSpec | None = None  # default: the protocol's own
    datasets: list[str] | None = None  # only these of [data] (by name: "boolq", a file's stem)
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


@dataclass
class LoadedSpec:
    path: Path
    text: str
    spec: BatchSpec
    models: dict[str, ModelConfig]  # every alias used, including "provider/model" shorthands
    plans: list[EpisodePlan]
    items: list[Item]
    code: dict | None = None  # batch/identity.py: protocol sources and templates, when known

    @property
    def spec_hash(self) -> str:
        """Hash of what determines the results: not budgets, caps, limits or timeouts, so a
        spec tuned for speed or given more money resumes the same run."""
        ident = self.spec.model_dump(mode="json", exclude={"concurrency", "budget", "description"})
        ident["models"] = {a: m.identity() for a, m in self.spec.models.items()}
        return key_hash(ident)

    @property
    def run_id(self) -> str:
        """name-<10 hex>: the hash of the spec's identity and, when loaded with the prompts,
        of the code and templates behind it (editing either starts a new run)."""
        ident = self.spec_hash if self.code is None else key_hash([self.spec_hash, self.code])
        return f"{self.spec.name}-{ident[:10]}"


def load_spec(path: str | Path, registry: dict[str, ProtocolDef], limit: int | None = None,
              prompts: PromptLibrary | None = None) -> LoadedSpec:
    """Read, validate and expand a spec. `limit` (the CLI's --limit) caps items per dataset;
    with `prompts`, the run's identity covers its protocols' code and templates."""
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
        raise spec_error(path, exc) from None
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
    plans = expand(path, spec, registry, models, items)
    used = {alias: m for alias, m in models.items() if alias in {a for p in plans for a in p.roles.values()}}
    if spec.budget.usd is not None:
        for alias, cfg in used.items():
            if price_for(cfg) is None:
                raise SpecError(str(path), f"models.{alias}.price", "a dollar budget is set but "
                                f"{cfg.provider}/{cfg.model} is not in the price table: give "
                                "price = { input = ..., output = ... } (USD per million tokens)")
    code = None
    if prompts is not None:
        code = code_identity(list({p.protocol.name: p.protocol for p in plans}.values()), prompts)
    return LoadedSpec(path, text, spec, used, plans, items, code)


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
        if cfg.batch is not None and cfg.provider not in _BATCH_PROVIDERS:
            raise SpecError(str(path), f"models.{alias}.batch", "provider batch APIs are those "
                            f"of {' and '.join(_BATCH_PROVIDERS)}; {cfg.provider!r} has none "
                            "(remove batch, or use one of those providers)")
        if cfg.provider == "mock":  # scripted replies: a malformed rule fails here, not mid-run
            from ..models.mock import check_options
            if (bad := check_options(cfg.options)) is not None:
                raise SpecError(str(path), f"models.{alias}.options.{bad[0]}", bad[1])
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
    for i, entry in enumerate(spec.data.datasets):
        key = f"data.datasets[{i}]"
        ds = entry if isinstance(entry, DatasetSpec) else DatasetSpec(name=entry)
        name = ds.name
        if not name.strip():
            raise SpecError(str(path), key, "expected a built-in dataset name or a JSONL path, "
                            "got an empty string")
        for field_name in [*ds.fields, *ds.constants]:
            if field_name not in ITEM_FIELDS:
                raise SpecError(str(path), f"{key}.{'fields' if field_name in ds.fields else 'constants'}"
                                f".{field_name}", f"expected an item field: {', '.join(ITEM_FIELDS)}")
        try:
            loaded = load_dataset(name, base_dir=path.parent, mapping=spec.data.mapping or None,
                                  fields=ds.fields, constants=ds.constants)
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
        if (first := seen.setdefault(loaded[0].dataset, i)) != i:
            raise SpecError(str(path), key, f"dataset {loaded[0].dataset!r} is already "
                            f"data.datasets[{first}]; each dataset may appear once (rename one "
                            "file if they differ)")
        caps = [x for x in (cap, ds.limit) if x]
        items.extend(loaded[:min(caps)] if caps else loaded)
    return items
