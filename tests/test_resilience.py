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
import itertools
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest
from enginekit import boolq_spec, debate, direct, load, run_inproc, toml_value
from enginekit import rows as q  # q(db, sql, *args): a query's rows as dicts

from oversight.api.plugins import load_all
from oversight.batch.runner import run_batch
from oversight.batch.spec import load_spec
from oversight.store import Store
from oversight.testing.fakeserver import FakeServer
from oversight.testing.wire import request_texts

KEY_ENV = "OVERSIGHT_TEST_LEAKCHECK_KEY"
FAKE_KEY = "sk-test-LEAKCHECK-9f8e7d"
MAX_ATTEMPTS = 4
RETRY = {"max_attempts": MAX_ATTEMPTS, "backoff_initial": 0.01, "backoff_max": 0.05}
DEADLINE = 90.0  # seconds: only a bound on waits that would otherwise hang a broken build


# --- helpers -------------------------------------------------------------------------------

def model_cfg(srv: FakeServer, provider: str = "openai", **kw) -> dict:
    """A model on the fake server, with a retry policy tuned for test speed."""
    cfg = {"provider": provider,
           "model": "fake-model" if provider == "openai" else "claude-fake",
           "base_url": srv.openai_base_url if provider == "openai" else srv.anthropic_base_url,
           "retry": RETRY, "timeout": 1.0, "concurrency": 4}
    return {**cfg, **kw}


