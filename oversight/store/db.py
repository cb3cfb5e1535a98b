"""Opening a store: SQLite by default (WAL, busy timeout, foreign keys), any SQLAlchemy URL."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

from sqlalchemy import Engine, create_engine, event

from .migrations import MIGRATIONS, migrate, schema_version

DEFAULT_DB = Path("runs") / "oversight.db"


def resolve_url(db: str | os.PathLike | None = None) -> str:
    """--db, else $OVERSIGHT_DB, else runs/oversight.db under the current directory."""
    db = db or os.environ.get("OVERSIGHT_DB") or DEFAULT_DB
    db = str(db)
    if "://" in db:
        return db
    path = Path(db).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    # Readers never block the writer. Switching a new file to WAL needs it alone for a moment,
    # and two connections switching at once get "database is locked" at once (the busy
    # timeout does not apply): retry, briefly. Only a new file's first openers meet this.
    for attempt in range(200):
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == 199:
                raise
            time.sleep(0.05)
    cur.execute("PRAGMA busy_timeout=30000")  # wait for a lock instead of 'database is locked'
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")  # durable at each checkpoint; safe with WAL
    cur.close()


def create_store_engine(db: str | os.PathLike | None = None, *, migrate_schema: bool = True) -> Engine:
    url = resolve_url(db)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        engine = create_engine(url, pool_pre_ping=True)
    if migrate_schema:
        with engine.begin() as conn:
            if url.startswith("sqlite") and schema_version(conn) < len(MIGRATIONS):
                # One migrator at a time: two processes opening a new store at once would
                # otherwise both see it empty and both create tables (pysqlite runs DDL outside
                # any transaction). The second waits here (busy timeout), then sees the ledger.
                # An up-to-date store is opened without taking the write lock.
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            migrate(conn)
    return engine
