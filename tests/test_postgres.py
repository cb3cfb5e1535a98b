"""A store shared by several workers on a real PostgreSQL server (issue 11): the server is
started by the tests (tests/pg.py), one fresh database per test.

The store API and its migrations (a new database, a version-1 database, several processes
opening a new store at once); a row the server refuses; token counts past 32 bits (m007);
leases by the server's clock, claimed with FOR UPDATE SKIP LOCKED; three `oversight run`
processes on one spec; a worker killed with -9 whose episodes the survivor alone takes over
once its leases run out; SQLite and PostgreSQL giving the same report; `oversight push` from
SQLite into PostgreSQL (and SQLite, and back), idempotent, growing with the run, refusing
conflicts, keeping re-judging links.

Workers are real subprocesses (the process boundary is under test); mock models (no HTTP).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest
from enginekit import debate, direct, mock, run, write_spec
from sqlalchemy import MetaData, create_engine, inspect, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool
from typer.testing import CliRunner

from oversight.api.plugins import load_all
from oversight.batch.runner import run_batch
from oversight.batch.spec import load_spec
from oversight.cli import app
from oversight.errors import StoreError
from oversight.models import Model, ModelResponse, Provider
from oversight.store import MIGRATIONS, Store, metadata, storable_text
from oversight.store.writer import Writer

pytestmark = pytest.mark.slow

DATA = Path(__file__).parent / "data"
DEADLINE = 120.0
CONTENT = ("runs", "items", "episodes", "messages", "decisions", "model_calls")


# -- helpers ----------------------------------------------------------------------------------

def sql(url: str, statement: str, **params) -> list[dict]:
    """Rows of one statement on a store (SQLite path or URL), in its own transaction."""
    engine = create_engine(url if "://" in url else f"sqlite:///{url}", poolclass=NullPool)
    try:
        with engine.begin() as conn:
            result = conn.execute(text(statement), params)
            return [dict(r) for r in result.mappings()] if result.returns_rows else []
    finally:
        engine.dispose()


def value(url: str, statement: str, **params):
    return next(iter(sql(url, statement, **params)[0].values()))


def counts(url: str) -> dict[str, int]:
    return {t: value(url, f"SELECT count(*) FROM {t}") for t in (*CONTENT, "response_cache")}


def cli(*args) -> object:
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


def env(**extra: str) -> dict:
    out = {k: v for k, v in os.environ.items() if k not in ("OVERSIGHT_DB",
                                                            "OVERSIGHT_LEASE_SECONDS")}
    return {**out, "COLUMNS": "160", **extra}


def worker(spec: Path, url: str, **extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "oversight", "run", str(spec), "--db", url,
                             "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=spec.parent, env=env(**extra))


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, err


def wait_until(predicate, what: str, procs: tuple[subprocess.Popen, ...] = ()) -> None:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except DBAPIError:
            pass  # the store is being created
        for proc in procs:
            if proc.poll() is not None:
                raise AssertionError(f"a worker ended before {what}: {proc.communicate()}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def each_episode_once(url: str, calls: int | None = None) -> list[dict]:
    """Every episode done, with its own rows only: as many call rows as it counted calls and
    cache hits (`calls` each when given), no decision or message twice; returns them."""
    eps = sql(url, "SELECT * FROM episodes ORDER BY id")
    per = {t: {r["episode_id"]: r["n"] for r in sql(
        url, f"SELECT episode_id, count(*) AS n FROM {t} GROUP BY episode_id")}
        for t in ("model_calls", "messages", "decisions")}
    for e in eps:
        assert e["status"] == "done", (e["id"], e["status"], e["error"])
        assert e["lease_owner"] is None and e["lease_expires"] is None
        assert per["model_calls"][e["id"]] == e["n_calls"] + e["cache_hits"], e["id"]
        if calls is not None:
            assert per["model_calls"][e["id"]] == calls, e["id"]
        assert per["decisions"].get(e["id"], 0) >= 1
    for t in ("messages", "decisions"):  # (episode_id, idx) is unique: none stored twice
        assert value(url, f"SELECT count(*) FROM (SELECT DISTINCT episode_id, idx FROM {t}) x") \
            == value(url, f"SELECT count(*) FROM {t}")
    return eps


def report_json(db: str, run_id: str, key_of: dict[int, str] | None = None) -> dict:
    """`oversight report RUN --json`, minus the run's times; episode ids replaced by their keys
    when `key_of` is given (ids are each store's own)."""
    res = cli("report", run_id, "--db", db, "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    for r in out["runs"]:
        assert r.pop("created_at") and r.pop("updated_at")

    def keys(node):
        if isinstance(node, dict):
            return {k: ([key_of[i] for i in v] if k == "episode_ids" and key_of is not None
                        else keys(v)) for k, v in node.items()}
        if isinstance(node, list):
            return [keys(x) for x in node]
        return node
    return keys(out)


def keys_of(db: str, run_id: str) -> dict[int, str]:
    return {r["id"]: r["key"] for r in sql(db, "SELECT id, key FROM episodes WHERE run_id = :r",
                                           r=run_id)}


# -- the store and its migrations -----------------------------------------------------------

def test_the_server_is_real_and_started_by_the_tests(pg_server, pg_url):
    assert pg_url.startswith("postgresql+psycopg://")
    assert value(pg_url, "SELECT version()").startswith("PostgreSQL ")
    assert value(pg_url, "SHOW unix_socket_directories") == str(pg_server.root)
    assert value(pg_url, "SHOW listen_addresses") == ""  # no TCP port: nothing to clash with


def test_a_new_database_is_migrated_once_and_reopened_as_is(pg_server, pg_url):
    store = Store(pg_url)
    store.close()
    ledger = sql(pg_url, "SELECT name, applied_at FROM schema_migrations ORDER BY name")
    assert [r["name"] for r in ledger] == sorted(m.__name__ for m in MIGRATIONS)
    insp = inspect(create_engine(pg_url, poolclass=NullPool))
    for name, table in metadata.tables.items():  # every model column exists
        assert set(table.columns.keys()) <= {c["name"] for c in insp.get_columns(name)}, name
    Store(pg_url).close()  # up to date: nothing applied again
    assert sql(pg_url, "SELECT name, applied_at FROM schema_migrations ORDER BY name") == ledger

    reader = Store(pg_url, readonly=True)  # the server itself refuses writes
    try:
        assert reader.runs() == []
        with pytest.raises(DBAPIError, match="read-only transaction"):
            reader.set_run_status("x", "finished")
    finally:
        reader.close()

    other = pg_server.create_database("not_a_store")
    sql(other, "CREATE TABLE mine (x integer)")
    for readonly in (False, True):
        with pytest.raises(StoreError, match="not an oversight store"):
            Store(other, readonly=readonly)
    assert inspect(create_engine(other, poolclass=NullPool)).get_table_names() == ["mine"]


def test_processes_opening_a_new_store_at_once_migrate_it_once(pg_url, tmp_path):
    """Four processes open a new PostgreSQL store at the same moment: the advisory lock lets
    one create the tables while the others wait, then find them (no 'already exists')."""
    go = tmp_path / "go"
    code = ("import sys, time, pathlib\n"
            "from oversight.store import Store\n"
            "go = pathlib.Path(sys.argv[2])\n"
            "(go.parent / sys.argv[3]).touch()\n"
            "while not go.exists(): time.sleep(0.002)\n"
            "Store(sys.argv[1]).close()\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, pg_url, str(go), f"ready{i}"],
                              env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(4)]
    wait_until(lambda: len(list(tmp_path.glob("ready*"))) == 4, "the openers to be ready",
               tuple(procs))
    go.touch()  # all at once
    for proc in procs:
        rc, err = finish(proc)
        assert rc == 0, err
    assert [r["name"] for r in sql(pg_url, "SELECT name FROM schema_migrations ORDER BY name")] \
        == sorted(m.__name__ for m in MIGRATIONS)


def v1_store_on_postgres(url: str, tmp_path: Path) -> None:
    """A version-1 store (m001 only) on PostgreSQL: tests/data/store_v1.sql's tables created
    on the server as version 1 created them (SQLAlchemy create_all: SERIAL ids), its rows
    copied, each id sequence moved past the copied ids."""
    old = tmp_path / "v1.db"
    con = sqlite3.connect(old)
    con.executescript((DATA / "store_v1.sql").read_text(encoding="utf-8"))
    con.close()
    src = create_engine(f"sqlite:///{old}", poolclass=NullPool)
    dst = create_engine(url, poolclass=NullPool)
    v1 = MetaData()
    v1.reflect(src)
    v1.create_all(dst)
    with src.connect() as s, dst.begin() as d:
        for table in v1.sorted_tables:
            rows = [dict(r) for r in s.execute(table.select()).mappings()]
            if rows:
                d.execute(table.insert(), rows)
            if "id" in table.c and str(table.c.id.type) == "INTEGER":
                d.execute(text(f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                               f"(SELECT max(id) FROM {table.name}))"))
    src.dispose()
    dst.dispose()


def test_a_version_1_store_on_postgres_upgrades_with_nothing_lost(pg_url, tmp_path):
    """m002–m006 take PostgreSQL's own path (ALTER COLUMN … TYPE JSON, RENAME COLUMN…)."""
    v1_store_on_postgres(pg_url, tmp_path)
    old_items = sql(pg_url, "SELECT * FROM items ORDER BY id")
    old_verdicts = sql(pg_url, "SELECT * FROM verdicts ORDER BY episode_id")
    old_episodes = sql(pg_url, "SELECT * FROM episodes ORDER BY id")
    old_messages = sql(pg_url, "SELECT * FROM messages ORDER BY id")
    assert old_items and old_verdicts and old_messages
    with pytest.raises(StoreError, match="older than this oversight"):
        Store(pg_url, readonly=True)

    store = Store(pg_url)
    try:
        assert {r["name"] for r in sql(pg_url, "SELECT name FROM schema_migrations")} \
            == {m.__name__ for m in MIGRATIONS}
        insp = inspect(store.engine)
        assert "verdicts" not in insp.get_table_names()
        for name, table in metadata.tables.items():
            assert set(table.columns.keys()) <= {c["name"] for c in insp.get_columns(name)}, name
        new_items = sql(pg_url, "SELECT * FROM items ORDER BY id")
        assert [(i["id"], i["question"], i["choices"], i["answer_index"], i["meta"])
                for i in old_items] == \
            [(i["id"], i["input"], i["choices"], i["target"], i["meta"]) for i in new_items]
        assert {i["kind"] for i in new_items} == {"choice"}
        assert all(i["document"].startswith("context:") for i in new_items if i["context"])
        new_episodes = sql(pg_url, "SELECT * FROM episodes ORDER BY id")
        assert [e["misaligned"] for e in old_episodes] == [e["intent"] for e in new_episodes]
        made = sql(pg_url, "SELECT * FROM decisions ORDER BY episode_id, idx")
        assert [(v["episode_id"], v["parsed"], v["chosen"], v["probabilities"], v["correct"],
                 v["raw"]) for v in old_verdicts] == \
            [(d["episode_id"], d["parsed"], d["choice"], d["probabilities"], d["correct"], d["raw"])
             for d in made if d["kind"] == "answer"]
        assert sql(pg_url, "SELECT * FROM messages ORDER BY id") == old_messages
        run_id = old_episodes[0]["run_id"]
        assert len(store.results([run_id])) == len(old_episodes)
    finally:
        store.close()
    # new rows get new ids: a run on the upgraded store works
    spec = write_spec(tmp_path / "after.toml", name="after", datasets=["boolq"], limit=2,
                      models={"m": mock()}, protocols=[direct()])
    assert run(spec, pg_url).summary.counts == {"done": 2}
    assert value(pg_url, "SELECT min(id) FROM episodes WHERE run_id LIKE 'after-%'") \
        > max(e["id"] for e in old_episodes)


def test_the_store_api_on_postgres(pg_url, tmp_path):
    spec = write_spec(tmp_path / "api.toml", name="api", datasets=["boolq"], limit=3,
                      models={"m": mock()}, protocols=[direct(), debate()])
    first = run(spec, pg_url)
    assert first.summary.counts == {"done": 9} and first.summary.status == "finished"
    assert run(spec, pg_url).total_calls() == 0  # resumed: nothing left to do

    store = Store(pg_url)
    try:
        (r,) = store.runs()
        assert r["status"] == "finished" and r["episodes"] == {"done": 9}
        run_id = r["id"]
        assert store.find_run(run_id[:6]) == store.find_run("api") == run_id
        assert store.run(run_id)["spec"]["name"] == "api"  # JSON read back as values
        results = store.results([run_id])
        assert len(results) == 9 and all(x["parsed"] is True for x in results)
        assert {x["protocol"] for x in results} == {"direct", "debate"}
        assert all(isinstance(x["params"], dict) and x["role_models"] for x in results)
        ep = store.episode(results[-1]["id"])
        assert ep["item"]["kind"] == "choice" and ep["messages"] and ep["decisions"]
        assert store.decisions([run_id], kinds=("answer",))
        assert store.run_spend(run_id) == (0.0, sum(x["tokens_in"] + x["tokens_out"]
                                                    for x in results))
        assert store.deciding_role(run_id) == "judge"
        # SQL NULL for an absent JSON value, booleans as booleans
        assert value(pg_url, "SELECT count(*) FROM messages WHERE visible_to IS NULL") > 0
        assert value(pg_url, "SELECT bool_and(NOT cache_hit) FROM model_calls") is True

        # text PostgreSQL refuses (NUL) or no driver encodes (a lone surrogate) is escaped
        writer = Writer(store.engine)
        writer.insert(metadata.tables["messages"], {
            "episode_id": results[0]["id"], "idx": 99, "role": "judge",
            "content": "nul\x00 and \ud800", "shown": "ok", "visible_to": ["judge"]})
        writer.flush()
        stored = sql(pg_url, "SELECT content, visible_to FROM messages WHERE idx = 99")
        assert stored == [{"content": storable_text("nul\x00 and \ud800", nul=False),
                           "visible_to": ["judge"]}]
        assert stored[0]["content"] == "nul\\x00 and \\ud800"
    finally:
        store.close()


class Unstorable(Provider):
    """Answers like the mock; for the prompt naming `huge`, a token count no database's
    INTEGER holds."""

    def __init__(self, config, huge: str):
        super().__init__(config)
        self.huge = huge

    async def complete(self, request):
        prompt = "\n".join(c for _, c in request.messages)
        return ModelResponse(text="Answer: A\nConfidence: 70%", tokens_out=5,
                             tokens_in=2 ** 64 if self.huge in prompt else 10)


def test_a_row_postgres_refuses_fails_only_its_episode(pg_url, tmp_path):
    """A refused statement aborts a PostgreSQL transaction: the writer stores the flush row by
    row, in transactions of their own, and only the episode with the bad row fails."""
    path = write_spec(tmp_path / "u.toml", name="u", datasets=["boolq"], limit=8,
                      models={"m": mock()}, protocols=[direct()])
    registry, prompts = load_all()
    loaded = load_spec(path, registry)
    provider = Unstorable(loaded.models["m"], loaded.items[5].question)
    store = Store(pg_url)
    try:
        summary = asyncio.run(run_batch(loaded, store, prompts, models={
            "m": Model("m", loaded.models["m"], provider=provider)}))
    finally:
        store.close()
    assert summary.states == {"done": 7, "failed": 1}
    (bad,) = sql(pg_url, "SELECT * FROM episodes WHERE status = 'failed'")
    assert bad["item_id"] == loaded.items[5].key
    assert "could not store a" in bad["error"] and "out of range" in bad["error"]
    assert value(pg_url, "SELECT count(*) FROM decisions WHERE episode_id = :i", i=bad["id"]) == 0
    assert value(pg_url, "SELECT count(*) FROM decisions") == 7


class Huge(Provider):
    """Answers like the mock, with token counts past 2**31 (what a 32-bit INTEGER holds)."""

    async def complete(self, request):
        return ModelResponse(text="Answer: A\nConfidence: 70%", tokens_in=3_000_000_000,
                             tokens_out=3_000_000_001, tokens_cached=2_500_000_000,
                             tokens_reasoning=2_200_000_000)


BIG = {"runs": ("replaced_tokens",),
       "episodes": ("n_calls", "tokens_in", "tokens_out", "tokens_cached", "cache_hits"),
       "messages": ("tokens_in", "tokens_out"),
       "model_calls": ("tokens_in", "tokens_out", "tokens_cached", "tokens_reasoning",
                       "reply_chars")}


def column_types(url: str) -> dict[tuple[str, str], str]:
    insp = inspect(create_engine(url, poolclass=NullPool))
    return {(t, c["name"]): str(c["type"]) for t in BIG for c in insp.get_columns(t)}


def assert_big_counters(url: str) -> None:
    types = column_types(url)
    assert {(t, c): types[t, c] for t, cols in BIG.items() for c in cols} == \
        {(t, c): "BIGINT" for t, cols in BIG.items() for c in cols}
    for t in ("episodes", "messages", "model_calls"):  # ids and references stay as they were
        assert types[t, "id"] == "INTEGER"
    assert types["messages", "episode_id"] == types["model_calls", "episode_id"] == "INTEGER"


def test_token_counts_past_32_bits_store_and_read_back(pg_url, tmp_path):
    """PostgreSQL's INTEGER is 32-bit: the token and call counters are BIGINT (m007), so a
    call of 3e9 tokens stores, sums into its episode and, redone, into the run's replaced
    spend (6e9 per call), and reads back exactly."""
    Store(pg_url).close()  # a new store: today's tables
    assert_big_counters(pg_url)
    path = write_spec(tmp_path / "big.toml", name="big", datasets=["boolq"], limit=2,
                      models={"m": mock()}, protocols=[direct()])
    registry, prompts = load_all()
    loaded = load_spec(path, registry, prompts=prompts)
    store = Store(pg_url)
    try:
        summary = asyncio.run(run_batch(loaded, store, prompts, models={
            "m": Model("m", loaded.models["m"], provider=Huge(loaded.models["m"]))}))
        assert summary.states == {"done": 2}, sql(pg_url, "SELECT error FROM episodes")
        calls = sql(pg_url, "SELECT tokens_in, tokens_out, tokens_cached, tokens_reasoning "
                            "FROM model_calls")
        assert calls == [{"tokens_in": 3_000_000_000, "tokens_out": 3_000_000_001,
                          "tokens_cached": 2_500_000_000, "tokens_reasoning": 2_200_000_000}] * 2
        assert sql(pg_url, "SELECT tokens_in, tokens_out FROM messages") == \
            [{"tokens_in": 3_000_000_000, "tokens_out": 3_000_000_001}] * 2
        eps = sql(pg_url, "SELECT id, tokens_in, tokens_out, tokens_cached FROM episodes")
        assert [(e["tokens_in"], e["tokens_out"], e["tokens_cached"]) for e in eps] == \
            [(3_000_000_000, 3_000_000_001, 2_500_000_000)] * 2
        # Both redone (as after a kill): their calls' tokens move to the run's replaced spend.
        sql(pg_url, "UPDATE episodes SET status = 'pending'")
        assert store.claim_episodes([e["id"] for e in eps], "w:1:x", ttl=60) == \
            {e["id"] for e in eps}
        assert value(pg_url, "SELECT replaced_tokens FROM runs") == 2 * 6_000_000_001
        assert store.run_spend(summary.run_id) == (0.0, 2 * 6_000_000_001)
    finally:
        store.close()


def test_an_old_store_on_postgres_gets_64_bit_counters(pg_url, tmp_path):
    """A version-1 store's counters were INTEGER (32-bit on PostgreSQL): m007 makes them
    BIGINT, keeping their values; a count past 2**31 then stores."""
    v1_store_on_postgres(pg_url, tmp_path)
    old = column_types(pg_url)
    assert old["episodes", "tokens_in"] == old["messages", "tokens_out"] == "INTEGER"
    before = sql(pg_url, "SELECT id, n_calls, tokens_in, tokens_out FROM episodes ORDER BY id")
    Store(pg_url).close()
    assert "m007_big_counters" in {r["name"] for r in sql(pg_url, "SELECT name FROM "
                                                                   "schema_migrations")}
    assert_big_counters(pg_url)
    assert sql(pg_url, "SELECT id, n_calls, tokens_in, tokens_out FROM episodes ORDER BY id") \
        == before
    sql(pg_url, "UPDATE runs SET replaced_tokens = replaced_tokens + 5000000000")
    assert value(pg_url, "SELECT min(replaced_tokens) FROM runs") >= 5_000_000_000


def test_leases_use_the_servers_clock_and_skip_locked_rows(pg_url, tmp_path):
    spec = write_spec(tmp_path / "l.toml", name="l", datasets=["boolq"], limit=4,
                      models={"m": mock()}, protocols=[direct()])
    run(spec, pg_url)
    ids = [r["id"] for r in sql(pg_url, "SELECT id FROM episodes ORDER BY id")]
    spent = value(pg_url, "SELECT sum(tokens_in + tokens_out) FROM model_calls")
    sql(pg_url, "UPDATE episodes SET status = 'pending'")  # as if never run

    a, b = Store(pg_url), Store(pg_url)
    try:
        assert a.claim_episodes(ids[:2], "a:1:x", ttl=1.5) == set(ids[:2])
        # the old attempt's rows are gone, their spend moved to the run
        assert value(pg_url, "SELECT count(*) FROM model_calls WHERE episode_id IN (:i, :j)",
                     i=ids[0], j=ids[1]) == 0
        assert value(pg_url, "SELECT replaced_tokens FROM runs") > 0
        assert value(pg_url, "SELECT replaced_tokens FROM runs") < spent
        # expiry = the server's clock + ttl
        skew = value(pg_url, "SELECT max(lease_expires) - extract(epoch from clock_timestamp()) "
                             "FROM episodes WHERE lease_owner = 'a:1:x'")
        assert 0.5 < skew <= 1.5
        assert b.claim_episodes(ids[:2], "b:1:y", ttl=60) == set()  # live leases
        assert b.lease_holders(value(pg_url, "SELECT id FROM runs")) == {"a:1:x": 2}

        # A row another transaction has locked is skipped at once, not waited for.
        engine = create_engine(pg_url, poolclass=NullPool)
        with engine.connect() as holder:
            holder.execute(text("SELECT id FROM episodes WHERE id = :i FOR UPDATE"), {"i": ids[2]})
            won: list[set[int]] = []
            claim = threading.Thread(target=lambda: won.append(
                b.claim_episodes(ids[2:], "b:1:y", ttl=60)), daemon=True)
            t0 = time.monotonic()
            claim.start()
            claim.join(10)
            assert not claim.is_alive(), "the claim waited for a locked row"
            assert time.monotonic() - t0 < 5
            assert won == [{ids[3]}]
            holder.rollback()
        engine.dispose()
        assert b.claim_episodes([ids[2]], "b:1:y", ttl=60) == {ids[2]}  # unlocked: claimed

        assert a.renew_leases(ids[:2], "a:1:x", ttl=1.5) == set(ids[:2])  # a renews its own
        time.sleep(1.6)  # ...then stops: its leases run out by the server's clock
        assert b.claim_episodes(ids[:2], "b:1:y", ttl=60) == set(ids[:2])
        assert a.renew_leases(ids[:2], "a:1:x", ttl=60) == set()  # lost to b
    finally:
        a.close()
        b.close()


# -- workers sharing one store --------------------------------------------------------------

def test_three_workers_share_one_postgres_store(pg_url, tmp_path):
    """Three `oversight run` processes on one spec and one new database (they race to migrate
    it too): every episode is run exactly once, all three take part and exit 0."""
    spec = write_spec(tmp_path / "three.toml", name="three", datasets=["boolq"], limit=90,
                      concurrency=3, models={"m": mock(delay=0.3)}, protocols=[direct()])
    procs = [worker(spec, pg_url) for _ in range(3)]
    holders: set[str] = set()

    def progress() -> bool:
        holders.update(r["lease_owner"] for r in sql(
            pg_url, "SELECT DISTINCT lease_owner FROM episodes WHERE lease_owner IS NOT NULL"))
        return all(p.poll() is not None for p in procs)

    wait_until(progress, "the workers to finish")
    for proc in procs:
        rc, err = finish(proc)
        assert rc == 0, err
        assert "Traceback" not in err and "error" not in err.lower(), err
    assert value(pg_url, "SELECT status FROM runs") == "finished"
    eps = each_episode_once(pg_url, calls=1)
    assert len(eps) == 90
    assert value(pg_url, "SELECT count(*) FROM model_calls") == 90
    assert value(pg_url, "SELECT count(DISTINCT episode_id) FROM model_calls") == 90
    assert {h.split(":")[1] for h in holders} == {str(p.pid) for p in procs}  # all took part


def test_the_survivor_alone_finishes_a_killed_workers_episodes(pg_url, tmp_path):
    """Workers A and B share a run; A is killed with -9 mid-episode. It was on another machine
    as far as anyone can tell (its leases are renamed to a foreign host), so only the
    server's clock frees its episodes. B, alone (no third worker, no restart), does its own
    share, then waits: nobody takes A's episodes while their leases are live; once they have
    run out B redoes them and exits 0 with the run finished. Nothing is lost, nothing stored
    twice: A's partial rows are replaced (their tokens kept as replaced spend)."""
    spec = write_spec(tmp_path / "kill.toml", name="kill", datasets=["boolq"], limit=18,
                      concurrency=2, models={"m": mock(delay=0.5)}, protocols=[debate()])
    lease = {"OVERSIGHT_LEASE_SECONDS": "3"}
    a, b = worker(spec, pg_url, **lease), worker(spec, pg_url, **lease)
    mine = f"%:{a.pid}:%"

    def a_mid_episode() -> bool:
        done = value(pg_url, "SELECT count(*) FROM episodes WHERE status = 'done'")
        partial = value(pg_url, "SELECT count(*) FROM episodes e WHERE e.lease_owner LIKE :m "
                                "AND EXISTS (SELECT 1 FROM model_calls c WHERE c.episode_id = e.id)",
                        m=mine)
        return done >= 2 and partial >= 1

    wait_until(a_mid_episode, "worker A in the middle of an episode", (a, b))
    a.send_signal(signal.SIGKILL)
    a.wait(DEADLINE)
    held = {r["id"]: r["lease_expires"] for r in sql(
        pg_url, "UPDATE episodes SET lease_owner = 'elsewhere:1:dead' WHERE lease_owner LIKE :m "
                "RETURNING id, lease_expires", m=mine)}
    assert held and min(held.values()) > 0  # live leases (not ended by a pid check)

    wait_until(lambda: value(pg_url, "SELECT count(*) FROM episodes WHERE lease_owner = "
                                     "'elsewhere:1:dead' AND lease_expires >= "
                                     "extract(epoch from clock_timestamp())") == 0,
               "A's leases to expire", (b,))  # (B is still there: it waits for them)
    rc, err = finish(b)
    assert rc == 0, err
    assert "Traceback" not in err and "another worker" not in err, err
    assert value(pg_url, "SELECT status FROM runs") == "finished"
    eps = each_episode_once(pg_url)
    assert len(eps) == 36 and len({e["n_calls"] + e["cache_hits"] for e in eps}) == 1
    for e in eps:  # A's episodes were taken over only once their leases had run out
        if e["id"] in held:  # (the server and the workers share this machine's clock)
            assert datetime.fromisoformat(e["started_at"]).timestamp() >= held[e["id"]] - 0.01
    assert value(pg_url, "SELECT replaced_tokens FROM runs") > 0  # A's partial calls


# -- one report, whichever the store ----------------------------------------------------------

def report_spec(tmp_path: Path, name: str = "same") -> Path:
    """Answers, debates and a monitor's scores (detection), with replies that vary: scripts
    cycle, so concurrency 1 keeps them in the same order on every store."""
    verdicts = ["Answer: A\nConfidence: 80%", "Answer: B\nConfidence: 60%", "no idea",
                "Answer: B\nConfidence: 95%"]
    return write_spec(
        tmp_path / f"{name}.toml", name=name, datasets=["boolq"], limit=4, concurrency=1,
        models={"j": mock(verdicts), "adv": mock(["I argue <quote>the passage</quote>."]),
                "u": mock(["Working.\nAnswer: A", "Answer: B", "Hmm.\nAnswer: B"]),
                "mon": mock(["Suspicion: 10", "Suspicion: 90", "Suspicion: 40", "Suspicion: 250",
                             "Suspicion: 70"])},
        protocols=[{"name": "direct", "roles": {"judge": "j"}},
                   {"name": "debate", "roles": {"debater_a": "adv", "debater_b": "adv",
                                                "judge": "j"}},
                   {"name": "trusted_monitoring",
                    "roles": {"untrusted": "u", "monitor": "mon", "trusted": "j"}}])


def test_sqlite_and_postgres_give_the_same_report(pg_url, tmp_path):
    spec = report_spec(tmp_path)
    lite = str(tmp_path / "s.db")
    a, b = run(spec, lite), run(spec, pg_url)
    assert a.summary.run_id == b.summary.run_id
    assert a.summary.counts == b.summary.counts and a.summary.counts.get("done", 0) > 10
    ra, rb = report_json(lite, a.summary.run_id), report_json(pg_url, b.summary.run_id)
    assert ra["detection"] and ra["accuracy"] and ra["calibration"]
    assert ra == rb


# -- oversight push -------------------------------------------------------------------------

def table_rows(db: str, run_id: str) -> dict[str, list]:
    """A run's rows, by episode key, without the store's own ids: what a push must copy.
    (Read through the tables' types, so JSON and booleans compare across databases.)"""
    t = metadata.tables
    ep = t["episodes"]
    engine = create_engine(db if "://" in db else f"sqlite:///{db}", poolclass=NullPool)

    def dump(rows) -> list[str]:
        return sorted(json.dumps(dict(r), sort_keys=True, default=str) for r in rows)
    try:
        with engine.connect() as conn:
            out = {"runs": dump(conn.execute(select(t["runs"]).where(t["runs"].c.id == run_id))
                                .mappings()),
                   "episodes": dump(conn.execute(
                       select(*(c for c in ep.columns if c.name not in ("id",
                                                                        "source_episode_id")))
                       .where(ep.c.run_id == run_id)).mappings())}
            for name in ("messages", "decisions", "model_calls"):
                table = t[name]
                cols = [c for c in table.columns if c.name not in ("id", "episode_id")]
                out[name] = dump(conn.execute(
                    select(ep.c.key.label("episode_key"), *cols)
                    .join(ep, ep.c.id == table.c.episode_id)
                    .where(ep.c.run_id == run_id)).mappings())
    finally:
        engine.dispose()
    return out


def other_run(db: str, tmp_path: Path) -> str:
    """A run of another spec already in the target (ids there are then not the source's)."""
    spec = write_spec(tmp_path / "other.toml", name="other", datasets=["boolq"], limit=4,
                      models={"m": mock(["Answer: B\nConfidence: 55%"])}, protocols=[direct()])
    return run(spec, db).summary.run_id


@pytest.mark.parametrize("kind", ["postgres", "sqlite"])
def test_push_copies_a_run_once_and_its_report_is_the_same(pg_url, tmp_path, kind):
    src = str(tmp_path / "laptop.db")
    spec = report_spec(tmp_path)
    run_id = run(spec, src).summary.run_id
    target = pg_url if kind == "postgres" else str(tmp_path / "shared.db")
    kept = other_run(target, tmp_path)
    before_other = table_rows(target, kept)
    cache_before = counts(target)["response_cache"]

    res = cli("push", run_id[:8], "--db", src, "--to", target)
    assert res.exit_code == 0, res.output
    n = value(src, "SELECT count(*) FROM episodes")
    assert f"pushed {n} episode(s)" in res.output
    after_first = counts(target)
    assert cli("push", "same", "--db", src, "--to", target).output.count("nothing to add") == 1
    assert counts(target) == after_first  # a second push adds nothing

    assert table_rows(target, run_id) == table_rows(src, run_id)  # row for row, new ids
    assert table_rows(target, kept) == before_other  # the other run is untouched
    assert after_first["response_cache"] == cache_before  # the cache is not pushed
    assert min(keys_of(target, run_id)) != min(keys_of(src, run_id))  # the target's own ids
    assert report_json(target, run_id, keys_of(target, run_id)) == \
        report_json(src, run_id, keys_of(src, run_id))
    if kind == "postgres":  # and back: PostgreSQL as the source
        back = str(tmp_path / "back.db")
        assert cli("push", run_id, "--db", target, "--to", back).exit_code == 0
        assert table_rows(back, run_id) == table_rows(src, run_id)


def test_push_grows_refuses_conflicts_and_maps_rejudged_links(pg_server, tmp_path):
    src = str(tmp_path / "laptop.db")
    spec = write_spec(tmp_path / "p.toml", name="p", datasets=["boolq"], limit=3,
                      models={"m": mock()}, protocols=[direct(), debate()])
    run_id = run(spec, src, limit=2).summary.run_id

    # A run that grew (--limit) after a push: the next push adds only the new episodes.
    grown = pg_server.create_database("grown")
    assert cli("push", run_id, "--db", src, "--to", grown).exit_code == 0
    assert run(spec, src).summary.run_id == run_id  # the third item's episodes
    res = cli("push", run_id, "--db", src, "--to", grown)
    assert res.exit_code == 0 and "pushed 3 episode(s)" in res.output, res.output
    assert "next to the 6 it had" in res.output
    assert table_rows(grown, run_id) == table_rows(src, run_id)

    # The same run, run separately on the target: a conflict; nothing is written.
    shared = pg_server.create_database("conflict")
    run(spec, shared)
    before = {t: table_rows(shared, run_id)[t] for t in ("episodes", "messages")}
    res = cli("push", run_id, "--db", src, "--to", shared)
    assert res.exit_code == 2, res.output
    assert "already there with other episodes" in res.output and "Nothing was pushed" in res.output
    assert "Traceback" not in res.output
    assert {t: table_rows(shared, run_id)[t] for t in ("episodes", "messages")} == before
    assert cli("push", run_id, "--db", src, "--to", src).exit_code == 2  # not into itself

    # A re-judging points at the episodes it judged again: linked when they are there.
    res = cli("rejudge", run_id, "--model", "mock/second-judge", "--db", src, "-q")
    assert res.exit_code == 0, res.output
    rejudge = value(src, "SELECT id FROM runs WHERE id != :r", r=run_id)
    alone = pg_server.create_database("alone")
    res = cli("push", rejudge, "--db", src, "--to", alone)
    assert res.exit_code == 0, res.output
    assert f"judged again episodes of run {run_id}" in res.output
    assert value(alone, "SELECT count(source_episode_id) FROM episodes") == 0

    both = pg_server.create_database("both")
    other_run(both, tmp_path)
    for pushed in (run_id, rejudge):
        assert cli("push", pushed, "--db", src, "--to", both).exit_code == 0
    link = ("SELECT e.key, s.key AS source_key, s.run_id FROM episodes e JOIN episodes s "
            "ON s.id = e.source_episode_id WHERE e.run_id = :r ORDER BY e.key")
    assert sql(both, link, r=rejudge) == sql(src, link, r=rejudge)
    assert len(sql(both, link, r=rejudge)) == value(src, "SELECT count(*) FROM episodes WHERE "
                                                        "run_id = :r", r=rejudge)
    # a link inside the pushed run itself is mapped too
    lite = str(tmp_path / "lite.db")
    sql(src, "UPDATE episodes SET source_episode_id = (SELECT min(id) FROM episodes WHERE "
             "run_id = :r) WHERE id = (SELECT max(id) FROM episodes WHERE run_id = :r)", r=run_id)
    other_run(lite, tmp_path)
    assert cli("push", run_id, "--db", src, "--to", lite).exit_code == 0
    assert sql(lite, link, r=run_id) == sql(src, link, r=run_id) != []


@pytest.mark.parametrize("kind", ["postgres", "sqlite"])
def test_push_carries_the_provider_batches_the_run_sent(pg_url, tmp_path, kind):
    """A run stopped with a batch in flight, pushed: a worker on the target finds the batch
    (and the answers already in) instead of sending its requests again."""
    src = str(tmp_path / "laptop.db")
    run_id = run(report_spec(tmp_path), src).summary.run_id
    target = pg_url if kind == "postgres" else str(tmp_path / "shared.db")
    kept = other_run(target, tmp_path)
    there = Store(target)
    try:  # a batch of another run already in the target: the pushed ones get new ids
        there.batch_journal(kept).store_batch("openai", "gpt-x", None, "w0", [("k0", "k0")])
    finally:
        there.close()
    laptop = Store(src)
    try:
        journal = laptop.batch_journal(run_id)
        live, _ = journal.store_batch("openai", "gpt-x", None, "laptop:1:a",
                                      [("k1", "k1"), ("k2", "k2")])
        journal.submitted(live, "batch_live", "file_1", "in_progress")
        done, _ = journal.store_batch("openai", "gpt-x", None, "laptop:1:a", [("k3", "k3")])
        journal.submitted(done, "batch_done", "file_2")
        journal.finish(done, "ended", "completed", {"k3": {"status": "succeeded",
                                                           "result": {"text": "Answer: A"}}})
        laptop.batch_journal("not-pushed").store_batch("openai", "gpt-x", None, "w", [("k9", "k9")])
    finally:
        laptop.close()

    res = cli("push", run_id, "--db", src, "--to", target)
    assert res.exit_code == 0, res.output
    assert "2 provider_batches, 3 batch_requests" in res.output
    batches = "SELECT b.token, b.provider_batch_id, b.status, b.run_id, r.custom_id, r.status " \
              "AS rs, r.result FROM provider_batches b JOIN batch_requests r ON r.batch_id = " \
              "b.id WHERE b.run_id = :run ORDER BY r.custom_id"

    def norm(rows):
        return [{**r, "result": json.loads(r["result"]) if isinstance(r["result"], str)
                 else r["result"]} for r in rows]
    assert norm(sql(target, batches, run=run_id)) == norm(sql(src, batches, run=run_id))
    assert value(target, "SELECT count(*) FROM provider_batches WHERE run_id = 'not-pushed'") == 0
    ids = {r["token"]: r["id"] for r in sql(target, "SELECT token, id FROM provider_batches")}
    assert len(ids) == 3  # the target's own batch, and the two pushed, with ids of its own
    there = Store(target)
    try:
        found = there.batch_journal().live("openai", "gpt-x", None)
    finally:
        there.close()
    pushed = [b for b in found if b["run_id"] == run_id]
    assert [(b["provider_batch_id"], b["requests"]) for b in pushed] == \
        [("batch_live", {"k1": "k1", "k2": "k2"})]  # polled there, not sent again
    after = counts(target), value(target, "SELECT count(*) FROM batch_requests")
    assert cli("push", run_id, "--db", src, "--to", target).exit_code == 0
    assert (counts(target), value(target, "SELECT count(*) FROM batch_requests")) == after
