"""The store: migrations, resume without repeated calls, interrupted episodes, --limit growth,
and no secrets on disk. Runs use mock models (the HTTP layer is not under test here)."""

from __future__ import annotations

import json
import secrets
import sqlite3
from pathlib import Path

import pytest
from enginekit import mock, rows, run, scalar, write_spec
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError, OperationalError

from oversight.errors import StoreError
from oversight.store import MIGRATIONS, Store, metadata, migrate, schema_version
from oversight.tasks.items import load_dataset

VERDICT = "Answer: A\nConfidence: 70%"
DATA = Path(__file__).parent / "data"
CONTENT_TABLES = ("runs", "items", "episodes", "messages", "model_calls", "decisions")


def table_names(db: Path) -> set[str]:
    return {r["name"] for r in rows(db, "SELECT name FROM sqlite_master WHERE type = 'table'")}


def columns(db: Path, table: str) -> list[str]:
    return [r["name"] for r in rows(db, f"PRAGMA table_info({table})")]


def counts(db: Path) -> dict[str, int]:
    return {t: scalar(db, f"SELECT COUNT(*) FROM {t}") for t in CONTENT_TABLES}


def dump(db: Path, table: str, cols: list[str] | None = None) -> list[tuple]:
    cols = cols or columns(db, table)
    con = sqlite3.connect(db)
    try:
        return con.execute(f"SELECT {', '.join(cols)} FROM {table} ORDER BY 1").fetchall()
    finally:
        con.close()


def mixed_spec(tmp_path: Path, name: str = "mixed", **kw) -> Path:
    """direct + consultancy + debate on boolq: 1 + 2 + 2 episodes per item."""
    return write_spec(
        tmp_path / f"{name}.toml", name=name, datasets=["boolq"], **kw,
        models={"j": mock([VERDICT]), "adv": mock(["I argue <quote>magnesium</quote>."])},
        protocols=[{"name": "direct", "roles": {"judge": "j"}},
                   {"name": "consultancy", "roles": {"consultant": "adv", "judge": "j"}},
                   {"name": "debate", "params": {"rounds": 2},
                    "roles": {"debater_a": "adv", "debater_b": "adv", "judge": "j"}}])


# -- schema and migrations ----------------------------------------------------------------

def test_fresh_database_is_fully_migrated(tmp_path):
    db = tmp_path / "fresh.db"
    store = Store(db)
    try:
        names = [r["name"] for r in rows(db, "SELECT name FROM schema_migrations ORDER BY name")]
        assert names == sorted(m.__name__ for m in MIGRATIONS)
        assert len(set(names)) == len(MIGRATIONS)
        assert table_names(db) >= set(metadata.tables) | {"schema_migrations"}
        assert set(CONTENT_TABLES) <= table_names(db)
        for name, table in metadata.tables.items():  # every model column exists
            assert set(table.columns.keys()) <= set(columns(db, name)), name
        assert scalar(db, "PRAGMA journal_mode") == "wal"  # persistent in the file
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() > 0
            assert schema_version(conn) == len(MIGRATIONS)
    finally:
        store.close()


def test_a_fresh_store_made_in_one_step_has_the_schema_of_the_step_by_step_path(tmp_path):
    """migrate() on a new database: today's tables once and every migration stamped in one
    statement; the schema is the one the former loop (tables, then a stamp, per migration)
    made, statement for statement."""
    Store(tmp_path / "one.db").close()
    steps = tmp_path / "steps.db"
    con = sqlite3.connect(steps)
    con.execute("CREATE TABLE schema_migrations (name VARCHAR PRIMARY KEY, applied_at VARCHAR NOT NULL)")
    con.close()
    from sqlalchemy import create_engine
    engine = create_engine(f"sqlite:///{steps}")
    with engine.begin() as conn:
        for m in MIGRATIONS:
            metadata.create_all(conn)
            conn.execute(text("INSERT INTO schema_migrations VALUES (:n, 'now')"), {"n": m.__name__})
    engine.dispose()
    schema = "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name"
    assert rows(tmp_path / "one.db", schema) == rows(steps, schema)
    ledger = "SELECT name FROM schema_migrations ORDER BY name"
    assert rows(tmp_path / "one.db", ledger) == rows(steps, ledger)
    store = Store(tmp_path / "one.db")
    try:
        with store.engine.begin() as conn:  # nothing left to apply
            assert migrate(conn) == []
    finally:
        store.close()


