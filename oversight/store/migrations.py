"""Schema versions as an ordered list of small named functions.

A fresh database is created from the current tables and stamped with every migration; an
existing one runs, in order, the migrations it has not seen. Never edit or reorder a released
migration: append a new one, and change the tables in oversight/store/tables.py to match.
"""

from __future__ import annotations

import json
from typing import Callable

from sqlalchemy import Connection, inspect, text
from sqlalchemy.schema import CreateTable

from .tables import (
    batch_requests,
    decisions,
    document_key,
    items,
    metadata,
    provider_batches,
    response_cache,
    utcnow,
)

Migration = Callable[[Connection], None]


def m001_initial(conn: Connection) -> None:
    """runs, items, episodes, messages, model_calls, verdicts (version 1).

    Only ever applied to a fresh database, which gets today's tables (see migrate())."""
    metadata.create_all(conn)


def m002_costs_and_cache(conn: Connection) -> None:
    """Cached/reasoning tokens, dollars, error kinds and cache hits; the response cache."""
    for table, column, sql_type in [
        ("episodes", "tokens_cached", "INTEGER NOT NULL DEFAULT 0"),
        ("episodes", "cost_usd", "FLOAT"),
        ("episodes", "cache_hits", "INTEGER NOT NULL DEFAULT 0"),
        ("model_calls", "tokens_cached", "INTEGER"),
        ("model_calls", "tokens_reasoning", "INTEGER"),
        ("model_calls", "cost_usd", "FLOAT"),
        ("model_calls", "error_kind", "VARCHAR"),
        ("model_calls", "cache_key", "VARCHAR"),
        ("model_calls", "cache_hit", "BOOLEAN NOT NULL DEFAULT false"),
    ]:
        conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {column} {sql_type}"))
    conn.execute(text("CREATE INDEX IF NOT EXISTS ix_model_calls_cache_key ON model_calls (cache_key)"))
    response_cache.create(conn, checkfirst=True)


def m003_replaced_spend(conn: Connection) -> None:
    """Spend of calls discarded when their episode is redone, kept on the run for budgets."""
    conn.execute(text("ALTER TABLE runs ADD COLUMN replaced_usd FLOAT DEFAULT '0' NOT NULL"))
    conn.execute(text("ALTER TABLE runs ADD COLUMN replaced_tokens INTEGER DEFAULT '0' NOT NULL"))


def m004_leases_and_reply_cap(conn: Connection) -> None:
    """Episode leases (owner, expiry by the database's clock); the length of a reply that was
    cut to the model's max_reply_chars."""
    conn.execute(text("ALTER TABLE episodes ADD COLUMN lease_owner VARCHAR"))
    conn.execute(text("ALTER TABLE episodes ADD COLUMN lease_expires FLOAT"))
    conn.execute(text("ALTER TABLE model_calls ADD COLUMN reply_chars INTEGER"))


