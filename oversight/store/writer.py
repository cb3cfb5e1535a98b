"""Group commit for a run's hot path: rows queue in memory and go to the store together.

One transaction per flush instead of four per call is most of the difference between ~10 ms
and ~1 ms of CPU per call (bench/RESULTS.md). The runner flushes every FLUSH_SECONDS and at
the end; a kill -9 loses at most the rows of that last interval, which belong to episodes
still marked running, so a resume redoes them. Episode claims are not buffered (see
Store.claim_episode): two processes must agree on who runs what before any call is made.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict

from sqlalchemy import JSON, Engine, Table, bindparam, insert, update

from .tables import episodes, messages, model_calls, response_cache, verdicts

FLUSH_SECONDS = 0.05
# Insert order: episodes exist before a run starts; everything else only points at them.
_ORDER: tuple[Table, ...] = (messages, model_calls, verdicts, response_cache)


class JSONText(str):
    """A JSON column's value already encoded (e.g. a request encoded once for its cache key):
    the writer stores it as it is instead of encoding it again."""


class _Insert:
    """A table's INSERT compiled once, fed driver-level tuples. SQLAlchemy's per-row parameter
    processing (JSON columns encoded through its type system) was ~20% of a run's CPU; here
    each JSON value is encoded once with json.dumps, None is SQL NULL, and an absent column
    takes its declared default."""

    def __init__(self, table: Table, engine: Engine):
        self.columns = [c for c in table.columns if c is not table.autoincrement_column]
        self.json = {c.name for c in self.columns if isinstance(c.type, JSON)}
        self.defaults = {c.name: c.default for c in self.columns if c.default is not None}
        stmt = insert(table)
        if table is response_cache:
            from . import _insert_ignore  # two episodes may fill one cache key; the first stays

            stmt = _insert_ignore(table, engine.dialect.name)
        compiled = stmt.compile(dialect=engine.dialect, column_keys=[c.name for c in self.columns])
        self.sql = str(compiled)
        self.order = list(compiled.positiontup) if compiled.positional else None

    def params(self, rows: list[dict]) -> list:
        names = self.order or [c.name for c in self.columns]
        plan = [(n, n in self.json, self.defaults.get(n)) for n in names]
        out = []
        for row in rows:
            values = []
            for name, is_json, default in plan:
                if name in row:
                    value = row[name]
                elif default is not None:
                    value = default.arg(None) if default.is_callable else default.arg
                else:
                    value = None
                if is_json and value is not None and not isinstance(value, JSONText):
                    value = json.dumps(value)
                values.append(value)
            out.append(tuple(values) if self.order is not None else dict(zip(names, values, strict=True)))
        return out


class Writer:
    def __init__(self, engine: Engine):
        self.engine = engine
        self._rows: dict[Table, list[dict]] = defaultdict(list)
        self._updates: dict[int, dict] = {}
        self.pending_cache: dict[str, dict] = {}  # key -> response, until it is flushed
        self._inserts: dict[Table, _Insert] = {}

    def insert(self, table: Table, row: dict) -> None:
        self._rows[table].append(row)

    def update_episode(self, episode_id: int, values: dict) -> None:
        self._updates.setdefault(episode_id, {}).update(values)

    def cache(self, row: dict) -> None:
        self.pending_cache[row["key"]] = row["response"]
        self._rows[response_cache].append(row)

    def flush(self) -> None:
        """Write everything queued in one transaction; on failure the rows stay queued."""
        rows, updates = self._rows, self._updates
        if not rows and not updates:
            return
        self._rows, self._updates = defaultdict(list), {}
        try:
            with self.engine.begin() as conn:
                for table in _ORDER:
                    if rows.get(table):
                        ins = self._insert(table)
                        conn.exec_driver_sql(ins.sql, ins.params(rows[table]))
                by_columns: dict[tuple, list[dict]] = defaultdict(list)
                for episode_id, values in updates.items():
                    by_columns[tuple(sorted(values))].append({"_id": episode_id, **values})
                for columns, params in by_columns.items():
                    stmt = (update(episodes).where(episodes.c.id == bindparam("_id"))
                            .values({c: bindparam(c) for c in columns}))
                    conn.execute(stmt, params)
        except BaseException:
            for table, queued in rows.items():  # keep them, oldest first, for the next flush
                self._rows[table][:0] = queued
            for episode_id, values in updates.items():
                self._updates[episode_id] = {**values, **self._updates.get(episode_id, {})}
            raise
        for row in rows.get(response_cache, ()):
            self.pending_cache.pop(row["key"], None)

    def _insert(self, table: Table) -> _Insert:
        if table not in self._inserts:
            self._inserts[table] = _Insert(table, self.engine)
        return self._inserts[table]

    async def run(self, interval: float = FLUSH_SECONDS) -> None:
        """Flush periodically until cancelled (the owner flushes once more at the end)."""
        while True:
            await asyncio.sleep(interval)
            self.flush()