def test_a_sqlite_url_and_a_path_name_the_same_store_read_only_too(tmp_path):
    db = tmp_path / "url.db"
    writer = Store(db)
    writer.save_run({"id": "r1", "name": "n", "spec_toml": "", "spec_hash": "h",
                     "package_version": "0.1.0"})
    writer.close()
    url = f"sqlite:///{db}"
    for target in (db, url):
        store = Store(target, readonly=True)
        try:
            assert [r["id"] for r in store.runs()] == ["r1"]
        finally:
            store.close()
    with pytest.raises(StoreError, match="no store here"):
        Store(f"sqlite:///{tmp_path / 'absent.db'}", readonly=True)


def test_reopen_gives_a_read_only_store_of_the_same_database(tmp_path):
    db = tmp_path / "reopen.db"
    writer = Store(db)
    writer.save_run({"id": "r1", "name": "n", "spec_toml": "", "spec_hash": "h",
                     "package_version": "0.1.0"})
    assert writer.reopenable
    again = writer.reopen()
    try:
        assert again.readonly and again.engine is not writer.engine  # connections of its own
        assert [r["id"] for r in again.runs()] == ["r1"]
        assert again.episode_count(["r1"]) == 0
        with pytest.raises(OperationalError, match="readonly"):
            again.save_run({"id": "r2", "name": "n", "spec_toml": "", "spec_hash": "h",
                            "package_version": "0.1.0"})
    finally:
        again.close()
        writer.close()
    memory = Store("sqlite://")
    try:
        assert not memory.reopenable  # another connection would see another database
    finally:
        memory.close()


def test_foreign_keys_are_enforced(tmp_path):
    store = Store(tmp_path / "fk.db")
    try:
        with pytest.raises(IntegrityError):
            store.add_message({"episode_id": 12345, "idx": 0, "role": "judge", "content": "x",
                               "shown": "x", "quotes": []})
    finally:
        store.close()


def test_opening_twice_applies_nothing_new(tmp_path):
    db = tmp_path / "twice.db"
    Store(db).close()
    before = dump(db, "schema_migrations")
    store = Store(db)
    try:
        with store.engine.begin() as conn:
            assert migrate(conn) == []
    finally:
        store.close()
    assert dump(db, "schema_migrations") == before


def test_an_appended_migration_upgrades_an_existing_database_keeping_rows(tmp_path):
    db = tmp_path / "old.db"
    run(mixed_spec(tmp_path, limit=2), db)
    before = {t: dump(db, t) for t in CONTENT_TABLES}
    old_cols = {t: columns(db, t) for t in CONTENT_TABLES}
    assert all(before[t] for t in CONTENT_TABLES)

    def m999_reviewer_notes(conn):
        """A later version adds a column."""
        conn.execute(text("ALTER TABLE episodes ADD COLUMN reviewer_note VARCHAR DEFAULT 'none'"))

    store = Store(db)
    try:
        with store.engine.begin() as conn:
            assert migrate(conn, [*MIGRATIONS, m999_reviewer_notes]) == ["m999_reviewer_notes"]
        with store.engine.begin() as conn:
            assert migrate(conn, [*MIGRATIONS, m999_reviewer_notes]) == []
            assert schema_version(conn) == len(MIGRATIONS) + 1
    finally:
        store.close()
    assert "reviewer_note" in columns(db, "episodes")
    assert {r["reviewer_note"] for r in rows(db, "SELECT reviewer_note FROM episodes")} == {"none"}
    for t in CONTENT_TABLES:
        assert dump(db, t, old_cols[t]) == before[t], t
    # Code that does not know the new migration refuses the store (for reading or writing)
    # rather than write rows a newer schema may not expect; nothing is written.
    for readonly in (False, True):
        with pytest.raises(StoreError, match="newer than this oversight.*m999_reviewer_notes"):
            Store(db, readonly=readonly)
    for t in CONTENT_TABLES:
        assert dump(db, t, old_cols[t]) == before[t], t