def cli_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OVERSIGHT_DB", "OPENAI_API_KEY", "ANTHROPIC_API_KEY")}
    env.update(NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost", COLUMNS="160")
    env.update(extra)
    return env


def cli_cmd(spec: Path, db: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "oversight", "run", str(spec), "--db", str(db), "-q", *args]


def run_cli(spec: Path, db: Path, *args: str,
            env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cli_cmd(spec, db, *args), check=False, capture_output=True, text=True,
                          cwd=spec.parent, env=env or cli_env(), timeout=DEADLINE * 2)


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


def check_consistent(db: Path, loaded, *, allowed=("done", "failed"),
                     all_started: bool = True) -> dict[str, dict]:
    """Every planned episode has exactly one row (unless it never started) in a final state;
    done ones have a verdict and one message per successful call; episode totals match the
    model_calls rows."""
    run_id = loaded.run_id
    eps = q(db, "SELECT * FROM episodes WHERE run_id = ?", run_id)
    by_key = {e["key"]: e for e in eps}
    assert len(by_key) == len(eps), "duplicate episode keys"
    planned = {p.key for p in loaded.plans}
    if all_started:
        assert set(by_key) == planned, "planned episodes missing or extra"
    else:
        assert set(by_key) <= planned, "episodes that were not planned"
    for e in eps:
        assert e["status"] in allowed, (e["id"], e["status"], e["error"])
        calls = q(db, "SELECT * FROM model_calls WHERE episode_id = ?", e["id"])
        msgs = q(db, "SELECT count(*) AS n FROM messages WHERE episode_id = ?", e["id"])[0]["n"]
        verdicts = q(db, "SELECT count(*) AS n FROM decisions WHERE episode_id = ?", e["id"])[0]["n"]
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
    a shuffled cycle so every kind occurs. A fault that would make one call fail on every
    attempt moves on to the next request instead, so random faults are always recovered and
    the only episodes that fail are the poisoned ones: every request of `poison_model` about
    `poison` fails (a retryable 500, so it fails after MAX_ATTEMPTS tries)."""

    def __init__(self, seed: int, poison_model: str, poison: str, blocks: int = 400):
        rng = random.Random(seed)
        kinds = list(FAULTS)
        rng.shuffle(kinds)
        self.plan: list = []
        for b in range(blocks):
            block = [None] * 5
            block[rng.randrange(5)] = FAULTS[kinds[b % len(kinds)]][0]
            self.plan += block
        self.poison_model, self.poison = poison_model, poison
        self.streak: dict[tuple, int] = {}  # (model, prompt) -> faults in a row
        self.carry = None

    def __call__(self, index: int, req: dict):
        text = "\n".join(request_texts(req))
        if req.get("model") == self.poison_model and self.poison in text:
            return {"kind": "server_error"}
        call = (req.get("model"), text)
        fault = self.plan[index] if index < len(self.plan) else None
        if fault is None:
            fault, self.carry = self.carry, None
        if fault is not None and self.streak.get(call, 0) >= MAX_ATTEMPTS - 1:
            fault, self.carry = None, fault
        self.streak[call] = self.streak.get(call, 0) + 1 if fault is not None else 0
        return fault


@pytest.fixture
def server():
    srv = FakeServer(latency=0.02).start_in_thread()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.mark.slow
def test_faulty_batch_ends_consistent_and_rerun_finishes_the_rest(tmp_path, server):
    srv = server
    # The direct judge is its own model so that only direct episodes can be poisoned (see
    # test_failed_simultaneous_turn_does_not_outlive_its_episode for why not debate's). A
    # "timeout" fault costs one attempt timeout; 2 s leaves a loaded machine room to answer
    # every other request in time.
    spec = boolq_spec(tmp_path / "faulty.toml", name="faulty", limit=5,
                      models={"m": model_cfg(srv, timeout=2.0),
                              "j": model_cfg(srv, model="fake-direct", timeout=2.0)},
                      protocols=[direct("j"), debate("m")])
    loaded = load(spec)
    poisoned_item = loaded.items[1]
    srv.faults = FaultSchedule(seed=20240601, poison_model="fake-direct",
                               poison=poisoned_item.question)
    db = tmp_path / "store.db"

    first = run_cli(spec, db)
    assert first.returncode == 1, first.stderr
    assert "Traceback" not in first.stderr and "locked" not in first.stderr
    assert "failed" in first.stderr  # the CLI says so, and how to retry
    received = srv.stats["received"]
    faulted = sum(srv.stats["faulted"].values())
    assert faulted >= received // 6  # the schedule really was ~20% faulty (plus the poison)

    by_key = check_consistent(db, loaded)
    check_attempt_sequences(db, loaded.run_id)
    # Every request the server saw is an attempt in model_calls, and every faulted one is a
    # failed attempt there.
    rows = q(db, "SELECT * FROM model_calls")
    assert sum(not r["cache_hit"] for r in rows) == received
    assert sum(r["error"] is not None for r in rows) == faulted
    kinds = {r["error_kind"] for r in rows if r["error"] is not None}
    assert kinds <= set().union(*(k for _, k in FAULTS.values()))
    # Every kind the server injected was recorded as what it is. (Which kinds land depends
    # on request order, so check the ones the server reports, and that there were many.)
    injected = {k for k in srv.stats["faulted"] if k in FAULTS}
    assert len(injected) >= 6, srv.stats["faulted"]
    for k in injected:
        assert FAULTS[k][1] & kinds, (k, sorted(kinds))
    # Exactly the poisoned episode failed, after MAX_ATTEMPTS tries, naming the status.
    failed = [e for e in by_key.values() if e["status"] == "failed"]
    assert [(e["protocol"], e["item_id"]) for e in failed] == [("direct", poisoned_item.key)]
    assert "HTTP 500" in failed[0]["error"], failed[0]["error"]
    assert [r["attempt"] for r in rows if r["episode_id"] == failed[0]["id"]] == \
        list(range(1, MAX_ATTEMPTS + 1))
    run = q(db, "SELECT status FROM runs WHERE id = ?", loaded.run_id)[0]
    assert run["status"] == "incomplete"

    # Rerun, faults off, without --retry-failed: failed episodes stay failed, no call made.
    srv.faults = None
    done_before = {e["id"]: e["key"] for e in by_key.values() if e["status"] == "done"}
    failed_before = {e["id"] for e in by_key.values() if e["status"] == "failed"}
    calls_before = calls_per_episode(db)
    _, summary = asyncio.run(run_inproc(spec, db))
    assert summary.status == "incomplete" and summary.usage.calls == 0
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
    # Retrying an episode starts its record afresh (its old attempts are deleted), so the
    # retried episodes' rows are exactly the new ones, and match the server's requests.
    retried = [r for r in q(db, "SELECT * FROM model_calls") if r["episode_id"] in failed_before]
    assert sum(not r["cache_hit"] for r in retried) == srv.stats["received"] > 0
    assert q(db, "SELECT status FROM runs WHERE id = ?", loaded.run_id)[0]["status"] == "finished"


def test_failed_simultaneous_turn_does_not_outlive_its_episode(tmp_path, server):
    """Debate's simultaneous speeches (Episode.together): when one debater's call fails for
    good, the other debater's call must not go on and be written after the episode's final
    row (n_calls would no longer match model_calls, a finished transcript would grow)."""
    srv = server
    srv.faults = lambda index, req: ({"kind": "auth"} if req.get("model") == "fake-a"
                                     else {"kind": "slow", "delay": 0.3})
    spec = boolq_spec(tmp_path / "sibling.toml", name="sibling", limit=1,
                      models={"a": model_cfg(srv, model="fake-a"),
                              "b": model_cfg(srv, model="fake-b"),
                              "j": model_cfg(srv, model="fake-j")},
                      protocols=[{"name": "debate",
                                  "roles": {"debater_a": "a", "debater_b": "b", "judge": "j"}}])
    db = tmp_path / "store.db"
    _, summary = asyncio.run(run_inproc(spec, db))
    assert summary.counts == {"failed": 2}
    for e in q(db, "SELECT * FROM episodes"):
        assert e["status"] == "failed" and "HTTP 401" in e["error"]
        late = q(db, """SELECT count(*) AS n FROM model_calls WHERE episode_id = ?
                        AND created_at > ?""", e["id"], e["finished_at"])[0]["n"]
        late += q(db, """SELECT count(*) AS n FROM messages WHERE episode_id = ?
                         AND created_at > ?""", e["id"], e["finished_at"])[0]["n"]
        rows = q(db, "SELECT count(*) AS n FROM model_calls WHERE episode_id = ?", e["id"])[0]["n"]
        assert late == 0 and rows == e["n_calls"], (late, rows, e["n_calls"])


# --- 2. fatal errors fail at once; 429 waits as long as the server says ---------------------

@pytest.mark.parametrize("provider", ["openai", "anthropic"])
@pytest.mark.parametrize("fault, status, kind", [
    ("auth", 401, "auth"), ("context_length", 400, "context_length")])
async def test_fatal_error_fails_the_episode_after_one_attempt(tmp_path, provider, fault, status,
                                                               kind):
    async with FakeServer(faults=[fault]) as srv:
        spec = boolq_spec(tmp_path / "fatal.toml", name="fatal", limit=1,
                          models={"m": model_cfg(srv, provider)}, protocols=[direct()])
        db = tmp_path / "store.db"
        _, summary = await run_inproc(spec, db)
        assert srv.stats["received"] == 1  # no retry of a fatal error
    assert summary.status == "incomplete" and summary.counts == {"failed": 1}
    [ep] = q(db, "SELECT * FROM episodes")
    assert ep["status"] == "failed" and f"HTTP {status}" in ep["error"], ep["error"]
    [call] = q(db, "SELECT * FROM model_calls")
    assert call["attempt"] == 1 and call["error_kind"] == kind and f"HTTP {status}" in call["error"]
    assert q(db, "SELECT count(*) AS n FROM messages")[0]["n"] == 0


def _ts(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_rate_limit_waits_at_least_retry_after(tmp_path, provider):
    wait = 0.4  # far above backoff_max (0.05): only Retry-After can explain a gap this long
    async with FakeServer(faults=[{"kind": "rate_limit", "retry_after": wait}] * 2) as srv:
        spec = boolq_spec(tmp_path / "rl.toml", name="rl", limit=1,
                          models={"m": model_cfg(srv, provider)}, protocols=[direct()])
        db = tmp_path / "store.db"
        _, summary = await run_inproc(spec, db)
        received = srv.stats["received"]
    assert summary.status == "finished"
    rows = q(db, "SELECT * FROM model_calls ORDER BY id")
    assert [r["attempt"] for r in rows] == [1, 2, 3]
    assert [r["error_kind"] for r in rows] == ["rate_limit", "rate_limit", None]
    assert received == len(rows)  # every request the server saw is one recorded attempt
    # created_at is stamped when an attempt ends; the next one may only start `wait` later.
    # Timestamps have millisecond resolution (truncated), hence the 1 ms allowance.
    for before, after in itertools.pairwise(rows):
        assert _ts(after["created_at"]) - _ts(before["created_at"]) >= wait - 0.001


# --- 3. kill -9 mid-run: the store survives, a resume does exactly the missing work ---------

def wait_for(predicate, what: str, proc: subprocess.Popen | None = None):
    """Poll until predicate() is truthy; fail (never hang) if the deadline or the process ends."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            _, err = proc.communicate()
            pytest.fail(f"process ended (rc {proc.returncode}) before {what}:\n{err[-2000:]}")
        time.sleep(0.02)
    pytest.fail(f"timed out waiting for {what}")


def count_status(db: Path, status: str) -> int:
    if not db.exists():
        return 0
    try:
        return q(db, "SELECT count(*) AS n FROM episodes WHERE status = ?", status)[0]["n"]
    except sqlite3.OperationalError:  # the schema is not there yet
        return 0


@pytest.mark.slow
def test_kill_9_then_resume_does_exactly_the_missing_episodes(tmp_path, server):
    srv = server
    srv.latency = 0.2
    planned, concurrency, gate = 40, 8, 24
    # Requests after the first `gate` are held until the kill, so the run cannot finish first.
    held = {"on": True}
    srv.faults = lambda index, req: ({"kind": "slow", "delay": 60}
                                     if held["on"] and index >= gate else None)
    spec = boolq_spec(tmp_path / "kill.toml", name="kill", limit=planned, concurrency=concurrency,
                      # a generous per-attempt timeout: held requests must not time out
                      models={"m": model_cfg(srv, concurrency=concurrency, timeout=60.0)},
                      protocols=[direct()])
    loaded = load(spec)
    assert len(loaded.plans) == planned
    questions = {it.key: it.question for it in loaded.items}
    assert len(set(questions.values())) == planned  # a prompt names its episode
    db = tmp_path / "store.db"

    proc = subprocess.Popen(cli_cmd(spec, db), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=tmp_path, env=cli_env())
    try:
        wait_for(lambda: count_status(db, "done") >= concurrency, "some episodes done", proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    held["on"] = False

    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        con.close()
    eps = q(db, "SELECT * FROM episodes")
    done_before = {e["key"]: e for e in eps if e["status"] == "done"}
    assert concurrency <= len(done_before) < planned
    # What a kill -9 loses is the calls in flight: at most one episode per concurrency slot.
    # (Every planned episode has a row from the start; the ones not reached are pending.)
    assert all(e["status"] in ("done", "running", "pending") for e in eps)
    assert sum(e["status"] == "running" for e in eps) <= concurrency
    for e in done_before.values():
        assert q(db, "SELECT count(*) AS n FROM decisions WHERE episode_id = ?",
                 e["id"])[0]["n"] == 1
    calls_before = calls_per_episode(db)
    n_requests = len(srv.requests)

    resume = run_cli(spec, db)
    assert resume.returncode == 0, resume.stderr

    by_key = check_consistent(db, loaded, allowed=("done",))
    assert len(by_key) == planned  # no duplicate keys (check_consistent), none missing
    calls_after = calls_per_episode(db)
    for key, e in done_before.items():
        assert by_key[key]["id"] == e["id"]  # kept its original row
        assert calls_after[e["id"]] == calls_before[e["id"]]  # and was not called again
    new_prompts = [prompt_of(r) for r in srv.requests[n_requests:]]
    for key, e in by_key.items():
        asked = sum(questions[e["item_id"]] in p for p in new_prompts)
        # Episodes done before the kill: never asked again. The rest: once (or not at all if
        # the answer reached the response cache before the kill).
        assert (asked == 0) if key in done_before else (asked <= 1), (key, asked)
    assert len(new_prompts) <= planned - len(done_before)


# --- 4. two processes writing one store at once ---------------------------------------------

def run_together(*commands: list[str], cwd: Path) -> list[tuple[int, str, str]]:
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              cwd=cwd, env=cli_env()) for c in commands]
    out = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=DEADLINE * 2)
            out.append((p.returncode, stdout, stderr))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    return out


