"""Group commit for a run's hot path: rows queue in memory and go to the store together.

One transaction per flush instead of four per call is most of the difference between ~10 ms
and ~1 ms of CPU per call (bench/RESULTS.md). Flushes run in a worker thread, one at a time,
so the event loop never waits for the database. A kill -9 loses at most the rows of the last
interval; they belong to episodes still leased to the dead worker, which a resume redoes.

Each flush first renews the leases of the episodes it writes for; rows of an episode whose
lease this worker lost are dropped and the episode reported by `take_lost`. A value the driver
cannot store (a lone surrogate in a reply) is escaped; a row that still cannot be stored is
left out and its episode fails with the reason. A store that cannot be written at all stops
the batch loudly (`run` raises StoreError) instead of dying unseen.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import defaultdict

from sqlalchemy import JSON, Engine, String, Table, bindparam, insert, update
from sqlalchemy.exc import OperationalError

from ..errors import StoreError
from . import leases
from .tables import decisions, episodes, messages, model_calls, response_cache

FLUSH_SECONDS = 0.05
GIVE_UP_AFTER = 5  # consecutive failed flushes (with growing pauses) before the batch stops
# Insert order: episodes exist before a run starts; everything else only points at them.
_ORDER: tuple[Table, ...] = (messages, model_calls, decisions, response_cache)


class JSONText(str):
    """A JSON column's value already encoded (e.g. a request encoded once for its cache key):
    the writer stores it as it is instead of encoding it again."""


def storable_text(value: str, nul: bool = True) -> str:
    """`value` as every driver can store it: lone surrogates (and NUL where the database
    refuses it) written as backslash escapes, so nothing is lost and nothing is refused."""
    if value.isascii() and (nul or "\x00" not in value):
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value if nul else value.replace("\x00", "\\x00")


class _Insert:
    """A table's INSERT compiled once, fed driver-level tuples. SQLAlchemy's per-row parameter
    processing (JSON columns encoded through its type system) was ~20% of a run's CPU; here
    each JSON value is encoded once with json.dumps, None is SQL NULL, and an absent column
    takes its declared default."""

    def __init__(self, table: Table, engine: Engine, *, ignore: bool = False):
        """`ignore`: skip rows whose unique key exists (insert-or-ignore)."""
        self.columns = [c for c in table.columns if c is not table.autoincrement_column]
        self.json = {c.name for c in self.columns if isinstance(c.type, JSON)}
        self.text = {c.name for c in self.columns if isinstance(c.type, String)}
        self.defaults = {c.name: c.default for c in self.columns if c.default is not None}
        self.nul_ok = engine.dialect.name != "postgresql"
        stmt = insert(table)
        if ignore or table is response_cache:
            from . import _insert_ignore  # two episodes may fill one cache key; the first stays

            stmt = _insert_ignore(table, engine.dialect.name)
        compiled = stmt.compile(dialect=engine.dialect, column_keys=[c.name for c in self.columns])
        self.sql = str(compiled)
        self.order = list(compiled.positiontup) if compiled.positional else None

    def params(self, rows: list[dict]) -> list:
        names = self.order or [c.name for c in self.columns]
        plan = [(n, n in self.json, n in self.text, self.defaults.get(n)) for n in names]
        out = []
        for row in rows:
            values = []
            for name, is_json, is_text, default in plan:
                if name in row:
                    value = row[name]
                elif default is not None:
                    value = default.arg(None) if default.is_callable else default.arg
                else:
                    value = None
                if value is not None:
                    if is_json and not isinstance(value, JSONText):
                        value = json.dumps(value)  # ASCII: surrogates and NUL are escaped
                    elif is_text and isinstance(value, str):
                        value = storable_text(value, self.nul_ok)
                values.append(value)
            out.append(tuple(values) if self.order is not None else dict(zip(names, values, strict=True)))
        return out


class Writer:
    """Queues rows and episode updates from the event loop; `flush` writes them (any thread)."""

    def __init__(self, engine: Engine, *, owner: str | None = None,
                 lease_seconds: float | None = None):
        self.engine, self.owner, self.lease_seconds = engine, owner, lease_seconds
        self._rows: dict[Table, list[dict]] = defaultdict(list)
        self._updates: dict[int, dict] = {}
        self.pending_cache: dict[str, dict] = {}  # key -> response, until it is flushed
        self._inserts: dict[Table, _Insert] = {}
        self._queue_lock = threading.Lock()  # the loop queues while a thread flushes
        self._flush_lock = threading.Lock()  # one flush at a time, in queue order
        self._lost: set[int] = set()  # episodes whose lease this worker lost (rows dropped)
        self.unstored: dict[int, str] = {}  # episode -> why one of its rows could not be stored

    def insert(self, table: Table, row: dict) -> None:
        with self._queue_lock:
            self._rows[table].append(row)

    def update_episode(self, episode_id: int, values: dict) -> None:
        with self._queue_lock:
            self._updates.setdefault(episode_id, {}).update(values)

    def cache(self, row: dict) -> None:
        self.pending_cache[row["key"]] = row["response"]
        self.insert(response_cache, row)

    def flush(self) -> None:
        """Write everything queued in one transaction; on failure the rows stay queued."""
        with self._flush_lock:
            with self._queue_lock:
                rows, updates = self._rows, self._updates
                self._rows, self._updates = defaultdict(list), {}
            if not rows and not updates:
                return
            cached = [row["key"] for row in rows.get(response_cache, ())]
            try:
                try:
                    self._write(rows, updates)
                except OperationalError:
                    raise
                except Exception:  # noqa: BLE001 - a row the database refuses: isolate it
                    self._write_one_by_one(rows, updates)
            except OperationalError:  # locked, disk full, read-only: keep them for a retry
                self._requeue(rows, updates)  # (what one by one wrote is no longer in them)
                raise
            for key in cached:
                self.pending_cache.pop(key, None)

    def _requeue(self, rows: dict[Table, list[dict]], updates: dict[int, dict]) -> None:
        with self._queue_lock:
            for table, queued in rows.items():  # oldest first, for the next flush
                self._rows[table][:0] = queued
            for episode_id, values in updates.items():
                self._updates[episode_id] = {**values, **self._updates.get(episode_id, {})}

    def _held(self, conn, rows: dict[Table, list[dict]], updates: dict[int, dict]) -> set[int] | None:
        """Renew and return the leases still ours among the episodes written for (None: no
        leases in use). Being the flush's first write, it also takes SQLite's write lock."""
        if self.owner is None:
            return None
        ids = {r["episode_id"] for t in (messages, model_calls, decisions) for r in rows.get(t, ())
               if r.get("episode_id") is not None} | set(updates)
        held = leases.renew(conn, sorted(ids), self.owner, self.lease_seconds or 60.0)
        with self._queue_lock:
            self._lost |= ids - held
        return held

    def take_lost(self) -> set[int]:
        """Episodes whose lease this worker found lost since the last call (their rows were
        dropped): the runner stops them."""
        with self._queue_lock:
            lost, self._lost = self._lost, set()
        return lost

    def _write(self, rows: dict[Table, list[dict]], updates: dict[int, dict]) -> None:
        with self.engine.begin() as conn:
            held = self._held(conn, rows, updates)
            for table in _ORDER:
                batch = self._ours(table, rows.get(table), held)
                if batch:
                    ins = self._insert(table)
                    conn.exec_driver_sql(ins.sql, ins.params(batch))
            self._update(conn, self._final(updates, held))

    def _write_one_by_one(self, rows: dict[Table, list[dict]], updates: dict[int, dict]) -> None:
        """The batch was refused: store each row on its own; an episode with a row that cannot
        be stored fails, with the reason, instead of the whole flush being lost.
        Rows and updates are taken out of `rows` and `updates` as they are handled, so that
        if the store fails midway, what is left can be queued again without duplicates."""
        with self.engine.begin() as conn:
            held = self._held(conn, rows, updates)
        for table in _ORDER:
            ins = self._insert(table) if rows.get(table) else None
            keep = {id(r) for r in self._ours(table, rows.get(table), held)}
            while rows.get(table):
                row = rows[table][0]
                try:
                    if id(row) in keep:
                        with self.engine.begin() as conn:
                            conn.exec_driver_sql(ins.sql, ins.params([row]))
                except OperationalError:
                    raise
                except Exception as exc:  # noqa: BLE001 - recorded on the episode below
                    if row.get("episode_id") is not None:
                        reason = f"could not store a {table.name} row: {type(exc).__name__}: {exc}"
                        self.unstored.setdefault(row["episode_id"], reason[:500])
                rows[table].pop(0)
        for episode_id, values in self._final(updates, held).items():
            try:
                with self.engine.begin() as conn:
                    self._update(conn, {episode_id: values})
                updates.pop(episode_id)
            except OperationalError:
                raise
            except Exception as exc:  # noqa: BLE001 - e.g. a total no INTEGER column holds
                reason = f"could not store the episode's totals: {type(exc).__name__}: {exc}"
                self.unstored.setdefault(episode_id, reason[:500])
                kept = {k: v for k, v in values.items()
                        if k in ("finished_at", "duration_s", "lease_owner", "lease_expires")}
                with self.engine.begin() as conn:
                    self._update(conn, {episode_id: {**kept, "status": "failed",
                                                     "error": self.unstored[episode_id]}})
                updates.pop(episode_id)
        updates.clear()  # those of lost leases: not ours to write

    def _ours(self, table: Table, batch: list[dict] | None, held: set[int] | None) -> list[dict]:
        """The rows to write: not those of episodes whose lease is lost, and no decision for an
        episode that failed because one of its rows could not be stored."""
        if not batch or (held is None and not (table is decisions and self.unstored)):
            return batch or []
        return [r for r in batch if (eid := r.get("episode_id")) is None
                or ((held is None or eid in held) and not (table is decisions and eid in self.unstored))]

    def _final(self, updates: dict[int, dict], held: set[int] | None) -> dict[int, dict]:
        """The episode updates to write: only for leases still held; an episode one of whose
        rows could not be stored ends failed, with the reason, whatever its protocol said."""
        out = {}
        for episode_id, values in updates.items():
            if held is not None and episode_id not in held:
                continue
            if episode_id in self.unstored and values.get("status") in ("done", "failed"):
                values = {**values, "status": "failed", "error": self.unstored[episode_id]}
            out[episode_id] = values
        return out

    @staticmethod
    def _update(conn, updates: dict[int, dict]) -> None:
        by_columns: dict[tuple, list[dict]] = defaultdict(list)
        for episode_id, values in updates.items():
            by_columns[tuple(sorted(values))].append({"_id": episode_id, **values})
        for columns, params in by_columns.items():
            stmt = (update(episodes).where(episodes.c.id == bindparam("_id"))
                    .values({c: bindparam(c) for c in columns}))
            conn.execute(stmt, params)

    def _insert(self, table: Table) -> _Insert:
        if table not in self._inserts:
            self._inserts[table] = _Insert(table, self.engine)
        return self._inserts[table]

    async def run(self, interval: float = FLUSH_SECONDS) -> None:
        """Flush in a thread every `interval` until cancelled (the owner flushes once more at
        the end). A store that keeps refusing writes raises StoreError: the batch must stop."""
        failures = 0
        while True:
            await asyncio.sleep(interval * 2 ** failures)
            try:
                await asyncio.to_thread(self.flush)
                failures = 0
            except Exception as exc:  # noqa: BLE001 - retried, then reported
                failures += 1
                if failures >= GIVE_UP_AFTER:
                    raise write_failure(self.engine.url.render_as_string(hide_password=True),
                                        exc) from exc


def write_failure(target: str, exc: BaseException) -> StoreError:
    """The error that stops a batch whose store refuses writes, naming the store and why."""
    first = (str(exc).splitlines() or [""])[0][:300]
    return StoreError(target, f"cannot write to the store ({type(exc).__name__}: {first})")