def test_a_version_1_database_upgrades_with_nothing_lost(tmp_path):
    """tests/data/store_v1.sql: a database written by version 1 (m001 only), as a SQL dump.
    m005 reshapes items (question -> input, answer_index -> target), renames misaligned to
    intent and moves verdicts into decisions: every value is still there."""
    db = tmp_path / "v1.db"
    con = sqlite3.connect(db)
    con.executescript((DATA / "store_v1.sql").read_text(encoding="utf-8"))
    con.close()
    assert [r["name"] for r in rows(db, "SELECT name FROM schema_migrations")] == ["m001_initial"]
    same = ("runs", "messages", "model_calls")
    before = {t: dump(db, t) for t in same}
    old_cols = {t: columns(db, t) for t in same}
    old_items = rows(db, "SELECT * FROM items ORDER BY id")
    old_episodes = rows(db, "SELECT * FROM episodes ORDER BY id")
    old_verdicts = rows(db, "SELECT * FROM verdicts ORDER BY episode_id")
    assert all(before[t] for t in ("runs", "messages")) and old_items and old_verdicts

    store = Store(db)
    try:
        assert {r["name"] for r in rows(db, "SELECT name FROM schema_migrations")} == \
            {m.__name__ for m in MIGRATIONS}
        for name, table in metadata.tables.items():
            assert set(table.columns.keys()) <= set(columns(db, name)), name
        assert "verdicts" not in table_names(db)
        for t in same:
            assert dump(db, t, old_cols[t]) == before[t], t
        new_items = rows(db, "SELECT * FROM items ORDER BY id")
        assert [(i["id"], i["dataset"], i["question"], i["choices"], i["answer_index"], i["context"],
                 i["source"], i["license"], i["meta"]) for i in old_items] == \
            [(i["id"], i["dataset"], i["input"], i["choices"], int(i["target"]), i["context"],
              i["source"], i["license"], i["meta"]) for i in new_items]
        assert {i["kind"] for i in new_items} == {"choice"}
        # m006: the document of each item, from its context (items sharing one share it)
        import hashlib
        assert [i["document"] for i in new_items] == [
            "context:" + hashlib.sha256(i["context"].encode()).hexdigest()[:16] if i["context"]
            else None for i in old_items]
        new_episodes = rows(db, "SELECT * FROM episodes ORDER BY id")
        assert [e["misaligned"] for e in old_episodes] == [e["intent"] for e in new_episodes]
        made = rows(db, "SELECT * FROM decisions ORDER BY episode_id, idx")
        assert [(v["episode_id"], v["role"], v["parsed"], v["chosen"], v["probabilities"],
                 v["prob_source"], v["correct"], v["rationale"], v["raw"], v["created_at"])
                for v in old_verdicts] == \
            [(d["episode_id"], d["role"], d["parsed"], d["choice"], d["probabilities"], d["source"],
              d["correct"], d["rationale"], d["raw"], d["created_at"]) for d in made]
        assert {d["kind"] for d in made} == {"answer"}
        assert {e["decides"] for e in new_episodes if e["status"] == "done"} == {"judge"}
        # Old rows read back through today's code.
        run_id = rows(db, "SELECT id FROM runs")[0]["id"]
        results = store.results([run_id])
        assert len(results) == len(old_episodes)
        assert sum(bool(r["parsed"]) for r in results) == sum(bool(v["parsed"]) for v in old_verdicts)
        with store.engine.begin() as conn:  # foreign keys still hold after the rebuild
            assert conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall() == []
    finally:
        store.close()