def assert_no_lock_errors(db: Path, results) -> None:
    for _rc, _stdout, stderr in results:
        assert "locked" not in stderr.lower() and "Traceback" not in stderr, stderr[-3000:]
    errors = [e["error"] for e in q(db, "SELECT error FROM episodes WHERE error IS NOT NULL")]
    errors += [c["error"] for c in q(db, "SELECT error FROM model_calls WHERE error IS NOT NULL")]
    assert errors == []


def test_stores_opened_at_once_on_a_new_file(tmp_path):
    """What two `oversight run`s starting together do first, made to collide on purpose:
    every opener waits at the same barrier, then creates the schema of a file that does not
    exist yet (a WAL switch and the migrations each need the file alone for a moment)."""
    from oversight.store import MIGRATIONS

    def open_store(path: Path, barrier: threading.Barrier, errors: list[str]) -> None:
        barrier.wait(timeout=DEADLINE)
        try:
            Store(path).close()
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(f"{type(exc).__name__}: {exc}")

    for n in range(8):
        path = tmp_path / f"new{n}.db"
        barrier, errors = threading.Barrier(4), []
        threads = [threading.Thread(target=open_store, args=(path, barrier, errors))
                   for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=DEADLINE)
        assert errors == []
        assert len(q(path, "SELECT name FROM schema_migrations")) == len(MIGRATIONS)
        assert q(path, "PRAGMA journal_mode") == [{"journal_mode": "wal"}]


