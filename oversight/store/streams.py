"""A run's tables read in chunks, for exports: never all rows in memory at once.

Four tables, each of the given runs' episodes (ordered, so two exports of one store match):

- ``episodes``: one row per episode: the episode's columns but its lease (``lease_owner``,
  ``lease_expires``: who runs it now, not what it is), then its item's ``dataset``,
  ``item_kind``, ``target`` (the gold, JSON), ``n_choices`` (NULL when not multiple choice)
  and ``document`` (when the store has that column; NULL: the item stands alone), then the
  deciding role's final answer as `Store.results()` picks it (its last ``answer`` decision):
  ``parsed``, ``chosen``, ``correct``, ``probabilities``, ``answer_text``, all NULL without
  one. ``roles`` (role -> alias) and ``models`` (alias -> public config) stay JSON.
- ``messages``, ``decisions``: the table's columns with ``run_id`` after ``episode_id``;
  ordered by episode, then ``idx``.
- ``calls``: the ``model_calls`` table's columns (what it holds and nothing else: no key or
  auth header is ever stored there) with ``run_id`` after ``episode_id``; ordered by
  episode, then id (attempt order). Calls of no episode belong to no run: not exported.

Each table has a stable column order, `fields(table)`: a name and a kind (``str``, ``int``,
``float``, ``bool``, ``json``). A chunk is a list of tuples in that order. Values: Python
str, int, float, bool or None (SQL NULL, never replaced by 0 or ""); a JSON column's value is
its JSON *text* as stored (a str), None for SQL NULL or the JSON text ``null``. Columns a
later migration adds to these tables appear here by themselves, in table order.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from sqlalchemy import JSON, Boolean, Float, Integer, Text, cast, func, select, type_coerce
from sqlalchemy.sql.elements import ColumnElement

from .tables import decisions, episodes, items, messages, model_calls

TABLES = ("episodes", "messages", "decisions", "calls")
KINDS = ("str", "int", "float", "bool", "json")
# Rows per chunk: a chunk of calls holds whole requests (every message sent), so fewer.
CHUNK_ROWS = {"episodes": 5000, "messages": 5000, "decisions": 10000, "calls": 1000}
_LEASE = ("lease_owner", "lease_expires")


@dataclass(frozen=True)
class Field:
    """One exported column: its name and kind (str, int, float, bool or json)."""

    name: str
    kind: str


def _kind(column: ColumnElement) -> str:
    t = column.type
    if isinstance(t, JSON):
        return "json"
    if isinstance(t, Boolean):
        return "bool"
    if isinstance(t, Integer):
        return "int"
    if isinstance(t, Float):
        return "float"
    return "str"


def _with_run_id(table) -> list[ColumnElement]:
    cols: list[ColumnElement] = []
    for c in table.columns:
        cols.append(c)
        if c.name == "episode_id":
            cols.append(episodes.c.run_id)
    return cols


def _columns(table: str) -> list[ColumnElement]:
    """The selected columns of an export table, labelled with their exported names."""
    if table == "episodes":
        d = decisions.c
        cols = [c for c in episodes.columns if c.name not in _LEASE]
        cols += [items.c.dataset, items.c.kind.label("item_kind"), items.c.target,
                 type_coerce(func.json_array_length(items.c.choices), Integer).label("n_choices")]
        if "document" in items.c:
            cols.append(items.c.document)
        return cols + [d.parsed, d.choice.label("chosen"), d.correct, d.probabilities,
                       d.text.label("answer_text")]
    if table == "messages":
        return _with_run_id(messages)
    if table == "decisions":
        return _with_run_id(decisions)
    if table == "calls":
        return _with_run_id(model_calls)
    raise ValueError(f"unknown table {table!r}: expected one of {', '.join(TABLES)}")


def fields(table: str) -> tuple[Field, ...]:
    """The columns of an export table, in order (ValueError for an unknown table)."""
    return tuple(Field(c.name, _kind(c)) for c in _columns(table))


def _statement(table: str, run_ids: list[str], dialect: str, scan: bool = False):
    """The SELECT of an export table. `scan`: walk the episodes in id order and filter them by
    run (no index on run_id), so rows come out already in order: on SQLite, for a run that
    is much of its store, that saves sorting every row (a third of an export's time)."""
    cols = _columns(table)
    # JSON columns are read as their text: exports write JSON text (CSV, Parquet) or embed it
    # (JSONL), and decoding then re-encoding every value would double the cost. PostgreSQL's
    # driver decodes json itself, so the text is asked for in SQL there.
    as_text = [(cast(c, Text) if dialect == "postgresql" else type_coerce(c, Text)).label(c.name)
               if _kind(c) == "json" else c for c in cols]
    e = episodes.c
    of_runs = (e.run_id.concat("") if scan else e.run_id).in_(run_ids)
    if table == "episodes":
        d = decisions.c
        final = (select(func.max(d.idx)).where(d.episode_id == e.id, d.role == e.decides,
                                               d.kind == "answer")
                 .correlate(episodes).scalar_subquery())
        return (select(*as_text).select_from(episodes)
                .join(items, items.c.id == e.item_id)
                .join(decisions, (d.episode_id == e.id) & (d.idx == final), isouter=True)
                .where(of_runs).order_by(e.id))
    source = {"messages": messages, "decisions": decisions, "calls": model_calls}[table]
    within = source.c.id if table == "calls" else source.c.idx
    return (select(*as_text).select_from(episodes)
            .join(source, source.c.episode_id == e.id)
            .where(of_runs).order_by(e.id, within))


def _scan(engine, run_ids: list[str]) -> bool:
    """Whether to read the runs' episodes by walking the table (SQLite, and they are at least
    a quarter of it) rather than through the run index and a sort."""
    if engine.dialect.name != "sqlite":
        return False
    with engine.connect() as conn:
        mine = conn.scalar(select(func.count()).select_from(episodes)
                           .where(episodes.c.run_id.in_(run_ids)))
        total = conn.scalar(select(func.count()).select_from(episodes))
    return bool(mine) and mine * 4 >= total


def _json_text(value):
    """A JSON column's value as JSON text: SQLite's NUMERIC affinity hands back a stored JSON
    number as an int or float; the text 'null' is SQL NULL."""
    if value is None or value == "null":
        return None
    if value.__class__ is str:
        return value
    if value.__class__ is int:
        return int.__repr__(value)
    return json.dumps(value)


def stream(store, table: str, run_ids: str | Sequence[str], *,
           chunk_size: int | None = None) -> Iterator[list[tuple]]:
    """Chunks of `chunk_size` rows (default CHUNK_ROWS[table]) of `table` for the episodes of
    `run_ids`, as tuples in `fields(table)` order. Read through one connection with
    `yield_per`: the database cursor is consumed as the chunks are; close the generator (or
    exhaust it) to release it. An unknown table or a chunk size under 1 is a ValueError, at
    once."""
    run_ids = [run_ids] if isinstance(run_ids, str) else list(run_ids)
    size = CHUNK_ROWS.get(table, 5000) if chunk_size is None else int(chunk_size)
    if size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    json_at = [i for i, f in enumerate(fields(table)) if f.kind == "json"]
    if not run_ids:
        return iter(())
    stmt = _statement(table, run_ids, store.engine.dialect.name, _scan(store.engine, run_ids))
    return _chunks(store.engine, stmt, size, json_at)


_TEXT = {str, type(None)}


def _chunks(engine, stmt, size: int, json_at: list[int]) -> Iterator[list[tuple]]:
    with engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=size).execute(stmt)
        for part in result.partitions():
            if not json_at:
                yield [tuple(r) for r in part]
                continue
            # Column by column, with C-level checks: most chunks need no change at all.
            columns = list(zip(*part, strict=True))
            for i in json_at:
                column = columns[i]
                if not set(map(type, column)) <= _TEXT or "null" in column:
                    columns[i] = tuple(map(_json_text, column))
            yield list(zip(*columns, strict=True))