def test_big_counters_are_a_no_op_on_sqlite_whose_integer_is_64_bit(tmp_path):
    """m007 widens counters on PostgreSQL only: on SQLite it is stamped and changes nothing
    (an old store keeps its INTEGER columns, a new one declares BIGINT, both INTEGER affinity);
    either stores and reads back a count past 2**31 exactly."""
    from oversight.store.migrations import m007_big_counters

    old = tmp_path / "v1.db"
    con = sqlite3.connect(old)
    con.executescript((DATA / "store_v1.sql").read_text(encoding="utf-8"))
    con.close()
    Store(old).close()
    schema = rows(old, "SELECT name, sql FROM sqlite_master ORDER BY name")
    assert "m007_big_counters" in {r["name"] for r in rows(old, "SELECT name FROM schema_migrations")}
    store = Store(old)
    try:
        with store.engine.begin() as conn:
            m007_big_counters(conn)  # again, by hand: still nothing
    finally:
        store.close()
    assert rows(old, "SELECT name, sql FROM sqlite_master ORDER BY name") == schema

    new = tmp_path / "new.db"
    run(mixed_spec(tmp_path, limit=1), new)
    declared = {r["name"]: r["type"] for r in rows(new, "PRAGMA table_info(model_calls)")}
    assert declared["tokens_in"] == "BIGINT" and declared["id"] == "INTEGER"
    for db in (old, new):
        con = sqlite3.connect(db)
        with con:
            con.execute("UPDATE runs SET replaced_tokens = 6000000001")
            con.execute("UPDATE episodes SET tokens_in = 3000000000")
        con.close()
        assert {r["replaced_tokens"] for r in rows(db, "SELECT replaced_tokens FROM runs")} \
            == {6_000_000_001}
        assert {r["tokens_in"] for r in rows(db, "SELECT tokens_in FROM episodes")} \
            == {3_000_000_000}


# -- resume ---------------------------------------------------------------------------------

def test_resume_makes_zero_calls_and_writes_nothing(tmp_path):
    db = tmp_path / "o.db"
    spec = mixed_spec(tmp_path, limit=2)
    first = run(spec, db)
    n_episodes = 2 * (1 + 2 + 2)
    assert first.summary.counts == {"done": n_episodes}
    # direct 1 call, consultancy 2, debate 2 rounds x 2 debaters + judge = 5; per item
    expected_calls = 2 * (1 + 2 * 2 + 2 * 5)
    assert first.total_calls() == expected_calls
    assert scalar(db, "SELECT COUNT(*) FROM model_calls") == expected_calls
    assert scalar(db, "SELECT SUM(n_calls) FROM episodes") == expected_calls
    before = counts(db)
    snapshot = {t: dump(db, t) for t in ("episodes", "messages", "model_calls", "decisions")}

    second = run(spec, db)
    assert second.total_calls() == 0
    assert second.summary.skipped == n_episodes and second.summary.counts == {}
    assert second.summary.status == "finished"
    assert counts(db) == before
    for t, old in snapshot.items():
        assert dump(db, t) == old, t


def test_an_episode_left_running_is_redone_cleanly(tmp_path):
    db = tmp_path / "o.db"
    spec = mixed_spec(tmp_path, limit=1)
    run(spec, db)
    ep = rows(db, "SELECT id, key FROM episodes WHERE protocol = 'debate' ORDER BY id LIMIT 1")[0]
    n_msgs = scalar(db, "SELECT COUNT(*) FROM messages WHERE episode_id = ?", ep["id"])
    assert n_msgs == 5
    # Simulate a kill -9 mid-episode: status still 'running', the judge never spoke, no decision.
    con = sqlite3.connect(db)
    with con:
        con.execute("UPDATE episodes SET status = 'running', finished_at = NULL WHERE id = ?", (ep["id"],))
        con.execute("DELETE FROM decisions WHERE episode_id = ?", (ep["id"],))
        con.execute("DELETE FROM messages WHERE episode_id = ? AND role = 'judge'", (ep["id"],))
        con.execute("DELETE FROM model_calls WHERE episode_id = ? AND role = 'judge'", (ep["id"],))
    con.close()
    # (column 1 of messages and decisions is episode_id)
    others = {t: [r for r in dump(db, t) if r[1] != ep["id"]] for t in ("messages", "decisions")}

    again = run(spec, db)
    assert again.summary.counts == {"done": 1}
    assert again.total_calls() == 5  # the whole episode, once
    assert scalar(db, "SELECT COUNT(*) FROM episodes WHERE key = ?", ep["key"]) == 1
    assert scalar(db, "SELECT id FROM episodes WHERE key = ?", ep["key"]) == ep["id"]
    assert scalar(db, "SELECT status FROM episodes WHERE id = ?", ep["id"]) == "done"
    msgs = rows(db, "SELECT idx, role FROM messages WHERE episode_id = ? ORDER BY idx", ep["id"])
    assert [m["idx"] for m in msgs] == [0, 1, 2, 3, 4]  # partial messages removed, not duplicated
    assert msgs[-1]["role"] == "judge"
    assert scalar(db, "SELECT COUNT(*) FROM model_calls WHERE episode_id = ?", ep["id"]) == 5
    assert scalar(db, "SELECT COUNT(*) FROM decisions WHERE episode_id = ?", ep["id"]) == 1
    assert scalar(db, "SELECT n_calls FROM episodes WHERE id = ?", ep["id"]) == 5
    # Nothing else was touched.
    after = {t: [r for r in dump(db, t) if r[1] != ep["id"]] for t in ("messages", "decisions")}
    assert after == others
    assert scalar(db, "SELECT status FROM runs") == "finished"