@pytest.mark.slow
def test_two_different_specs_share_one_new_store(tmp_path, server):
    """Both start on a store that does not exist yet: schema creation races too."""
    srv = server
    a = boolq_spec(tmp_path / "a.toml", name="alpha", limit=10, concurrency=8,
                   models={"m": model_cfg(srv, concurrency=8)}, protocols=[direct()])
    b = boolq_spec(tmp_path / "b.toml", name="beta", limit=4, concurrency=8,
                   models={"m": model_cfg(srv, concurrency=8)}, protocols=[direct(), debate()])
    db = tmp_path / "shared.db"
    results = run_together(cli_cmd(a, db), cli_cmd(b, db), cwd=tmp_path)
    assert [rc for rc, _, _ in results] == [0, 0], [r[2][-2000:] for r in results]
    assert_no_lock_errors(db, results)
    for spec in (a, b):
        loaded = load(spec)
        check_consistent(db, loaded, allowed=("done",))
        check_attempt_sequences(db, loaded.run_id)
        run = q(db, "SELECT status FROM runs WHERE id = ?", loaded.run_id)[0]
        assert run["status"] == "finished"
    assert q(db, "SELECT count(*) AS n FROM items")[0]["n"] == 10  # shared, stored once
    calls = q(db, "SELECT cache_hit FROM model_calls")
    assert len(calls) == 10 + 4 + 8 * 3  # one successful call (or cache hit) per turn
    # The direct prompts the two specs share may be answered from the shared response cache.
    assert sum(not c["cache_hit"] for c in calls) == srv.stats["received"]