def stream_episodes(store, run_ids: str | Sequence[str], *,
                    chunk_size: int | None = None) -> Iterator[list[tuple]]:
    """Episodes with their item and final answer (see the module docstring), in chunks."""
    return stream(store, "episodes", run_ids, chunk_size=chunk_size)


def stream_messages(store, run_ids: str | Sequence[str], *,
                    chunk_size: int | None = None) -> Iterator[list[tuple]]:
    """Transcript messages, by episode then idx, in chunks."""
    return stream(store, "messages", run_ids, chunk_size=chunk_size)


def stream_decisions(store, run_ids: str | Sequence[str], *,
                     chunk_size: int | None = None) -> Iterator[list[tuple]]:
    """Every decision, by episode then idx, in chunks."""
    return stream(store, "decisions", run_ids, chunk_size=chunk_size)


def stream_calls(store, run_ids: str | Sequence[str], *,
                 chunk_size: int | None = None) -> Iterator[list[tuple]]:
    """Every model call attempt (model_calls as stored), by id, in chunks."""
    return stream(store, "calls", run_ids, chunk_size=chunk_size)


__all__ = ["CHUNK_ROWS", "KINDS", "TABLES", "Field", "fields", "stream", "stream_calls",
           "stream_decisions", "stream_episodes", "stream_messages"]