def test_a_redone_episodes_replaced_calls_still_count_as_spent(tmp_path):
    """Redoing an episode replaces its rows, not the money its first attempt spent: the run's
    spend (what a budget is checked against) keeps the replaced calls' dollars and tokens."""
    db = tmp_path / "o.db"
    spec = mixed_spec(tmp_path, limit=1)
    run(spec, db)
    ep_id = scalar(db, "SELECT id FROM episodes WHERE protocol = 'debate' ORDER BY id LIMIT 1")
    run_id = scalar(db, "SELECT id FROM runs")
    con = sqlite3.connect(db)
    with con:  # priced calls, then a kill -9 after the debaters spoke
        con.execute("UPDATE model_calls SET cost_usd = 0.25")
        con.execute("UPDATE episodes SET status = 'running', finished_at = NULL WHERE id = ?", (ep_id,))
        con.execute("DELETE FROM decisions WHERE episode_id = ?", (ep_id,))
        con.execute("DELETE FROM model_calls WHERE episode_id = ? AND role = 'judge'", (ep_id,))
    con.close()
    killed_tokens = scalar(db, "SELECT SUM(tokens_in + tokens_out) FROM model_calls WHERE episode_id = ?", ep_id)
    assert killed_tokens > 0
    store = Store(db)
    usd_before, tokens_before = store.run_spend(run_id)
    store.close()

    run(spec, db)
    new_tokens = scalar(db, "SELECT SUM(tokens_in + tokens_out) FROM model_calls WHERE episode_id = ?", ep_id)
    assert scalar(db, "SELECT COUNT(*) FROM model_calls WHERE episode_id = ?", ep_id) == 5  # rows replaced
    assert scalar(db, "SELECT replaced_usd FROM runs") == pytest.approx(4 * 0.25)
    assert scalar(db, "SELECT replaced_tokens FROM runs") == killed_tokens
    store = Store(db)
    usd, tokens = store.run_spend(run_id)
    store.close()
    assert usd == pytest.approx(usd_before)  # the new calls are unpriced (mock): nothing added, nothing lost
    assert tokens == tokens_before + new_tokens


@pytest.mark.parametrize("state", ["interrupted", "pending"])
def test_other_incomplete_states_are_redone(tmp_path, state):
    db = tmp_path / "o.db"
    spec = mixed_spec(tmp_path, limit=1)
    run(spec, db)
    con = sqlite3.connect(db)
    with con:
        ep_id = con.execute("SELECT id FROM episodes WHERE protocol = 'direct'").fetchone()[0]
        con.execute("DELETE FROM decisions WHERE episode_id = ?", (ep_id,))
        con.execute("UPDATE episodes SET status = ? WHERE id = ?", (state, ep_id))
    con.close()
    again = run(spec, db)
    assert again.total_calls() == 1 and again.summary.counts == {"done": 1}
    assert scalar(db, "SELECT COUNT(*) FROM messages WHERE episode_id = ?", ep_id) == 1
    assert scalar(db, "SELECT COUNT(*) FROM episodes") == 5


