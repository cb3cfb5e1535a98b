"""Schema versions as an ordered list of small named functions.

A fresh database is created from the current tables and stamped with every migration; an
existing one runs, in order, the migrations it has not seen. Never edit or reorder a released
migration: append a new one, and change the tables in oversight/store/tables.py to match.
"""

from __future__ import annotations

from typing import Callable

from sqlalchemy import Connection, inspect, text

from .tables import metadata, response_cache, utcnow

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


MIGRATIONS: list[Migration] = [m001_initial, m002_costs_and_cache, m003_replaced_spend,
                               m004_leases_and_reply_cap]

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
    fresh = not done and not inspect(conn).has_table("runs")
    ran = []
    for migration in migrations:
        if migration.__name__ in done:
            continue
        if fresh:
            # A new database gets today's tables in one go; each migration is only stamped.
            metadata.create_all(conn)
        else:
            migration(conn)
        conn.execute(text(f"INSERT INTO {_LEDGER} (name, applied_at) VALUES (:n, :t)"),
                     {"n": migration.__name__, "t": utcnow()})
        ran.append(migration.__name__)
    return ran
