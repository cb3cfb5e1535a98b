"""Copy a run from one store into another: typically a laptop's SQLite into a shared
PostgreSQL (`oversight push RUN --to URL`), but any store into any other.

What is copied: the run's row, the items its episodes use (those the target lacks: an item
the target has is left as it is, being shared by runs), the episodes, and their messages,
decisions and model calls; with them, the provider batches the run sent and their requests
(those the target lacks), so that a batch still in flight is polled there, not paid for
again. Not the response cache. Episode ids are the target's own: the
children are inserted with the new ids, and `source_episode_id` (a re-judging's link to the
episode it judged) points to the same episode in the target when that episode is in the
pushed run, or in a run pushed (or run) there before (same run id and key); otherwise it is
NULL, and the result says so.

All or nothing, and idempotent: one transaction on the target (already migrated by opening
it), the source read in one snapshot. A run the target has already is compared episode by
episode (matched by key; status, times, calls and tokens): the episodes it lacks are added
(e.g. after `--limit` grew the run; the run's status and replaced spend then follow the
source's), nothing else is written, so a second push adds nothing.
A target episode that differs from the source's, or that the source lacks, is a conflict
(PushConflict): nothing is written. Other runs are never touched.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import (
    JSON,
    Connection,
    String,
    Table,
    Text,
    bindparam,
    cast,
    select,
    text,
    type_coerce,
    update,
)
from sqlalchemy.exc import SQLAlchemyError

from ..errors import StoreError
from .db import safe_url
from .tables import (
    batch_requests,
    decisions,
    episodes,
    items,
    messages,
    model_calls,
    provider_batches,
    runs,
)
from .writer import JSONText, _Insert

CHUNK = 500  # ids in one SQL IN (...)
CHILDREN: tuple[Table, ...] = (messages, decisions, model_calls)
# What must be equal for a target's episode to be the source's (matched by run id and key).
FINGERPRINT = ("item_id", "status", "started_at", "finished_at", "n_calls", "tokens_in",
               "tokens_out")
PUSH_LOCK = int.from_bytes(b"ovpu", "big")  # PostgreSQL advisory lock class, per run id


class PushConflict(StoreError):
    """The target has the run with other episodes: nothing was pushed."""


@dataclass
class PushResult:
    run_id: str
    target: str  # the target store, fit to print
    created: bool = False  # the run was new to the target
    episodes: int = 0  # episodes added
    items: int = 0  # items the target did not have
    rows: dict[str, int] = field(default_factory=dict)  # table -> rows added
    unfinished: dict[str, int] = field(default_factory=dict)  # added episodes not done, by status
    unlinked: dict[str, int] = field(default_factory=dict)  # run -> links left NULL
    existing: int = 0  # episodes the target already had, equal to the source's


def push_run(source, target, run_id: str) -> PushResult:
    """Copy run `run_id` from the `source` Store into the `target` Store (see the module)."""
    result = PushResult(run_id, safe_url(target.url))
    try:
        with source.engine.connect() as src:
            _snapshot(src)
            run_row = _rows(src, runs, runs.c.id == run_id)
            if not run_row:
                raise StoreError(safe_url(source.url), f"no run {run_id!r} in this store")
            src_eps = _rows(src, episodes, episodes.c.run_id == run_id, order=episodes.c.id)
            with target.engine.begin() as dst:
                _lock(dst, run_id)
                _copy(src, dst, run_row[0], src_eps, result)
    except StoreError:
        raise
    except SQLAlchemyError as exc:
        orig = getattr(exc, "orig", None) or exc
        first = (str(orig).splitlines() or [""])[0][:300]
        raise StoreError(result.target, f"cannot push run {run_id} ({type(orig).__name__}: "
                         f"{first}); nothing was pushed") from None
    return result


def _copy(src: Connection, dst: Connection, run_row: dict, src_eps: list[dict],
          result: PushResult) -> None:
    run_id = run_row["id"]
    key_to_id: dict[str, int] = {}  # key -> target episode id
    if dst.execute(select(runs.c.id).where(runs.c.id == run_id)).first() is not None:
        have = {r["key"]: r for r in dst.execute(
            select(episodes.c.id, episodes.c.key, *(episodes.c[c] for c in FINGERPRINT))
            .where(episodes.c.run_id == run_id)).mappings()}
        _check_same(result.target, run_id, have, {e["key"]: e for e in src_eps})
        key_to_id = {k: r["id"] for k, r in have.items()}
        result.existing = len(have)
    else:
        _insert(dst, runs, [run_row])
        result.created = True
    new = [e for e in src_eps if e["key"] not in key_to_id]
    if not new:
        return
    if not result.created:  # the run grew in the source: its row follows
        dst.execute(update(runs).where(runs.c.id == run_id).values(
            {c: run_row[c] for c in ("status", "updated_at", "replaced_usd", "replaced_tokens")}))

    needed = sorted({e["item_id"] for e in new})
    present = {i for part in _chunks(needed) for i in dst.execute(
        select(items.c.id).where(items.c.id.in_(part))).scalars()}
    for part in _chunks([i for i in needed if i not in present]):
        rows = _rows(src, items, items.c.id.in_(part), order=items.c.id)
        _insert(dst, items, rows, ignore=True)  # a worker may store the same item meanwhile
        result.items += len(rows)

    _insert(dst, episodes, [{**e, "source_episode_id": None} for e in new])
    for part in _chunks([e["key"] for e in new]):
        key_to_id.update(dst.execute(select(episodes.c.key, episodes.c.id).where(
            episodes.c.run_id == run_id, episodes.c.key.in_(part))).all())
    new_id = {e["id"]: key_to_id[e["key"]] for e in src_eps}  # source id -> target id
    result.episodes = len(new)
    for e in new:
        if e["status"] != "done":
            result.unfinished[e["status"]] = result.unfinished.get(e["status"], 0) + 1
    _link(src, dst, new, new_id, result)

    for table in CHILDREN:
        copied = 0
        for part in _chunks([e["id"] for e in new], 100):  # rows with requests can be long
            rows = _rows(src, table, table.c.episode_id.in_(part), order=table.c.id)
            for row in rows:
                row["episode_id"] = new_id[row["episode_id"]]
            _insert(dst, table, rows)
            copied += len(rows)
        result.rows[table.name] = copied
    _copy_batches(src, dst, run_id, result)


def _copy_batches(src: Connection, dst: Connection, run_id: str, result: PushResult) -> None:
    """The provider batches the run sent (store/batches.py) that the target lacks (known by
    their token), with their requests: a worker on the target then polls a batch still in
    flight, and takes the answers already in, instead of paying for its requests again."""
    sent = _rows(src, provider_batches, provider_batches.c.run_id == run_id,
                 order=provider_batches.c.id)
    if not sent:
        return
    tokens = [b["token"] for b in sent]
    there = {t for part in _chunks(tokens) for t in dst.execute(
        select(provider_batches.c.token).where(provider_batches.c.token.in_(part))).scalars()}
    new = [b for b in sent if b["token"] not in there]
    if not new:
        return
    _insert(dst, provider_batches, new)
    new_id: dict[int, int] = {}  # source batch id -> target batch id
    by_token = {b["token"]: b["id"] for b in new}
    for part in _chunks(list(by_token)):
        for token, target_id in dst.execute(select(provider_batches.c.token, provider_batches.c.id)
                                            .where(provider_batches.c.token.in_(part))).all():
            new_id[by_token[token]] = target_id
    copied = 0
    for part in _chunks(list(new_id), 100):
        rows = _rows(src, batch_requests, batch_requests.c.batch_id.in_(part),
                     order=batch_requests.c.id)
        for row in rows:
            row["batch_id"] = new_id[row["batch_id"]]
        _insert(dst, batch_requests, rows)
        copied += len(rows)
    result.rows[provider_batches.name] = len(new)
    result.rows[batch_requests.name] = copied


def _check_same(target: str, run_id: str, have: dict[str, dict], src: dict[str, dict]) -> None:
    """Raise PushConflict unless every target episode of the run is the source's, unchanged."""
    extra = [k for k in have if k not in src]
    differ = [k for k in have if k in src
              and any(have[k][c] != src[k][c] for c in FINGERPRINT)]
    if not extra and not differ:
        return
    what = []
    if differ:
        k = differ[0]
        col = next(c for c in FINGERPRINT if have[k][c] != src[k][c])
        what.append(f"{len(differ)} episode(s) differ from the source's (first: {k}: {col} is "
                    f"{have[k][col]!r} there, {src[k][col]!r} in the source)")
    if extra:
        what.append(f"{len(extra)} episode(s) are not in the source (first: {extra[0]})")
    raise PushConflict(target, f"run {run_id} is already there with other episodes: "
                       f"{'; '.join(what)}. Nothing was pushed: the two copies were run "
                       "separately (see `oversight report` on each); other runs are untouched")