def test_limit_growth_runs_only_the_new_items_episodes(tmp_path):
    db = tmp_path / "o.db"
    spec = mixed_spec(tmp_path)
    items = load_dataset("boolq")[:2]
    one = run(spec, db, limit=1)
    assert one.summary.counts == {"done": 5}
    per_item = one.total_calls()
    assert per_item == 1 + 2 * 2 + 2 * 5
    two = run(spec, db, limit=2)
    assert two.loaded.run_id == one.loaded.run_id  # --limit does not change the run
    assert two.summary.skipped == 5 and two.summary.counts == {"done": 5}
    assert two.total_calls() == per_item
    for alias in ("j", "adv"):
        for p in two.prompts(alias):
            assert items[1].question in p and items[0].question not in p
    assert scalar(db, "SELECT COUNT(*) FROM runs") == 1
    assert scalar(db, "SELECT COUNT(*) FROM episodes") == 10
    assert scalar(db, "SELECT COUNT(DISTINCT key) FROM episodes") == 10
    assert {r["item_id"] for r in rows(db, "SELECT item_id FROM episodes")} == {it.key for it in items}
    assert scalar(db, "SELECT COUNT(*) FROM items") == 2
    three = run(spec, db, limit=2)  # and again: nothing
    assert three.total_calls() == 0


def test_a_different_seed_is_a_different_run(tmp_path):
    db = tmp_path / "o.db"
    a = run(mixed_spec(tmp_path, name="s", limit=1, seed=0), db)
    b = run(mixed_spec(tmp_path, name="s", limit=1, seed=1), db)
    assert a.loaded.run_id != b.loaded.run_id
    assert b.total_calls() == a.total_calls()
    assert scalar(db, "SELECT COUNT(*) FROM runs") == 2


# -- secrets ------------------------------------------------------------------------------

def test_writer_encodes_json_once_defaults_absent_columns_and_stores_none_as_null(tmp_path):
    """The group-commit writer feeds the driver directly: check what lands, byte for byte."""
    from oversight.store import JSONText, messages, model_calls, utcnow

    db = tmp_path / "w.db"
    run(write_spec(tmp_path / "s.toml", name="w", datasets=["boolq"], limit=1,
                   models={"j": mock([VERDICT])},
                   protocols=[{"name": "direct", "roles": {"judge": "j"}}]), db)
    episode_id = scalar(db, "SELECT id FROM episodes")
    store = Store(db)
    writer = store.writer()
    writer.insert(model_calls, {
        "episode_id": episode_id, "provider": "p", "model": "m", "latency_s": 0.5,
        "request": JSONText('{"messages":[],"z":1}'), "response": None})
    writer.insert(model_calls, {
        "episode_id": episode_id, "provider": "p", "model": "m", "latency_s": 0.25,
        "request": {"messages": [{"role": "user", "content": "é"}]}, "response": {"a": [1, None]},
        "attempt": 3, "cache_hit": True, "created_at": "2026-01-01T00:00:00.000+00:00"})
    writer.insert(messages, {"episode_id": episode_id, "idx": 99, "role": "judge",
                                         "content": "c", "shown": "s", "visible_to": None})
    before = utcnow()
    writer.flush()
    store.close()
    first, second = rows(db, "SELECT request, response, typeof(response) AS t, attempt, cache_hit, "
                             "created_at FROM model_calls WHERE provider = 'p' ORDER BY latency_s DESC")
    assert first["request"] == '{"messages":[],"z":1}'  # as given, not encoded again
    assert first["t"] == "null" and first["response"] is None  # SQL NULL, never the text 'null'
    assert (first["attempt"], first["cache_hit"]) == (1, 0)  # the declared defaults
    assert first["created_at"] >= before  # the default factory ran at flush
    assert json.loads(second["request"]) == {"messages": [{"role": "user", "content": "é"}]}
    assert json.loads(second["response"]) == {"a": [1, None]}
    assert (second["attempt"], second["cache_hit"], second["created_at"]) == (
        3, 1, "2026-01-01T00:00:00.000+00:00")
    [msg] = rows(db, "SELECT kind, typeof(visible_to) AS v, quotes FROM messages WHERE idx = 99")
    assert (msg["kind"], msg["v"], msg["quotes"]) == ("speech", "null", "[]")


