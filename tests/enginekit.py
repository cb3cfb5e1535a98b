"""Helpers for the engine tests: write a TOML spec, run it with mock models, read the store.

Not a test module (no `test_` prefix). Used by test_protocols.py and test_store.py, and (the
boolq spec, run_inproc, direct/debate) by the HTTP tests test_resilience.py and
test_limits_cache.py.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oversight.api.plugins import load_all
from oversight.batch.runner import RunSummary, run_batch
from oversight.batch.spec import LoadedSpec, load_spec
from oversight.models import Model
from oversight.store import Store


def toml_value(v: Any) -> str:
    """A TOML inline value (one line) for str/bool/int/float/list/dict."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # JSON string escapes are valid TOML basic-string escapes
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v))


def write_spec(path: Path, *, name: str = "t", datasets: list[str], protocols: list[dict],
               models: dict[str, dict] | None = None, roles: dict[str, str] | None = None,
               seed: int = 0, limit: int | None = None, concurrency: int = 4) -> Path:
    """`models`: alias -> config dict (provider defaults to "mock")."""
    lines = [f"name = {toml_value(name)}", f"seed = {seed}", f"concurrency = {concurrency}"]
    data: dict[str, Any] = {"datasets": datasets}
    if limit is not None:
        data["limit"] = limit
    lines.append(f"data = {toml_value(data)}")
    if models:
        lines.append("models = " + toml_value({a: {"provider": "mock", **c} for a, c in models.items()}))
    if roles:
        lines.append(f"roles = {toml_value(roles)}")
    lines.append(f"protocols = {toml_value(protocols)}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def boolq_spec(path: Path, *, name: str, models: dict[str, dict], protocols: list[dict],
               limit: int, concurrency: int = 4, budget: dict | None = None) -> Path:
    """A boolq spec with models as given (no provider default). [budget] comes last so a test
    can rewrite that table alone."""
    lines = [f"name = {toml_value(name)}", f"concurrency = {concurrency}",
             f"data = {toml_value({'datasets': ['boolq'], 'limit': limit})}",
             f"models = {toml_value(models)}", f"protocols = {toml_value(protocols)}"]
    if budget:
        lines += ["", "[budget]"] + [f"{k} = {toml_value(v)}" for k, v in budget.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def direct(alias: str = "m") -> dict:
    return {"name": "direct", "roles": {"judge": alias}}


def debate(alias: str = "m", **params) -> dict:
    protocol = {"name": "debate", "roles": {"debater_a": alias, "debater_b": alias, "judge": alias}}
    return {**protocol, "params": params} if params else protocol


def mock(script: list[str] | None = None, rules: list[dict] | None = None, **options) -> dict:
    """A mock model config: a cycled script and/or substring rules, plus other mock options."""
    if script is not None:
        options["script"] = script
    if rules is not None:
        options["rules"] = rules
    return {"provider": "mock", "options": options}


@dataclass
class Result:
    loaded: LoadedSpec
    models: dict[str, Model]
    summary: RunSummary

    def calls(self, alias: str) -> list:
        """Every ModelRequest the mock behind `alias` received in this run."""
        return self.models[alias].provider.calls if alias in self.models else []

    def prompts(self, alias: str) -> list[str]:
        """Each request's messages joined: the full text the model was shown."""
        return ["\n".join(c for _, c in req.messages) for req in self.calls(alias)]

    def total_calls(self) -> int:
        return sum(m.provider.n_calls for m in self.models.values())


def load(spec_path: Path, *, limit: int | None = None, protocol_dirs: list[Path] = ()) -> LoadedSpec:
    registry, prompts = load_all(protocol_dirs=list(protocol_dirs))
    return load_spec(spec_path, registry, limit=limit, prompts=prompts)


def run(spec_path: Path, db: Path, *, limit: int | None = None, retry_failed: bool = False,
        protocol_dirs: list[Path] = (), prompt_dirs: list[Path] = ()) -> Result:
    """Load and run a spec against fresh mock models; the store is closed afterwards."""
    registry, prompts = load_all(protocol_dirs=list(protocol_dirs), prompt_dirs=list(prompt_dirs))
    loaded = load_spec(spec_path, registry, limit=limit, prompts=prompts)
    models = {alias: Model(alias, cfg) for alias, cfg in loaded.models.items()}
    store = Store(db)
    try:
        summary = asyncio.run(run_batch(loaded, store, prompts, retry_failed=retry_failed,
                                        models=models))
    finally:
        store.close()
    return Result(loaded, models, summary)


async def run_inproc(spec: Path, db: Path, *, retry_failed: bool = False, use_cache: bool = True,
                     protocol_dirs: list[Path] = ()) -> tuple[LoadedSpec, RunSummary]:
    """The runner as the CLI drives it (real models, store cache, spec budget), minus the
    terminal."""
    registry, prompts = load_all(protocol_dirs=list(protocol_dirs))
    loaded = load_spec(spec, registry, prompts=prompts)
    store = Store(db)
    try:
        return loaded, await run_batch(loaded, store, prompts, retry_failed=retry_failed,
                                       use_cache=use_cache)
    finally:
        store.close()


def rows(db: Path, sql: str, *args) -> list[dict]:
    con = sqlite3.connect(db, timeout=30)  # another process may be writing the store
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute(sql, args)]
    finally:
        con.close()


def scalar(db: Path, sql: str, *args):
    con = sqlite3.connect(db)
    try:
        return con.execute(sql, args).fetchone()[0]
    finally:
        con.close()