def _link(src: Connection, dst: Connection, new: list[dict], new_id: dict[int, int],
          result: PushResult) -> None:
    """Point the added episodes' source_episode_id at the same episode in the target."""
    links = {e["id"]: e["source_episode_id"] for e in new if e["source_episode_id"] is not None}
    if not links:
        return
    mapped = {i: new_id[s] for i, s in links.items() if s in new_id}
    outside = sorted({s for s in links.values() if s not in new_id})
    where_from: dict[int, tuple[str, str]] = {}  # source episode id -> (run id, key)
    for part in _chunks(outside):
        where_from.update((i, (r, k)) for i, r, k in src.execute(
            select(episodes.c.id, episodes.c.run_id, episodes.c.key)
            .where(episodes.c.id.in_(part))).all())
    found: dict[tuple[str, str], int] = {}
    by_run: dict[str, list[str]] = {}
    for run, key in where_from.values():
        by_run.setdefault(run, []).append(key)
    for run, keys in by_run.items():
        for part in _chunks(sorted(set(keys))):
            found.update(((run, k), i) for k, i in dst.execute(
                select(episodes.c.key, episodes.c.id)
                .where(episodes.c.run_id == run, episodes.c.key.in_(part))).all())
    for i, s in links.items():
        if i in mapped:
            continue
        if (there := found.get(where_from.get(s, ("", "")))) is not None:
            mapped[i] = there
        else:
            run = where_from.get(s, ("(not in the source either)", ""))[0]
            result.unlinked[run] = result.unlinked.get(run, 0) + 1
    if mapped:
        dst.execute(update(episodes).where(episodes.c.id == bindparam("_id"))
                    .values(source_episode_id=bindparam("_source")),
                    [{"_id": new_id[i], "_source": s} for i, s in mapped.items()])