@pytest.mark.slow
def test_same_spec_twice_at_once_shares_the_work(tmp_path, server):
    """Meaningful semantics for the same spec run twice at once: the two processes split the
    episodes between them (each episode is leased to one), so the work is done once, not
    twice, and the store ends as one finished run."""
    srv = server
    srv.latency = 0.05
    concurrency = 8
    spec = boolq_spec(tmp_path / "same.toml", name="same", limit=8, concurrency=concurrency,
                      models={"m": model_cfg(srv, concurrency=concurrency)},
                      protocols=[direct(), debate()])
    loaded = load(spec)
    expected_calls = 8 + 16 * 3
    db = tmp_path / "shared.db"
    results = run_together(cli_cmd(spec, db), cli_cmd(spec, db), cwd=tmp_path)
    assert_no_lock_errors(db, results)
    # Both exit 0: one finishing first sees the other's episodes under live leases, which is
    # not a failure of its own (issue 8, D12).
    assert [rc for rc, _, _ in results] == [0, 0], [r[2][-2000:] for r in results]
    by_key = check_consistent(db, loaded, allowed=("done",))
    assert len(by_key) == len(loaded.plans)
    check_attempt_sequences(db, loaded.run_id)
    assert q(db, "SELECT status FROM runs")[0]["status"] == "finished"
    # Leases: no episode run twice, not even one in flight at the moment the two met.
    assert srv.stats["received"] == expected_calls


# --- 5. a budget stops the run cleanly; raising it resumes the same run ---------------------

PRICE = {"input": 1000.0, "output": 1000.0}  # USD per million tokens: $0.001 a fake token


