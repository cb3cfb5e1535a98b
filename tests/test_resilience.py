"""Resilience of a batch end to end: real HTTP through the real openai and anthropic SDKs
against the fault-injecting FakeServer on 127.0.0.1, the real runner and the real SQLite store,
and (where a process boundary matters) the real `oversight run` CLI in a subprocess.

What is asserted is what a researcher relies on after a bad night: every planned episode is
either done (with a verdict) or failed with a reason, every attempt is in model_calls, a rerun
does exactly the missing work, a kill -9 or a second writer leaves the store intact, a budget
stops cleanly, and no API key ever lands on disk or in the terminal.

No wall-clock speed thresholds: the only time comparison is a lower bound the server itself
dictates (Retry-After). Every wait loop is bounded by a deadline that only turns a hang into a
failure.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from oversight.plugins import load_all
from oversight.runner import run_batch
from oversight.spec import load_spec
from oversight.store import Store
from oversight.testing.fakeserver import FakeServer
from oversight.testing.wire import request_texts

KEY_ENV = "OVERSIGHT_TEST_LEAKCHECK_KEY"
FAKE_KEY = "sk-test-LEAKCHECK-9f8e7d"
MAX_ATTEMPTS = 4
RETRY = {"max_attempts": MAX_ATTEMPTS, "backoff_initial": 0.01, "backoff_max": 0.05}
DEADLINE = 90.0  # seconds: only a bound on waits that would otherwise hang a broken build


# --- helpers -------------------------------------------------------------------------------

def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v))


def model_cfg(srv: FakeServer, provider: str = "openai", **kw) -> dict:
    """A model on the fake server, with a retry policy tuned for test speed."""
    cfg = {"provider": provider,
           "model": "fake-model" if provider == "openai" else "claude-fake",
           "base_url": srv.openai_base_url if provider == "openai" else srv.anthropic_base_url,
           "retry": RETRY, "timeout": 1.0, "concurrency": 4}
    return {**cfg, **kw}


def direct(alias: str = "m") -> dict:
    return {"name": "direct", "roles": {"judge": alias}}


def debate(alias: str = "m") -> dict:
    return {"name": "debate", "roles": {"debater_a": alias, "debater_b": alias, "judge": alias}}


def write_spec(path: Path, *, name: str, models: dict[str, dict], protocols: list[dict],
               limit: int, concurrency: int = 4, budget: dict | None = None) -> Path:
    """A boolq spec. [budget] comes last so a test can rewrite that table alone."""
    lines = [f"name = {toml_value(name)}", f"concurrency = {concurrency}",
             f"data = {toml_value({'datasets': ['boolq'], 'limit': limit})}",
             f"models = {toml_value(models)}", f"protocols = {toml_value(protocols)}"]
    if budget:
        lines += ["", "[budget]"] + [f"{k} = {toml_value(v)}" for k, v in budget.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def load(spec: Path):
    registry, _ = load_all()
    return load_spec(spec, registry)


async def run_inproc(spec: Path, db: Path, *, retry_failed: bool = False):
    """The runner as the CLI drives it (store cache, spec budget), minus the terminal."""
    registry, prompts = load_all()
    loaded = load_spec(spec, registry)
    store = Store(db)
    try:
        return loaded, await run_batch(loaded, store, prompts, retry_failed=retry_failed)
    finally:
        store.close()


def cli_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OVERSIGHT_DB", "OPENAI_API_KEY", "ANTHROPIC_API_KEY")}
    env.update(NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost", COLUMNS="160")
    env.update(extra)
    return env


def cli_cmd(spec: Path, db: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "oversight", "run", str(spec), "--db", str(db), "-q", *args]


def run_cli(spec: Path, db: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cli_cmd(spec, db, *args), capture_output=True, text=True,
                          cwd=spec.parent, env=env or cli_env(), timeout=DEADLINE * 2)


def q(db: Path, sql: str, *args) -> list[dict]:
    con = sqlite3.connect(db, timeout=30)
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute(sql, args)]
    finally:
        con.close()


def calls_per_episode(db: Path) -> dict[int, int]:
    return {r["episode_id"]: r["n"] for r in
            q(db, "SELECT episode_id, count(*) AS n FROM model_calls GROUP BY episode_id")}


def prompt_of(request: dict) -> str:
    return "\n".join(request_texts(request["json"]))


def check_attempt_sequences(db: Path, run_id: str) -> None:
    """Per episode and role (one role makes one call at a time), attempts count 1, 2, ... and
    restart after a success; every failed attempt says what went wrong; a cache hit is
    attempt 0."""
    rows = q(db, """SELECT c.* FROM model_calls c JOIN episodes e ON e.id = c.episode_id
                    WHERE e.run_id = ? ORDER BY c.id""", run_id)
    expected: dict[tuple[int, str], int] = {}
    for r in rows:
        key = (r["episode_id"], r["role"])
        if r["cache_hit"]:
            assert r["attempt"] == 0 and r["error"] is None, r
            expected[key] = 1
            continue
        assert r["attempt"] == expected.get(key, 1), (r["id"], r["role"], r["attempt"], r["error"])
        assert 1 <= r["attempt"] <= MAX_ATTEMPTS
        if r["error"] is None:
            assert r["response"] is not None and r["text"] is not None, r
            expected[key] = 1
        else:
            assert r["error_kind"], r  # failed attempt: a kind as well as a message
            assert r["response"] is None, r
            expected[key] = r["attempt"] + 1


def check_consistent(db: Path, loaded, *, allowed=("done", "failed")) -> dict[str, dict]:
    """Every planned episode has exactly one row in a final state; done ones have a verdict
    and one message per successful call; episode totals match the model_calls rows."""
    run_id = loaded.run_id
    eps = q(db, "SELECT * FROM episodes WHERE run_id = ?", run_id)
    by_key = {e["key"]: e for e in eps}
    assert len(by_key) == len(eps), "duplicate episode keys"
    assert set(by_key) == {p.key for p in loaded.plans}, "planned episodes missing or extra"
    for e in eps:
        assert e["status"] in allowed, (e["id"], e["status"], e["error"])
        calls = q(db, "SELECT * FROM model_calls WHERE episode_id = ?", e["id"])
        msgs = q(db, "SELECT count(*) AS n FROM messages WHERE episode_id = ?", e["id"])[0]["n"]
        verdicts = q(db, "SELECT count(*) AS n FROM verdicts WHERE episode_id = ?", e["id"])[0]["n"]
        ok = [c for c in calls if c["error"] is None]
        assert e["n_calls"] == sum(not c["cache_hit"] for c in calls), (e["id"], e["status"])
        assert e["cache_hits"] == sum(bool(c["cache_hit"]) for c in calls), e["id"]
        if e["status"] == "done":
            assert e["error"] is None and verdicts == 1, e["id"]
            assert msgs == len(ok) == {"direct": 1, "debate": 3}[e["protocol"]], (e["id"], msgs)
        else:
            assert verdicts == 0, e["id"]
            assert msgs <= len(ok), e["id"]
        if e["status"] == "failed":
            assert e["error"] and e["error"].strip(), e["id"]
    return by_key


# --- 1. random faults: nothing lost, everything recorded, a rerun finishes the rest ----------

# Each fault kind the server injects and the error_kind the retry layer must record for it.
FAULTS = {
    "rate_limit": ({"kind": "rate_limit", "retry_after": 0.05}, {"rate_limit"}),
    "server_error": ("server_error", {"server"}),
    "unavailable": ("unavailable", {"server", "overloaded"}),  # its body says "overloaded"
    "overloaded": ("overloaded", {"overloaded"}),
    "reset": ("reset", {"connection"}),
    "malformed": ("malformed", {"malformed"}),
    "empty_choices": ("empty_choices", {"malformed"}),
    "timeout": ("timeout", {"timeout"}),
}


class FaultSchedule:
    """Seeded: one request in every five fails (a random one of the five), the kinds taken in
    a shuffled cycle so every kind occurs; requests about the poisoned question always fail."""

    def __init__(self, seed: int, poison: str, blocks: int = 400):
        rng = random.Random(seed)
        kinds = list(FAULTS)
        rng.shuffle(kinds)
        self.plan: list = []
        for b in range(blocks):
            block = [None] * 5
            block[rng.randrange(5)] = FAULTS[kinds[b % len(kinds)]][0]
            self.plan += block
        self.poison = poison

    def __call__(self, index: int, req: dict):
        if self.poison in "\n".join(request_texts(req)):
            return {"kind": "server_error"}
        return self.plan[index] if index < len(self.plan) else None


@pytest.fixture
def server():
    srv = FakeServer(latency=0.02).start_in_thread()
    try:
        yield srv
    finally:
        srv.stop()


def test_faulty_batch_ends_consistent_and_rerun_finishes_the_rest(tmp_path, server):
    srv = server
    spec = write_spec(tmp_path / "faulty.toml", name="faulty", limit=5,
                      models={"m": model_cfg(srv)}, protocols=[direct(), debate()])
    loaded = load(spec)
    poison = loaded.items[1].question
    srv.faults = FaultSchedule(seed=20240601, poison=poison)
    db = tmp_path / "store.db"

    first = run_cli(spec, db)
    assert first.returncode == 1, first.stderr
    assert "Traceback" not in first.stderr and "locked" not in first.stderr
    assert "failed" in first.stderr  # the CLI says so, and how to retry
    received = srv.stats["received"]
    faulted = sum(srv.stats["faulted"].values())
    assert faulted >= received // 5  # the schedule really was ~20% faulty (plus the poison)

    by_key = check_consistent(db, loaded)
    check_attempt_sequences(db, loaded.run_id)
    # Every request the server saw is an attempt in model_calls, and every faulted one is a
    # failed attempt there.
    rows = q(db, "SELECT * FROM model_calls")
    assert sum(not r["cache_hit"] for r in rows) == received
    assert sum(r["error"] is not None for r in rows) == faulted
    kinds = {r["error_kind"] for r in rows if r["error"] is not None}
    assert kinds <= set().union(*(k for _, k in FAULTS.values()))
    assert {"rate_limit", "server", "overloaded", "connection", "malformed", "timeout"} <= kinds
    # The poisoned item's episodes failed after exactly MAX_ATTEMPTS tries, naming the status.
    poisoned = [e for e in by_key.values() if e["item_id"] == loaded.items[1].key]
    assert len(poisoned) == 3  # direct + both debate orders
    for e in poisoned:
        assert e["status"] == "failed" and "HTTP 500" in e["error"], e
        assert max(r["attempt"] for r in rows if r["episode_id"] == e["id"]) == MAX_ATTEMPTS
    run = q(db, "SELECT status FROM runs WHERE id = ?", loaded.run_id)[0]
    assert run["status"] == "incomplete"

    # Rerun, faults off, without --retry-failed: failed episodes stay failed, no call made.
    srv.faults = None
    done_before = {e["id"]: e["key"] for e in by_key.values() if e["status"] == "done"}
    failed_before = {e["id"] for e in by_key.values() if e["status"] == "failed"}
    calls_before = calls_per_episode(db)
    last_call_id = max(r["id"] for r in rows)
    _, summary = asyncio.run(run_inproc(spec, db))
    assert summary.status == "incomplete" and summary.calls == 0
    assert srv.stats["received"] == received
    assert calls_per_episode(db) == calls_before

    # With --retry-failed through the CLI: only the failed episodes are called again.
    srv.clear()
    second = run_cli(spec, db, "--retry-failed")
    assert second.returncode == 0, second.stderr
    assert "Traceback" not in second.stderr
    by_key = check_consistent(db, loaded, allowed=("done",))
    check_attempt_sequences(db, loaded.run_id)
    after = calls_per_episode(db)
    for ep_id, key in done_before.items():
        assert by_key[key]["id"] == ep_id  # same row, same id
        assert after[ep_id] == calls_before[ep_id]  # not one call more
    new_rows = [r for r in q(db, "SELECT * FROM model_calls") if r["id"] > last_call_id]
    assert new_rows and {r["episode_id"] for r in new_rows} <= failed_before
    assert sum(not r["cache_hit"] for r in new_rows) == srv.stats["received"]
    assert q(db, "SELECT status FROM runs WHERE id = ?", loaded.run_id)[0]["status"] == "finished"
