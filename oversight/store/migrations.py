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


MIGRATIONS: list[Migration] = [m001_initial, m002_costs_and_cache, m003_replaced_spend]

_LEDGER = "schema_migrations"


def schema_version(conn: Connection) -> int:
    if not inspect(conn).has_table(_LEDGER):
        return 0
    return len(conn.execute(text(f"SELECT name FROM {_LEDGER}")).all())


def migrate(conn: Connection, migrations: list[Migration] | None = None) -> list[str]:
    """Bring the schema up to date; returns the names of migrations applied."""
    migrations = MIGRATIONS if migrations is None else migrations
    conn.execute(text(f"CREATE TABLE IF NOT EXISTS {_LEDGER} "
                      "(name VARCHAR PRIMARY KEY, applied_at VARCHAR NOT NULL)"))
    done = {row[0] for row in conn.execute(text(f"SELECT name FROM {_LEDGER}"))}
    fresh = not done and not inspect(conn).has_table("runs")
    applied = []
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
        applied.append(migration.__name__)
    return applied