BUDGET_CASES = {
    # 12 direct episodes, 4 at a time: the cap falls between calls; the rest never start.
    "usd-direct": {"protocol": direct(), "limit": 12, "concurrency": 4, "calls_per_episode": 1,
                   "cap": {"usd": 0.25}, "raised": {"usd": 100.0}},
    # 6 debates, 2 at a time, each with two simultaneous debater calls (~144 fake tokens
    # each): the cap falls once two debater calls are in, before any judge call, so the
    # started episodes are 'stopped' mid-way and the others never start.
    "tokens-debate": {"protocol": debate(), "limit": 3, "concurrency": 2,
                      "calls_per_episode": 2, "cap": {"tokens": 200},
                      "raised": {"tokens": 1_000_000}},
}


@pytest.mark.parametrize("case", sorted(BUDGET_CASES))
async def test_budget_stops_cleanly_and_raising_it_resumes(tmp_path, case):
    c = BUDGET_CASES[case]
    cap, concurrency = c["cap"], c["concurrency"]
    in_flight = concurrency * c["calls_per_episode"]  # calls that can be under way at once
    async with FakeServer(latency=0.05) as srv:
        spec = boolq_spec(tmp_path / "budget.toml", name="budget", limit=c["limit"],
                          concurrency=concurrency, budget=cap,
                          models={"m": model_cfg(srv, concurrency=in_flight, price=PRICE)},
                          protocols=[c["protocol"]])
        db = tmp_path / "store.db"
        loaded, summary = await run_inproc(spec, db)
        planned = len(loaded.plans)
        assert summary.status == "budget_exhausted"
        assert q(db, "SELECT status FROM runs")[0]["status"] == "budget_exhausted"
        eps = q(db, "SELECT * FROM episodes")
        # Nobody failed for the budget: episodes are done, stopped (the cap was reached
        # before one of their calls) or never started (pending); stopped ones say why.
        assert {e["status"] for e in eps} <= {"done", "stopped", "pending"}, [e["error"] for e in eps]
        assert all("budget" in e["error"] for e in eps if e["status"] == "stopped")
        assert len(eps) == planned and any(e["status"] == "pending" for e in eps)
        if case == "tokens-debate":
            assert [e["status"] for e in eps if e["status"] != "pending"] == ["stopped"] * concurrency
        else:
            assert 0 < sum(e["status"] == "done" for e in eps) < planned
        check_consistent(db, loaded, allowed=("done", "stopped", "pending"), all_started=False)
        # Calls in flight when the cap was reached finished normally: no attempt was cut.
        calls = q(db, "SELECT * FROM model_calls")
        assert calls and all(r["error"] is None and r["response"] is not None for r in calls)
        assert len(calls) == srv.stats["received"]
        # Spend crossed the cap, by at most what the calls in flight could add.
        if "usd" in cap:
            spent, per_call = sum(r["cost_usd"] for r in calls), max(r["cost_usd"] for r in calls)
            assert cap["usd"] <= spent <= cap["usd"] + in_flight * per_call
        else:
            sizes = [r["tokens_in"] + r["tokens_out"] for r in calls]
            assert cap["tokens"] <= sum(sizes) <= cap["tokens"] + in_flight * max(sizes)
        done_before = {e["id"]: e["key"] for e in eps if e["status"] == "done"}
        calls_before = calls_per_episode(db)

        # Raise the cap: [budget] is not part of the run's identity, so this resumes it.
        text = spec.read_text()
        head, _, _ = text.partition("[budget]")
        spec.write_text(head + "[budget]\n" + "".join(f"{k} = {toml_value(v)}\n"
                                                      for k, v in c["raised"].items()))
        srv.clear()
        loaded2, summary2 = await run_inproc(spec, db)
        assert loaded2.run_id == loaded.run_id and summary2.run_id == loaded.run_id
        assert summary2.status == "finished"
        received = srv.stats["received"]
    assert q(db, "SELECT id, status FROM runs") == [{"id": loaded.run_id, "status": "finished"}]
    by_key = check_consistent(db, loaded, allowed=("done",))
    after = calls_per_episode(db)
    for ep_id, key in done_before.items():
        assert by_key[key]["id"] == ep_id and after[ep_id] == calls_before[ep_id]
    # A resumed episode starts its record afresh, so the rows of the episodes not done before
    # are exactly the resumed run's: one per request the server saw, plus cache hits (a
    # stopped debate's finished debater calls come back from the response cache).
    new = [r for r in q(db, "SELECT * FROM model_calls") if r["episode_id"] not in done_before]
    assert sum(not r["cache_hit"] for r in new) == received
    if case == "tokens-debate":
        assert sum(r["cache_hit"] for r in new) == 2 * concurrency