# -- reading and writing rows as they are stored ----------------------------------------

def _snapshot(conn: Connection) -> None:
    """Read the source in one snapshot: a run still being written stays consistent."""
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql("BEGIN")  # a read transaction: WAL keeps its snapshot
    elif conn.dialect.name == "postgresql":
        conn.execution_options(isolation_level="REPEATABLE READ")


def _lock(conn: Connection, run_id: str) -> None:
    """One push of a run at a time into a store, and no reader-then-writer race on it."""
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")  # the write lock, before anything is read
    elif conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(CAST(:cls AS integer), hashtext(:run))"),
                     {"cls": PUSH_LOCK, "run": run_id})


def _rows(conn: Connection, table: Table, where, order=None) -> list[dict]:
    """Rows as stored: JSON columns as their JSON text (JSONText), copied without decoding, so
    SQL NULL stays NULL and the text 'null' stays 'null'."""
    json_cols = [c.name for c in table.columns if isinstance(c.type, JSON)]
    pg = conn.dialect.name == "postgresql"
    cols = [(cast(c, Text) if pg else type_coerce(c, String)).label(c.name)
            if c.name in json_cols else c for c in table.columns]
    stmt = select(*cols).where(where)
    out = [dict(r) for r in conn.execute(stmt if order is None else stmt.order_by(order))
           .mappings()]
    for row in out:
        for name in json_cols:
            if row[name] is not None:
                row[name] = JSONText(row[name])
    return out


def _insert(conn: Connection, table: Table, rows: list[dict], ignore: bool = False) -> None:
    """Insert rows as the writer does (JSON text as is; text the target refuses, such as NUL
    on PostgreSQL, escaped); an autoincrement id is left to the target."""
    if rows:
        ins = _Insert(table, conn.engine, ignore=ignore)
        conn.exec_driver_sql(ins.sql, ins.params(rows))


def _chunks(values: list, size: int = CHUNK):
    for start in range(0, len(values), size):
        yield values[start:start + size]
