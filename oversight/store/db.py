"""Opening a store: SQLite by default (WAL, busy timeout, foreign keys), any SQLAlchemy URL.

A store opened for writing is migrated forward; one opened read-only (reports, `show`,
exports) is never written to, no folder is created for it, and its schema must match the
code's exactly. Anything that is not an oversight store is refused with a StoreError.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from ..errors import StoreError
from .migrations import MIGRATIONS, applied, migrate, schema_problem

DEFAULT_DB = Path("runs") / "oversight.db"
# The PostgreSQL advisory lock (one per database) that migrators take: b"oversigh" as a bigint.
MIGRATION_LOCK = int.from_bytes(b"oversigh", "big")


def target_of(db: str | os.PathLike | None = None) -> str:
    """--db, else $OVERSIGHT_DB, else runs/oversight.db under the current directory."""
    return str(db or os.environ.get("OVERSIGHT_DB") or DEFAULT_DB)


def safe_url(url: str) -> str:
    """A store URL fit to print: a PostgreSQL password never reaches the terminal or logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL: a path
        return url


def resolve_url(db: str | os.PathLike | None = None, *, create_dirs: bool = True) -> str:
    """The SQLAlchemy URL of a store; a SQLite file's folder is created only when asked."""
    target = target_of(db)
    if "://" in target:
        return target
    path = Path(target).expanduser()
    if path.is_dir():
        raise StoreError(target, "is a folder; expected a SQLite file (or a database URL)")
    if create_dirs:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(target, f"cannot create its folder: {exc.strerror or exc}") from None
    return f"sqlite:///{path}"


def _sqlite_file(url: str) -> Path | None:
    """The file a sqlite:/// URL names (a path and a URL name the same store); None in memory."""
    database = make_url(url).database
    return Path(database).expanduser() if database and database != ":memory:" else None


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


def _sqlite_readonly_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA query_only=ON")
    cur.close()


def create_store_engine(db: str | os.PathLike | None = None, *, migrate_schema: bool = True,
                        readonly: bool = False) -> Engine:
    """An engine on the store. Read-only: nothing is created, migrated or written."""
    target = target_of(db)
    url = resolve_url(db, create_dirs=not readonly)
    sqlite = url.startswith("sqlite")
    path = _sqlite_file(url) if sqlite else None
    if sqlite and readonly:
        if path is None or not path.resolve().exists():
            raise StoreError(target, "no store here (pass --db, set OVERSIGHT_DB, or start a run "
                             "with `oversight run SPEC.toml`)")
        engine = create_engine(f"sqlite:///file:{path.resolve()}?mode=ro&uri=true",
                               connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_readonly_pragmas)
    elif sqlite:
        if path is not None and path.exists() and path.stat().st_size:
            _probe(path, safe_url(target))  # before the WAL switch writes to the file
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
    elif readonly and url.startswith("postgresql"):  # the server itself refuses writes
        engine = create_engine(url, pool_pre_ping=True,
                               connect_args={"options": "-c default_transaction_read_only=on"})
    else:
        engine = create_engine(url, pool_pre_ping=True)
    try:
        _check_and_migrate(engine, safe_url(target), readonly=readonly,
                           migrate_schema=migrate_schema)
    except BaseException:
        engine.dispose()
        raise
    return engine


def _probe(path: Path, target: str) -> None:
    """Refuse an existing file that is not an oversight store (or is a newer one) without
    writing a byte to it: opening for writing switches the file to WAL."""
    try:
        con = sqlite3.connect(f"file:{path.resolve()}?mode=ro", uri=True, timeout=30)
        try:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            done = ({r[0] for r in con.execute("SELECT name FROM schema_migrations")}
                    if "schema_migrations" in tables else set())
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        raise StoreError(target, f"cannot open it as a store (not a SQLite database: {exc})") from None
    if (problem := _refusal(tables, done, readonly=False)) is not None:
        raise StoreError(target, problem)


def _refusal(tables: set[str], done: set[str], readonly: bool) -> str | None:
    """Why a database with these tables and applied migrations is not to be opened: not an
    oversight store, empty (for reading), newer than the code, or older (for reading)."""
    foreign = sorted(t for t in tables if not t.startswith("sqlite_"))
    if not done and foreign and "runs" not in foreign:
        return (f"not an oversight store (it has tables {', '.join(foreign[:5])} and no "
                "schema_migrations)")
    if not done and readonly:
        return "is empty: not an oversight store yet"
    problem = schema_problem(done)
    return problem[1] if problem and (readonly or problem[0] == "newer") else None


def _check_and_migrate(engine: Engine, target: str, *, readonly: bool, migrate_schema: bool) -> None:
    sqlite = engine.dialect.name == "sqlite"
    try:
        with engine.begin() as conn:
            done = applied(conn)
            tables = set(inspect(conn).get_table_names()) if not done else set()
            if (problem := _refusal(tables, done, readonly)) is not None:
                raise StoreError(target, problem)
            if migrate_schema and not readonly and len(done) < len(MIGRATIONS):
                if sqlite:
                    # A table rebuild (SQLite's way to change a column) needs foreign keys
                    # off, which only takes effect outside a transaction; they are checked
                    # below before anything commits, and back on for every later connection.
                    conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
                    # One migrator at a time: two processes opening a new store at once would
                    # otherwise both see it empty and both create tables (pysqlite runs DDL
                    # outside any transaction). The second waits here (busy timeout), then
                    # sees the ledger. An up-to-date store is opened without the write lock.
                    conn.exec_driver_sql("BEGIN IMMEDIATE")
                elif engine.dialect.name == "postgresql":
                    # The same on PostgreSQL: a lock held until this transaction ends. The
                    # second migrator waits here, then migrate() reads the ledger afresh (each
                    # statement sees what committed before it) and finds nothing left to do.
                    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"),
                                 {"key": MIGRATION_LOCK})
                migrate(conn)
                if sqlite and (broken := conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()):
                    raise StoreError(target, f"migrating would break {len(broken)} reference(s) "
                                     f"(first: {broken[0]}); nothing was changed")
    except StoreError:
        raise
    except DBAPIError as exc:
        orig = getattr(exc, "orig", None) or exc
        raise StoreError(target, f"cannot open it as a store ({type(orig).__name__}: "
                         f"{str(orig).splitlines()[0] if str(orig) else 'no detail'})") from None
    finally:
        if sqlite:
            engine.dispose()  # pooled connections start afresh (foreign keys on)