# --- 6. an API key never reaches the store or the terminal ----------------------------------

@pytest.mark.slow
def test_api_key_is_nowhere_in_the_store_or_output(tmp_path, server, monkeypatch):
    srv = server
    models = {"oa": model_cfg(srv, "openai", api_key_env=KEY_ENV),
              "an": model_cfg(srv, "anthropic", api_key_env=KEY_ENV)}
    protocols = [direct("oa"), direct("an")]  # direct only: see the sibling-turn test above
    ok_spec = boolq_spec(tmp_path / "ok.toml", name="keys-ok", limit=2, models=models,
                         protocols=protocols)
    bad_spec = boolq_spec(tmp_path / "bad.toml", name="keys-401", limit=2, models=models,
                          protocols=protocols)
    # Two stores: in one, the 401 run would be answered from the first run's response cache.
    ok_db, db = tmp_path / "ok.db", tmp_path / "bad.db"
    env = cli_env(**{KEY_ENV: FAKE_KEY})

    ok = run_cli(ok_spec, ok_db, env=env)
    assert ok.returncode == 0, ok.stderr
    # A server that rejects the key and quotes it back, in a retryable 500 first (recorded
    # on each attempt) and then a fatal 401.
    echo = f"Incorrect API key provided: {FAKE_KEY}. Authorization: Bearer {FAKE_KEY}"
    srv.faults = lambda index, req: {"kind": "status", "status": 500 if index % 3 == 0 else 401,
                                     "message": echo}
    bad = run_cli(bad_spec, db, env=env)
    assert bad.returncode == 1, bad.stderr

    # The test means something: the key was really sent, and really echoed back.
    for path in ("/v1/chat/completions", "/v1/messages"):
        sent = [r["headers"] for r in srv.requests if r["path"] == path]
        assert sent and all(any(FAKE_KEY in v for v in h.values()) for h in sent), path
    failed = q(db, "SELECT error FROM episodes WHERE status = 'failed'")
    assert len(failed) == 4 and all("HTTP 401" in e["error"] for e in failed)
    errors = [c["error"] for c in q(db, "SELECT error FROM model_calls WHERE error IS NOT NULL")]
    assert any("HTTP 500" in e for e in errors)  # a retried attempt was recorded too
    assert errors and all("provided: ***. Authorization: Bearer ***" in e for e in errors)

    needles = (FAKE_KEY, "LEAKCHECK-9f8e7d")
    files = sorted(tmp_path.glob("*.db*"))  # each db, and its -wal / -shm if present
    assert ok_db in files and db in files
    for f in files:
        data = f.read_bytes()
        for needle in needles:
            assert needle.encode() not in data, f"{needle} in {f.name}"
    for proc in (ok, bad):
        for needle in needles:
            assert needle not in proc.stdout and needle not in proc.stderr
    for store in (ok_db, db):
        con = sqlite3.connect(store)
        try:
            dump = "\n".join(con.iterdump())  # every row of every table, as SQL text
        finally:
            con.close()
        assert 'INSERT INTO "model_calls"' in dump
        for needle in needles:
            assert needle not in dump

    # A CLI that exits cleanly checkpoints and removes its -wal file; to see WAL frames as
    # written (older page versions included), run the 401 case once more in this process and
    # read the files while the store's connections are still open.
    monkeypatch.setenv(KEY_ENV, FAKE_KEY)
    live = tmp_path / "live" / "live.db"
    live.parent.mkdir()

    async def run_and_read() -> dict[str, bytes]:
        registry, prompts = load_all()
        loaded = load_spec(bad_spec, registry)
        store = Store(live)
        try:
            summary = await run_batch(loaded, store, prompts)
            assert summary.counts == {"failed": 4}
            return {f.name: f.read_bytes() for f in live.parent.iterdir()}
        finally:
            store.close()

    contents = asyncio.run(run_and_read())
    assert contents.get("live.db-wal")  # the WAL really was there, with frames in it
    for name, data in contents.items():
        for needle in needles:
            assert needle.encode() not in data, f"{needle} in {name}"