def test_api_key_is_never_written(tmp_path, monkeypatch):
    secret = "sk-oversight-test-" + secrets.token_hex(16)
    monkeypatch.setenv("OVERSIGHT_TEST_API_KEY", secret)
    spec = write_spec(tmp_path / "k.toml", datasets=["boolq"], limit=1,
                      models={"j": {**mock([VERDICT]), "api_key_env": "OVERSIGHT_TEST_API_KEY"},
                              "adv": mock(["I argue."])},
                      protocols=[{"name": "consultancy", "roles": {"consultant": "adv", "judge": "j"}}])
    db = tmp_path / "k.db"
    res = run(spec, db)
    assert res.summary.counts == {"done": 2}
    # The config was stored (by the env var's *name*), so the check below is not vacuous.
    assert "OVERSIGHT_TEST_API_KEY" in scalar(db, "SELECT models FROM episodes LIMIT 1")
    files = [p for p in tmp_path.iterdir() if p.name.startswith("k.db")]
    assert db in files
    for path in files:  # the database and any WAL / shared-memory file beside it
        data = path.read_bytes()
        assert secret.encode() not in data, path.name
        assert secret.encode("utf-16-le") not in data, path.name


def test_an_episodes_answer_is_its_deciding_roles_last_one(tmp_path):
    """results(): the deciding role's answer with the highest idx; another role's later
    answer, an episode whose deciding role is unknown, and one with no answer give None."""
    from oversight.store import decisions as decisions_table

    store = Store(tmp_path / "answers.db")
    for run_id in ("r1", "r2"):
        store.save_run({"id": run_id, "name": run_id, "spec_toml": "", "spec_hash": run_id,
                        "package_version": "0.1.0"})
    store.save_items([{"id": "d/1", "dataset": "d", "input": "Q?", "choices": ["a", "b"],
                       "target": 0, "kind": "choice", "context": None, "fields": None}])

    def episode(run_id, key, decides="judge"):
        return {"run_id": run_id, "key": key, "item_id": "d/1", "protocol": "debate",
                "variant": "debate", "params": {}, "assignment": {}, "dispositions": {},
                "treatment": "none", "decides": decides, "intent": [], "outcome": None,
                "roles": {"judge": "j", "debater_a": "d"},
                "models": {"j": {"model": "m-j"}, "d": {"model": "m-d"}}, "seed": 0}

    ids = {k: i for k, (i, _) in store.create_episodes("r1", [
        episode("r1", "late"), episode("r1", "nobody", decides=None), episode("r1", "none"),
        episode("r1", "other")]).items()}
    ids |= {k: i for k, (i, _) in store.create_episodes("r2", [episode("r2", "r2")]).items()}
    writer = store.writer()

    def answer(key, idx, role, choice, probabilities):
        writer.insert(decisions_table, {
            "episode_id": ids[key], "idx": idx, "role": role, "kind": "answer", "name": "answer",
            "parsed": True, "choice": choice, "correct": choice == 0, "raw": "x",
            "source": "stated", "probabilities": probabilities})

    answer("late", 2, "judge", 0, [0.9, 0.1])  # written first: order comes from idx
    answer("late", 0, "judge", 1, [0.2, 0.8])
    answer("late", 3, "debater_a", 1, None)
    writer.insert(decisions_table, {"episode_id": ids["late"], "idx": 1, "role": "judge",
                                    "kind": "flag", "name": "flag", "parsed": True, "value": 1.0,
                                    "raw": "y", "source": "stated"})
    answer("nobody", 0, "judge", 0, [1.0, 0.0])
    answer("other", 0, "debater_a", 0, None)
    answer("r2", 0, "judge", 1, [0.3, 0.7])
    writer.flush()
    got = {r["id"]: r for r in store.results(["r1", "r2"])}
    assert (got[ids["late"]]["chosen"], got[ids["late"]]["correct"],
            got[ids["late"]]["probabilities"]) == (0, True, [0.9, 0.1])
    for key in ("nobody", "none", "other"):
        assert (got[ids[key]]["parsed"], got[ids[key]]["chosen"]) == (None, None), key
    assert (got[ids["r2"]]["run_id"], got[ids["r2"]]["chosen"]) == ("r2", 1)
    assert got[ids["late"]]["role_models"] == {"judge": "m-j", "debater_a": "m-d"}
    assert store.results([]) == [] and store.result_columns([], ["run_id"]) == {"run_id": []}
    store.close()