def m005_tasks_decisions_truths(conn: Connection) -> None:
    """Items of any shape (input, choices or none, a target of any kind, the source row's
    other fields); several decisions per episode (verdicts move to `decisions`); the two
    truths of an episode (intent, the renamed `misaligned`; outcome) and its treatment; the
    hashes of the code and templates behind a run."""
    sqlite = conn.dialect.name == "sqlite"
    conn.execute(text("ALTER TABLE runs ADD COLUMN code JSON"))
    conn.execute(text("ALTER TABLE episodes RENAME COLUMN misaligned TO intent"))
    conn.execute(text("ALTER TABLE episodes ADD COLUMN treatment VARCHAR"))
    conn.execute(text("ALTER TABLE episodes ADD COLUMN outcome BOOLEAN"))
    conn.execute(text("ALTER TABLE episodes ADD COLUMN decides VARCHAR"))
    if sqlite:  # SQLite cannot drop a NOT NULL or change a type: rebuild the table (the
        # migrator runs SQLite migrations with foreign keys off and checks them at the end)
        ddl = str(CreateTable(items).compile(dialect=conn.dialect))
        conn.execute(text(ddl.replace("CREATE TABLE items", "CREATE TABLE items_m005", 1)))
        conn.execute(text(
            "INSERT INTO items_m005 (id, dataset, input, choices, target, kind, context, source, "
            "license, meta) SELECT id, dataset, question, choices, CAST(answer_index AS TEXT), "
            "'choice', context, source, license, meta FROM items"))
        conn.execute(text("DROP TABLE items"))
        conn.execute(text("ALTER TABLE items_m005 RENAME TO items"))
        for index in items.indexes:
            index.create(conn)
    else:
        for sql in ("ALTER TABLE items RENAME COLUMN question TO input",
                    "ALTER TABLE items ALTER COLUMN answer_index DROP NOT NULL",
                    "ALTER TABLE items ALTER COLUMN answer_index TYPE JSON USING to_json(answer_index)",
                    "ALTER TABLE items RENAME COLUMN answer_index TO target",
                    "ALTER TABLE items ADD COLUMN kind VARCHAR NOT NULL DEFAULT 'choice'",
                    "ALTER TABLE items ALTER COLUMN kind DROP DEFAULT",
                    "ALTER TABLE items ADD COLUMN label VARCHAR",
                    "ALTER TABLE items ADD COLUMN labels JSON",
                    "ALTER TABLE items ADD COLUMN bad_labels JSON",
                    "ALTER TABLE items ADD COLUMN fields JSON"):
            conn.execute(text(sql))
    decisions.create(conn)
    cols = ("episode_id, idx, role, kind, name, parsed, choice, value, scale_lo, scale_hi, "
            "probabilities, source, correct, rationale, raw, created_at")
    flag = "CASE WHEN flagged THEN 1.0 ELSE 0.0 END"
    for select_ in (
            "episode_id, 0, role, 'answer', 'answer', parsed, chosen, NULL, NULL, NULL, "
            "probabilities, prob_source, correct, rationale, raw, created_at FROM verdicts",
            f"episode_id, 1, role, 'flag', 'flag', parsed, NULL, {flag}, NULL, NULL, NULL, 'stated', "
            "NULL, NULL, raw, created_at FROM verdicts WHERE flagged IS NOT NULL",
            "episode_id, 2, role, 'score', 'suspicion', parsed, NULL, suspicion, 0.0, 1.0, NULL, "
            "'stated', NULL, NULL, raw, created_at FROM verdicts WHERE suspicion IS NOT NULL"):
        conn.execute(text(f"INSERT INTO decisions ({cols}) SELECT {select_}"))
    conn.execute(text("UPDATE episodes SET decides = (SELECT role FROM verdicts "
                      "WHERE verdicts.episode_id = episodes.id)"))
    conn.execute(text("DROP TABLE verdicts"))


def m006_documents_and_rejudging(conn: Connection) -> None:
    """The document an item belongs to (intervals resample documents); the episode a
    re-judging's episode judged again."""
    # m005 rebuilds SQLite's items from today's table, which has the column already
    if "document" not in {c["name"] for c in inspect(conn).get_columns("items")}:
        conn.execute(text("ALTER TABLE items ADD COLUMN document VARCHAR"))
    conn.execute(text("CREATE INDEX IF NOT EXISTS ix_items_document ON items (document)"))
    conn.execute(text("ALTER TABLE episodes ADD COLUMN source_episode_id INTEGER "
                      "REFERENCES episodes (id)"))
    conn.execute(text("CREATE INDEX IF NOT EXISTS ix_episodes_source_episode_id "
                      "ON episodes (source_episode_id)"))
    stored = conn.execute(text("SELECT id, context, fields FROM items")).all()
    for item_id, context, fields in stored:
        if isinstance(fields, str):
            fields = json.loads(fields)
        key = document_key({"context": context, "fields": fields})
        if key is not None:
            conn.execute(text("UPDATE items SET document = :d WHERE id = :i"),
                         {"d": key, "i": item_id})


