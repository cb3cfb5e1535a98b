"""The SQLite (or any SQLAlchemy URL) store. Knows nothing of protocols: rows in, rows out."""

from __future__ import annotations

import os
from typing import Any, Iterable

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from .db import DEFAULT_DB, create_store_engine, resolve_url
from .migrations import MIGRATIONS, migrate, schema_version
from .tables import (
    CacheEntry,
    EpisodeRow,
    ItemRow,
    MessageRow,
    ModelCallRow,
    Run,
    VerdictRow,
    utcnow,
)
from .writer import JSONText, Writer

__all__ = ["Store", "Run", "ItemRow", "EpisodeRow", "MessageRow", "ModelCallRow", "VerdictRow", "CacheEntry",
           "Writer", "JSONText", "DEFAULT_DB", "resolve_url", "migrate", "schema_version", "MIGRATIONS", "utcnow"]


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

    def __init__(self, db: str | os.PathLike | None = None):
        self.url = resolve_url(db)
        self.engine = create_store_engine(self.url)

    def close(self) -> None:
        self.engine.dispose()

    # -- writes ---------------------------------------------------------------------------
    def _exec(self, stmt) -> Any:
        with self.engine.begin() as conn:
            return conn.execute(stmt)

    def save_run(self, run: Run) -> Run:
        for _ in range(2):  # twice: another process may create the same run between get and add
            with Session(self.engine) as s:
                existing = s.get(Run, run.id)
                if existing is None:
                    s.add(run)
                else:
                    existing.spec_toml, existing.spec_path = run.spec_toml, run.spec_path
                    existing.package_version, existing.updated_at = run.package_version, utcnow()
                try:
                    s.commit()
                    break
                except IntegrityError:
                    s.rollback()
                    run = Run(**run.model_dump())  # detached from the failed session
        return run

    def set_run_status(self, run_id: str, status: str) -> None:
        self._exec(update(Run).where(Run.id == run_id).values(status=status, updated_at=utcnow()))

    def save_items(self, rows: Iterable[dict]) -> None:
        rows = list(rows)
        if not rows:
            return
        for attempt in range(2):  # twice: another process may insert the same items meanwhile
            try:
                with self.engine.begin() as conn:
                    have = set(conn.execute(select(ItemRow.id).where(
                        ItemRow.id.in_([r["id"] for r in rows]))).scalars())
                    new = [r for r in rows if r["id"] not in have]
                    if new:
                        conn.execute(insert(ItemRow), new)
                return
            except IntegrityError:
                if attempt:
                    raise

    def episode_status(self, run_id: str) -> dict[str, tuple[int, str]]:
        """key -> (episode id, status) for every episode of a run."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(EpisodeRow.key, EpisodeRow.id, EpisodeRow.status)
                                .where(EpisodeRow.run_id == run_id))
            return {k: (i, s) for k, i, s in rows}

    def create_episodes(self, run_id: str, rows: list[dict]) -> dict[str, tuple[int, str]]:
        """Insert, in one transaction, the planned episodes not stored yet (status pending);
        another process inserting the same ones meanwhile is fine. Returns key -> (id, status)
        for every episode of the run."""
        if rows:
            with self.engine.begin() as conn:
                conn.execute(_insert_ignore(EpisodeRow.__table__, conn.dialect.name), rows)
        return self.episode_status(run_id)

    def claim_episodes(self, ids: list[int], planned_at: str, reset: set[int]) -> set[int]:
        """Mark episodes running, in one transaction, unless done or started by another
        process after `planned_at` (when this run read the episode states): two runs of one
        spec on one store share the work instead of doing it twice. Returns the ids won.
        Those in `reset` lose a previous attempt's transcript, verdict and calls, so an
        episode's rows are those of its last attempt."""
        ep = EpisodeRow.__table__
        with self.engine.begin() as conn:
            won = set(conn.execute(
                update(ep).where(ep.c.id.in_(ids), ep.c.status != "done",
                                 ep.c.started_at.is_(None) | (ep.c.started_at <= planned_at))
                .values(status="running", started_at=utcnow(), error=None, finished_at=None,
                        n_calls=0, tokens_in=0, tokens_out=0, tokens_cached=0, cost_usd=None,
                        cache_hits=0)
                .returning(ep.c.id)).scalars())
            if stale := sorted(won & reset):
                for table in (VerdictRow.__table__, MessageRow.__table__, ModelCallRow.__table__):
                    conn.execute(delete(table).where(table.c.episode_id.in_(stale)))
        return won

    def release_episodes(self, ids: list[int]) -> None:
        """Claimed but never started (Ctrl-C, budget): back to pending for the next run."""
        if ids:
            ep = EpisodeRow.__table__
            self._exec(update(ep).where(ep.c.id.in_(ids), ep.c.status == "running")
                       .values(status="pending", started_at=None))

    def writer(self) -> Writer:
        return Writer(self.engine)

    def add_message(self, values: dict) -> int:
        return self._exec(insert(MessageRow).values(**values)).inserted_primary_key[0]

    def cache_get(self, key: str) -> dict | None:
        with self.engine.connect() as conn:
            return conn.execute(select(CacheEntry.response).where(CacheEntry.key == key)).scalar()

    def cache_keys(self, models: list[str]) -> set[str]:
        with self.engine.connect() as conn:
            return set(conn.execute(select(CacheEntry.key).where(CacheEntry.model.in_(models))).scalars())

    def cache_put(self, values: dict) -> None:
        try:
            self._exec(insert(CacheEntry).values(**values))
        except IntegrityError:
            pass  # two episodes raced to fill one key; the first answer stays

    # -- reads ----------------------------------------------------------------------------
    def runs(self) -> list[dict]:
        counts = (select(EpisodeRow.run_id, EpisodeRow.status, func.count())
                  .group_by(EpisodeRow.run_id, EpisodeRow.status))
        with self.engine.connect() as conn:
            per: dict[str, dict[str, int]] = {}
            for run_id, status, n in conn.execute(counts):
                per.setdefault(run_id, {})[status] = n
            rows = conn.execute(select(Run.id, Run.name, Run.status, Run.created_at,
                                       Run.updated_at, Run.package_version)
                                .order_by(Run.created_at)).mappings().all()
            return [{**r, "episodes": per.get(r["id"], {})} for r in rows]

    def run(self, run_id: str) -> dict | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(Run).where(Run.id == run_id)).mappings().first()
            return dict(row) if row else None

    def find_run(self, ref: str) -> str | None:
        """A run id from its full id, a unique prefix, or its name (the latest such run)."""
        with self.engine.connect() as conn:
            ids = conn.execute(select(Run.id).where(Run.id.startswith(ref, autoescape=True))).scalars().all()
            if len(ids) == 1 or ref in ids:
                return ref if ref in ids else ids[0]
            by_name = conn.execute(select(Run.id).where(Run.name == ref)
                                   .order_by(Run.updated_at.desc())).scalars().first()
            return by_name

    def episode(self, episode_id: int) -> dict | None:
        with self.engine.connect() as conn:
            ep = conn.execute(select(EpisodeRow).where(EpisodeRow.id == episode_id)).mappings().first()
            if ep is None:
                return None
            item = conn.execute(select(ItemRow).where(ItemRow.id == ep["item_id"])).mappings().first()
            msgs = conn.execute(select(MessageRow).where(MessageRow.episode_id == episode_id)
                                .order_by(MessageRow.idx)).mappings().all()
            verdict = conn.execute(select(VerdictRow).where(VerdictRow.episode_id == episode_id)).mappings().first()
            return {"episode": dict(ep), "item": dict(item) if item else None,
                    "messages": [dict(m) for m in msgs], "verdict": dict(verdict) if verdict else None}

    def results(self, run_ids: list[str]) -> list[dict]:
        """One row per episode of the given runs, joined with its verdict (for analysis)."""
        stmt = (select(EpisodeRow.id, EpisodeRow.run_id, EpisodeRow.protocol, EpisodeRow.variant,
                       EpisodeRow.item_id, EpisodeRow.assignment, EpisodeRow.roles,
                       EpisodeRow.status, EpisodeRow.n_calls, EpisodeRow.tokens_in,
                       EpisodeRow.tokens_out, EpisodeRow.tokens_cached, EpisodeRow.cost_usd,
                       EpisodeRow.cache_hits, EpisodeRow.dispositions, EpisodeRow.misaligned,
                       EpisodeRow.duration_s, VerdictRow.parsed,
                       VerdictRow.chosen, VerdictRow.correct, VerdictRow.probabilities,
                       VerdictRow.flagged, VerdictRow.suspicion)
                .join(VerdictRow, VerdictRow.episode_id == EpisodeRow.id, isouter=True)
                .where(EpisodeRow.run_id.in_(run_ids)).order_by(EpisodeRow.id))
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(stmt).mappings()]

    def call(self, call_id: int) -> dict | None:
        """A model call with the public config of the model that made it."""
        with self.engine.connect() as conn:
            row = conn.execute(select(*ModelCallRow.__table__.columns, EpisodeRow.roles, EpisodeRow.models)
                               .join(EpisodeRow, EpisodeRow.id == ModelCallRow.episode_id, isouter=True)
                               .where(ModelCallRow.id == call_id)).mappings().first()
        if row is None:
            return None
        call = dict(row)
        alias = (call.pop("roles") or {}).get(call["role"])
        call["model_config"] = (call.pop("models") or {}).get(alias)
        return call

    def cache_entries(self, provider: str, model: str, before: str | None = None) -> list[dict]:
        stmt = select(CacheEntry.key, CacheEntry.request, CacheEntry.created_at).where(
            CacheEntry.provider == provider, CacheEntry.model == model)
        if before is not None:
            stmt = stmt.where(CacheEntry.created_at < before)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(stmt).mappings()]

    def run_spend(self, run_id: str) -> tuple[float, int]:
        """(dollars, tokens) already spent by a run's real calls (cache hits are free)."""
        stmt = (select(func.coalesce(func.sum(ModelCallRow.cost_usd), 0.0),
                       func.coalesce(func.sum(func.coalesce(ModelCallRow.tokens_in, 0)
                                              + func.coalesce(ModelCallRow.tokens_out, 0)), 0))
                .join(EpisodeRow, EpisodeRow.id == ModelCallRow.episode_id)
                .where(EpisodeRow.run_id == run_id, ModelCallRow.cache_hit.is_(False)))
        with self.engine.connect() as conn:
            usd, tokens = conn.execute(stmt).one()
            return float(usd), int(tokens)
