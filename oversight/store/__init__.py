"""The SQLite (or any SQLAlchemy URL) store. Knows nothing of protocols: rows in, rows out."""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable

from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError

from . import leases
from . import results as reads
from .db import DEFAULT_DB, _sqlite_file, create_store_engine, resolve_url, safe_url, target_of
from .migrations import MIGRATIONS, migrate, schema_version
from .tables import (
    decisions,
    document_key,
    episodes,
    items,
    messages,
    metadata,
    model_calls,
    response_cache,
    runs,
    utcnow,
)
from .writer import JSONText, Writer, storable_text

__all__ = ["Store", "metadata", "runs", "items", "episodes", "messages", "model_calls", "decisions",
           "response_cache", "Writer", "JSONText", "DEFAULT_DB", "resolve_url", "safe_url",
           "target_of", "migrate", "schema_version", "MIGRATIONS", "utcnow", "storable_text"]


def _insert_ignore(table, dialect: str):
    """INSERT that skips rows whose unique key exists (another process was first)."""
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    elif dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:
        return insert(table)
    return dialect_insert(table).on_conflict_do_nothing()


class Store:
    """Small, explicit write and read operations; each write is its own transaction."""

    def __init__(self, db: str | os.PathLike | None = None, *, readonly: bool = False):
        """Open (and migrate) a store; `readonly` opens it for reading only: nothing is created
        or written, and a schema older or newer than the code's is refused (StoreError)."""
        self.readonly = readonly
        self.url = resolve_url(db, create_dirs=not readonly)
        self.engine = create_store_engine(db, readonly=readonly)

    def close(self) -> None:
        self.engine.dispose()

    def reopen(self) -> Store:
        """A new read-only Store on the same database, with connections of its own (for a
        forked child process, which must not use its parent's)."""
        return Store(self.url, readonly=True)

    @property
    def reopenable(self) -> bool:
        """Whether another connection, in another process, can open this store by its `url`
        (any store but an in-memory SQLite one)."""
        return not self.url.startswith("sqlite") or _sqlite_file(self.url) is not None

    # -- writes ---------------------------------------------------------------------------
    def _exec(self, stmt) -> Any:
        with self.engine.begin() as conn:
            return conn.execute(stmt)

    def save_run(self, row: dict) -> None:
        """Create the run, or refresh what may change between resumes of the same spec."""
        # Insert-or-ignore, then update if it was there: another process may create the same
        # run at the same moment, and either order ends with one row.
        try:
            with self.engine.begin() as conn:
                inserted = conn.execute(_insert_ignore(runs, conn.dialect.name), [row]).rowcount
        except IntegrityError:  # a dialect without insert-or-ignore
            inserted = 0
        if not inserted:
            self._exec(update(runs).where(runs.c.id == row["id"]).values(
                spec_toml=row["spec_toml"], spec_path=row.get("spec_path"),
                package_version=row["package_version"], updated_at=utcnow()))

    def set_run_status(self, run_id: str, status: str) -> None:
        self._exec(update(runs).where(runs.c.id == run_id).values(status=status, updated_at=utcnow()))

    def settle_run(self, run_id: str, owner: str,
                   decide: Callable[[dict[str, int], int], str]) -> tuple[str, dict[str, int], int]:
        """Set a run's status to decide(episodes by status, episodes other live workers hold),
        in one transaction, so two workers finishing at once cannot leave a stale status.
        Returns (status, episodes by status, episodes held by others)."""
        with self.engine.begin() as conn:
            # Write first: on SQLite this takes the write lock before anything is read.
            conn.execute(update(runs).where(runs.c.id == run_id).values(updated_at=utcnow()))
            states = dict(conn.execute(select(episodes.c.status, func.count())
                                       .where(episodes.c.run_id == run_id)
                                       .group_by(episodes.c.status)).all())
            others = sum(n for who, n in leases.holders(conn, run_id).items() if who != owner)
            status = decide(states, others)
            conn.execute(update(runs).where(runs.c.id == run_id).values(status=status))
        return status, states, others

    def save_items(self, rows: Iterable[dict]) -> None:
        """Store items not stored yet, in one statement (insert-or-ignore: another process may
        store the same ones meanwhile, and a read-then-write transaction could not wait for it)."""
        rows = [{**r, "document": document_key(r)} for r in rows]
        if rows:
            with self.engine.begin() as conn:
                conn.execute(_insert_ignore(items, conn.dialect.name), rows)

    def episode_status(self, run_id: str) -> dict[str, tuple[int, str]]:
        """key -> (episode id, status) for every episode of a run."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(episodes.c.key, episodes.c.id, episodes.c.status)
                                .where(episodes.c.run_id == run_id))
            return {k: (i, s) for k, i, s in rows}

    def create_episodes(self, run_id: str, rows: list[dict]) -> dict[str, tuple[int, str]]:
        """Insert, in one transaction, the planned episodes not stored yet (status pending);
        another process inserting the same ones meanwhile is fine. Returns key -> (id, status)
        for every episode of the run."""
        self.add_episodes(rows)
        return self.episode_status(run_id)

    def add_episodes(self, rows: list[dict]) -> None:
        """`create_episodes` without reading the run's episodes back (a page of a large run)."""
        if rows:
            with self.engine.begin() as conn:
                conn.execute(_insert_ignore(episodes, conn.dialect.name), rows)

    def episode_ids(self, run_id: str) -> dict[str, int]:
        """key -> episode id for every episode of a run."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(episodes.c.key, episodes.c.id).where(episodes.c.run_id == run_id))
            return {k: i for k, i in rows}

    # -- leases (store/leases.py) --------------------------------------------------------
    def claim_episodes(self, ids: list[int], owner: str, ttl: float,
                       retry_failed: bool = False) -> set[int]:
        """Lease episodes to `owner`, in one transaction; returns the ids won (see leases.claim)."""
        with self.engine.begin() as conn:
            return leases.claim(conn, ids, owner, ttl, retry_failed)

    def renew_leases(self, ids: list[int], owner: str, ttl: float) -> set[int]:
        with self.engine.begin() as conn:
            return leases.renew(conn, ids, owner, ttl)

    def release_episodes(self, ids: list[int], owner: str) -> None:
        """Claimed but never started (Ctrl-C, budget): back to pending for the next run."""
        if ids:
            with self.engine.begin() as conn:
                leases.release(conn, ids, owner)

    def lease_holders(self, run_id: str) -> dict[str, int]:
        with self.engine.connect() as conn:
            return leases.holders(conn, run_id)

    def open_episodes(self, run_id: str) -> dict[int, tuple[str | None, bool]]:
        """id -> (lease owner, lease live?) of the run's unfinished episodes (leases.open_episodes)."""
        with self.engine.connect() as conn:
            return leases.open_episodes(conn, run_id)

    def expire_leases(self, owners: list[str]) -> int:
        with self.engine.begin() as conn:
            return leases.expire(conn, owners)

    def writer(self, owner: str | None = None, lease_seconds: float | None = None) -> Writer:
        return Writer(self.engine, owner=owner, lease_seconds=lease_seconds)

    def batch_journal(self, run_id: str | None = None):
        """The record of provider batch jobs (store/batches.py), for models with batch = true."""
        from .batches import BatchJournal

        return BatchJournal(self.engine, run_id)

    def add_message(self, values: dict) -> int:
        return self._exec(insert(messages).values(**values)).inserted_primary_key[0]

    def cache_get(self, key: str) -> dict | None:
        with self.engine.connect() as conn:
            return conn.execute(select(response_cache.c.response).where(response_cache.c.key == key)).scalar()

    def cache_keys(self, models: list[str]) -> set[str]:
        with self.engine.connect() as conn:
            return set(conn.execute(select(response_cache.c.key).where(response_cache.c.model.in_(models))).scalars())

    def cache_put(self, values: dict) -> None:
        try:
            self._exec(insert(response_cache).values(**values))
        except IntegrityError:
            pass  # two episodes raced to fill one key; the first answer stays

    # -- reads ----------------------------------------------------------------------------
    def runs(self) -> list[dict]:
        counts = (select(episodes.c.run_id, episodes.c.status, func.count())
                  .group_by(episodes.c.run_id, episodes.c.status))
        with self.engine.connect() as conn:
            per: dict[str, dict[str, int]] = {}
            for run_id, status, n in conn.execute(counts):
                per.setdefault(run_id, {})[status] = n
            rows = conn.execute(select(runs.c.id, runs.c.name, runs.c.status, runs.c.created_at,
                                       runs.c.updated_at, runs.c.package_version)
                                .order_by(runs.c.created_at)).mappings().all()
            return [{**r, "episodes": per.get(r["id"], {})} for r in rows]

    def episode_count(self, run_ids: list[str]) -> int:
        """How many episodes the runs have (any status)."""
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(episodes)
                                .where(episodes.c.run_id.in_(list(run_ids)))).scalar_one()

    def run(self, run_id: str) -> dict | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(runs).where(runs.c.id == run_id)).mappings().first()
            return dict(row) if row else None

    def same_spec(self, name: str, spec_hash: str) -> list[dict]:
        """Runs of the same spec (name and spec hash), oldest first, with their code identity:
        a different run id then means the code or templates changed."""
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(
                select(runs.c.id, runs.c.code, runs.c.created_at)
                .where(runs.c.name == name, runs.c.spec_hash == spec_hash)
                .order_by(runs.c.created_at)).mappings()]

    def find_run(self, ref: str) -> str | None:
        """A run id from its full id, a unique prefix, or its name (the latest such run)."""
        with self.engine.connect() as conn:
            ids = conn.execute(select(runs.c.id).where(runs.c.id.startswith(ref, autoescape=True))).scalars().all()
            if len(ids) == 1 or ref in ids:
                return ref if ref in ids else ids[0]
            by_name = conn.execute(select(runs.c.id).where(runs.c.name == ref)
                                   .order_by(runs.c.updated_at.desc())).scalars().first()
            return by_name

    def episode(self, episode_id: int) -> dict | None:
        with self.engine.connect() as conn:
            ep = conn.execute(select(episodes).where(episodes.c.id == episode_id)).mappings().first()
            if ep is None:
                return None
            item = conn.execute(select(items).where(items.c.id == ep["item_id"])).mappings().first()
            msgs = conn.execute(select(messages).where(messages.c.episode_id == episode_id)
                                .order_by(messages.c.idx)).mappings().all()
            made = conn.execute(select(decisions).where(decisions.c.episode_id == episode_id)
                                .order_by(decisions.c.idx)).mappings().all()
            return {"episode": dict(ep), "item": dict(item) if item else None,
                    "messages": [dict(m) for m in msgs], "decisions": [dict(d) for d in made]}

    RESULT_KEYS = reads.RESULT_KEYS
    DETECTION_KEYS = reads.DETECTION_KEYS

    def results(self, run_ids: list[str]) -> list[dict]:
        """One row per episode of the given runs, with its item's kind, gold (`target`) and
        document (the item's id when it has none), and the deciding role's last answer
        (parsed, chosen, correct, probabilities; None without one): for analysis. `role_models`
        maps each role to the name of the model that played it. Keys: `RESULT_KEYS`."""
        cols = self.result_columns(run_ids)
        keys = list(cols)
        return [dict(zip(keys, row, strict=True)) for row in zip(*cols.values(), strict=True)]

    def result_columns(self, run_ids: list[str],
                       keys: Iterable[str] | None = None) -> dict[str, list]:
        """`results()` as columns, key -> one value per episode (in episode id order), only the
        given `keys` (of `RESULT_KEYS`; all by default): the same values without a dict per
        episode, and without reading what is not asked for (the report's read)."""
        with self.engine.connect() as conn:
            return reads.result_columns(conn, list(run_ids), keys)

    def decisions(self, run_ids: list[str], kinds: tuple[str, ...] | None = None) -> list[dict]:
        """Every decision of the given runs' episodes (only these `kinds`: answer, flag,
        score, label), with the episode's truths and item."""
        cols = self.decision_columns(run_ids, kinds)
        keys = list(cols)
        return [dict(zip(keys, row, strict=True)) for row in zip(*cols.values(), strict=True)]

    def decision_columns(self, run_ids: list[str], kinds: tuple[str, ...] | None = None,
                         keys: Iterable[str] | None = None) -> dict[str, list]:
        """`decisions()` as columns, key -> one value per decision (by episode, then idx),
        only the given `keys` (all by default; `DETECTION_KEYS` is what detection reads)."""
        with self.engine.connect() as conn:
            return reads.decision_columns(conn, list(run_ids), kinds, keys)

    def deciding_role(self, run_id: str) -> str | None:
        """The role that decides most of a run's finished episodes (None without any)."""
        e = episodes.c
        stmt = (select(e.decides).where(e.run_id == run_id, e.status == "done",
                                        e.decides.is_not(None))
                .group_by(e.decides).order_by(func.count().desc()).limit(1))
        with self.engine.connect() as conn:
            return conn.execute(stmt).scalar()

    def judged(self, run_id: str, role: str, chunk: int = 500) -> Iterable[dict]:
        """Finished episodes of a run in which `role` made a decision, one at a time, each as
        `episode()` gives it (with the item, messages and decisions): what a re-judging reads."""
        e, d = episodes.c, decisions.c
        stmt = (select(e.id).where(e.run_id == run_id, e.status == "done",
                                   select(d.id).where(d.episode_id == e.id, d.role == role)
                                   .exists()).order_by(e.id))
        with self.engine.connect() as conn:
            ids = list(conn.execute(stmt).scalars())
        for start in range(0, len(ids), chunk):
            for ep_id in ids[start:start + chunk]:
                yield self.episode(ep_id)

    def call(self, call_id: int) -> dict | None:
        """A model call with the public config of the model that made it."""
        with self.engine.connect() as conn:
            row = conn.execute(select(*model_calls.columns, episodes.c.roles, episodes.c.models)
                               .join(episodes, episodes.c.id == model_calls.c.episode_id, isouter=True)
                               .where(model_calls.c.id == call_id)).mappings().first()
        if row is None:
            return None
        call = dict(row)
        alias = (call.pop("roles") or {}).get(call["role"])
        call["model_config"] = (call.pop("models") or {}).get(alias)
        return call

    def cache_entries(self, provider: str, model: str, before: str | None = None) -> list[dict]:
        stmt = select(response_cache.c.key, response_cache.c.request, response_cache.c.created_at).where(
            response_cache.c.provider == provider, response_cache.c.model == model)
        if before is not None:
            stmt = stmt.where(response_cache.c.created_at < before)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(stmt).mappings()]

    def run_spend(self, run_id: str) -> tuple[float, int]:
        """(dollars, tokens) a run's real calls have cost (cache hits are free), including
        calls whose rows were replaced when their episode was redone."""
        mc = model_calls.c
        stmt = (select(func.coalesce(func.sum(mc.cost_usd), 0.0), leases.call_tokens(mc))
                .join(episodes, episodes.c.id == mc.episode_id)
                .where(episodes.c.run_id == run_id, mc.cache_hit.is_(False)))
        with self.engine.connect() as conn:
            usd, tokens = conn.execute(stmt).one()
            replaced = conn.execute(select(runs.c.replaced_usd, runs.c.replaced_tokens)
                                    .where(runs.c.id == run_id)).one_or_none() or (0.0, 0)
            return float(usd) + float(replaced[0]), int(tokens) + int(replaced[1])