# The token and call counters m007 widens, by table (ids are left as they are).
BIG_COUNTERS = {
    "runs": ("replaced_tokens",),
    "episodes": ("n_calls", "tokens_in", "tokens_out", "tokens_cached", "cache_hits"),
    "messages": ("tokens_in", "tokens_out"),
    "model_calls": ("tokens_in", "tokens_out", "tokens_cached", "tokens_reasoning",
                    "reply_chars"),
}


def m007_big_counters(conn: Connection) -> None:
    """Token and call counters 64-bit: PostgreSQL's INTEGER is 32-bit, and a big run's
    tokens (runs.replaced_tokens first) pass 2**31. SQLite's INTEGER is 64-bit already:
    nothing to do there (the migration is only stamped)."""
    if conn.dialect.name != "postgresql":
        return
    for table, columns in BIG_COUNTERS.items():  # one statement: each table rewritten once
        alter = ", ".join(f"ALTER COLUMN {c} TYPE BIGINT" for c in columns)
        conn.execute(text(f"ALTER TABLE {table} {alter}"))


def m008_provider_batches(conn: Connection) -> None:
    """Provider batch jobs and their requests (models with `batch = true`): stored before
    they are sent, so a restarted run resumes them instead of sending them again."""
    provider_batches.create(conn, checkfirst=True)
    batch_requests.create(conn, checkfirst=True)


MIGRATIONS: list[Migration] = [m001_initial, m002_costs_and_cache, m003_replaced_spend,
                               m004_leases_and_reply_cap, m005_tasks_decisions_truths,
                               m006_documents_and_rejudging, m007_big_counters,
                               m008_provider_batches]

_LEDGER = "schema_migrations"


def applied(conn: Connection) -> set[str]:
    """Names of the migrations a database has applied (empty for a new one)."""
    if not inspect(conn).has_table(_LEDGER):
        return set()
    return {row[0] for row in conn.execute(text(f"SELECT name FROM {_LEDGER}"))}


def schema_version(conn: Connection) -> int:
    return len(applied(conn))


def schema_problem(done: set[str], migrations: list[Migration] | None = None) -> tuple[str, str] | None:
    """("newer" | "older", why) when code with these migrations and a store that applied `done`
    differ: a newer store has migrations the code does not know (never written to, never
    read); an older one lacks some (a run migrates it; a read-only open refuses it)."""
    known = [m.__name__ for m in (MIGRATIONS if migrations is None else migrations)]
    if unknown := sorted(done - set(known)):
        return "newer", (f"the store's schema is newer than this oversight (it has migration "
                         f"{unknown[-1]}, unknown here): upgrade oversight to read it")
    if missing := [n for n in known if n not in done]:
        return "older", (f"the store's schema is older than this oversight ({len(done)} of "
                         f"{len(known)} migrations; next: {missing[0]}): run `oversight migrate "
                         "--db ...` once to upgrade it (read-only commands never write to a store)")
    return None


def migrate(conn: Connection, migrations: list[Migration] | None = None) -> list[str]:
    """Bring the schema up to date; returns the names of migrations applied."""
    migrations = MIGRATIONS if migrations is None else migrations
    conn.execute(text(f"CREATE TABLE IF NOT EXISTS {_LEDGER} "
                      "(name VARCHAR PRIMARY KEY, applied_at VARCHAR NOT NULL)"))
    done = {row[0] for row in conn.execute(text(f"SELECT name FROM {_LEDGER}"))}
    stamp = text(f"INSERT INTO {_LEDGER} (name, applied_at) VALUES (:n, :t)")
    if not done and not inspect(conn).has_table("runs"):
        # A new database gets today's tables in one go; every migration is only stamped.
        ran = [m.__name__ for m in migrations]
        if ran:
            metadata.create_all(conn)
            now = utcnow()
            conn.execute(stamp, [{"n": name, "t": now} for name in ran])
        return ran
    ran = []
    for migration in migrations:
        if migration.__name__ in done:
            continue
        migration(conn)
        conn.execute(stamp, {"n": migration.__name__, "t": utcnow()})
        ran.append(migration.__name__)
    return ran
