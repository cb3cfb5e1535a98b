"""Episode leases: which worker runs an episode, until when, by the database's clock.

A worker claims episodes by writing its owner id and an expiry (now + ttl, "now" being the
database server's clock, never a worker's) and renews the expiry while it runs them. A live
lease is never taken; an expired one (a dead worker) is reclaimed, and the partial rows of
the attempt it held are replaced. Finishing an episode clears its lease.
"""

from __future__ import annotations

from sqlalchemy import Connection, Float, delete, func, select, update
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import FunctionElement

from .tables import decisions, episodes, messages, model_calls, runs, utcnow


class db_epoch(FunctionElement):
    """The database server's clock, in seconds since the epoch."""

    type = Float()
    inherit_cache = True


@compiles(db_epoch, "sqlite")
def _sqlite_epoch(element, compiler, **kw) -> str:
    return "((julianday('now') - 2440587.5) * 86400.0)"


@compiles(db_epoch, "postgresql")
def _postgres_epoch(element, compiler, **kw) -> str:
    return "extract(epoch from clock_timestamp())"


@compiles(db_epoch)
def _other_epoch(element, compiler, **kw) -> str:
    raise NotImplementedError("leases need SQLite or PostgreSQL")


def _free(ep, owner: str):
    """Nobody holds it, or the holder's lease has run out."""
    return ep.lease_owner.is_(None) | ((ep.lease_owner != owner) & (ep.lease_expires < db_epoch()))


def claim(conn: Connection, ids: list[int], owner: str, ttl: float, retry_failed: bool) -> set[int]:
    """Lease these episodes to `owner` unless done, failed (without retry_failed) or held by a
    live lease (on PostgreSQL, also unless another transaction has the row locked right now,
    e.g. another worker claiming it); returns the ids won. A won episode loses any rows of an
    earlier attempt (its spend moves to the run's replaced_*), so its rows are those of its
    last attempt."""
    if not ids:
        return set()
    ep = episodes.c
    runnable = ep.status.notin_(("done", "failed")) if not retry_failed else ep.status != "done"
    claimable = (ep.id.in_(ids), runnable, _free(ep, owner))
    if conn.dialect.name == "postgresql":
        # Lock the claimable rows first, skipping any another transaction holds (a worker
        # claiming, renewing or finishing them), then update only those: a claim never waits
        # for another, so two claims cannot deadlock (two plain UPDATEs locking overlapping
        # rows in different orders could). FOR NO KEY UPDATE, the lock the update needs,
        # ignores the key-share locks that inserting another worker's rows takes on their
        # episodes.
        locked = list(conn.execute(select(ep.id).where(*claimable).order_by(ep.id)
                                   .with_for_update(skip_locked=True, key_share=True)).scalars())
        if not locked:
            return set()
        claimable = (ep.id.in_(locked),)
    won = set(conn.execute(
        update(episodes).where(*claimable)
        .values(status="running", lease_owner=owner, lease_expires=db_epoch() + ttl,
                started_at=utcnow(), error=None, finished_at=None, n_calls=0, tokens_in=0,
                tokens_out=0, tokens_cached=0, cost_usd=None, cache_hits=0)
        .returning(ep.id)).scalars())
    if won:
        stale = sorted(won)
        _carry_spend(conn, stale)
        for table in (decisions, messages, model_calls):
            conn.execute(delete(table).where(table.c.episode_id.in_(stale)))
    return won


def renew(conn: Connection, ids: list[int], owner: str, ttl: float) -> set[int]:
    """Push the expiry of the leases `owner` still holds; returns those ids (the rest are lost)."""
    if not ids:
        return set()
    ep = episodes.c
    return set(conn.execute(update(episodes).where(ep.id.in_(ids), ep.lease_owner == owner)
                            .values(lease_expires=db_epoch() + ttl).returning(ep.id)).scalars())


def release(conn: Connection, ids: list[int], owner: str) -> None:
    """Claimed but never started: back to pending, unleased."""
    if ids:
        ep = episodes.c
        conn.execute(update(episodes).where(ep.id.in_(ids), ep.lease_owner == owner,
                                            ep.status == "running")
                     .values(status="pending", started_at=None, lease_owner=None, lease_expires=None))


def holders(conn: Connection, run_id: str) -> dict[str, int]:
    """owner -> episodes of the run it holds a live lease on."""
    ep = episodes.c
    rows = conn.execute(select(ep.lease_owner, func.count()).where(
        ep.run_id == run_id, ep.lease_owner.is_not(None), ep.lease_expires >= db_epoch())
        .group_by(ep.lease_owner))
    return {owner: n for owner, n in rows}


# Episode states that are not an end: someone may still run them. (Failed is one only for a
# worker started with retry_failed, and only for what failed before it started.)
OPEN = ("pending", "running", "interrupted", "stopped")


def open_episodes(conn: Connection, run_id: str) -> dict[int, tuple[str | None, bool]]:
    """The run's episodes not finished yet (OPEN), id -> (lease owner, whether the lease is
    live by the database's clock): what a worker whose own share is done waits on. One range
    of the (run_id, status) index; finished episodes are not read."""
    ep = episodes.c
    rows = conn.execute(select(ep.id, ep.lease_owner, ep.lease_expires >= db_epoch())
                        .where(ep.run_id == run_id, ep.status.in_(OPEN)))
    return {ep_id: (owner, owner is not None and bool(live)) for ep_id, owner, live in rows}


def expire(conn: Connection, owners: list[str]) -> int:
    """End the leases of workers known to be dead (e.g. a process gone from this host)."""
    if not owners:
        return 0
    ep = episodes.c
    return conn.execute(update(episodes).where(ep.lease_owner.in_(owners), ep.status == "running")
                        .values(lease_expires=0.0)).rowcount


def _carry_spend(conn: Connection, episode_ids: list[int]) -> None:
    """Add what these episodes' calls cost to their run's replaced_* before the rows go."""
    mc = model_calls.c
    spent = conn.execute(
        select(episodes.c.run_id, func.coalesce(func.sum(mc.cost_usd), 0.0), call_tokens(mc))
        .join(episodes, episodes.c.id == mc.episode_id)
        .where(mc.episode_id.in_(episode_ids), mc.cache_hit.is_(False))
        .group_by(episodes.c.run_id))
    for run_id, usd, tokens in spent:  # (a BIGINT's sum is a NUMERIC on PostgreSQL: a Decimal)
        conn.execute(update(runs).where(runs.c.id == run_id).values(
            replaced_usd=runs.c.replaced_usd + float(usd),
            replaced_tokens=runs.c.replaced_tokens + int(tokens)))


def call_tokens(mc):
    """Total input + output tokens of the selected model_calls rows (0 when none)."""
    return func.coalesce(func.sum(func.coalesce(mc.tokens_in, 0) + func.coalesce(mc.tokens_out, 0)), 0)

