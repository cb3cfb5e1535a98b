"""The durable record of provider batch jobs (tables provider_batches and batch_requests, m008).

models/batching writes here, in a worker thread, before and after every step that talks to a
provider: the batch's rows are committed before it is sent, the provider's batch id right
after, the results when they arrive. A process that dies and restarts reads them back
(`live`, `lookup`) to resume polling instead of sending anything again. Each method is its own
transaction. Only ids, statuses and responses are written: never a key or a header.
"""

from __future__ import annotations

import secrets

from sqlalchemy import Engine, insert, select, update

from .tables import batch_requests, provider_batches, utcnow

# Batch states in which the provider may still answer (or may have the batch, unknown yet).
LIVE = ("stored", "submitted")


class BatchJournal:
    """Batch rows of one store, on behalf of one run (run_id may be None: a bare model)."""

    def __init__(self, engine: Engine, run_id: str | None = None):
        self.engine, self.run_id = engine, run_id

    def store_batch(self, provider: str, model: str, base_url: str | None, owner: str,
                    requests: list[tuple[str, str]]) -> tuple[int, str]:
        """Commit a new batch (status stored) and its requests, (custom id, cache key) each,
        before anything is sent; returns (local id, token)."""
        token = secrets.token_hex(12)
        with self.engine.begin() as conn:
            local_id = conn.execute(insert(provider_batches).values(
                run_id=self.run_id, provider=provider, model=model, base_url=base_url,
                token=token, owner=owner, status="stored", n_requests=len(requests),
                created_at=utcnow())).inserted_primary_key[0]
            conn.execute(insert(batch_requests), [
                {"batch_id": local_id, "custom_id": cid, "cache_key": key, "status": "queued"}
                for cid, key in requests])
        return local_id, token

    def submitted(self, local_id: int, provider_batch_id: str, input_file_id: str | None,
                  provider_status: str | None = None) -> None:
        """The provider accepted the batch: its id, right after it answered."""
        with self.engine.begin() as conn:
            conn.execute(update(provider_batches).where(provider_batches.c.id == local_id).values(
                provider_batch_id=provider_batch_id, input_file_id=input_file_id,
                status="submitted", provider_status=provider_status, submitted_at=utcnow()))
            conn.execute(update(batch_requests).where(batch_requests.c.batch_id == local_id,
                                                      batch_requests.c.status == "queued")
                         .values(status="submitted"))

    def provider_status(self, local_id: int, status: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(provider_batches).where(provider_batches.c.id == local_id)
                         .values(provider_status=status))

    def abandon(self, local_id: int, status: str, error: str) -> None:
        """The batch never reached the provider (`unsubmitted`) or could not be sent or read
        (`failed`): it and its unanswered requests end with that status."""
        now = utcnow()
        with self.engine.begin() as conn:
            conn.execute(update(provider_batches).where(provider_batches.c.id == local_id)
                         .values(status=status, error=error[:1000], finished_at=now))
            conn.execute(update(batch_requests).where(
                batch_requests.c.batch_id == local_id,
                batch_requests.c.status.in_(("queued", "submitted")))
                .values(status=status, error=error[:1000], finished_at=now))

    def finish(self, local_id: int, status: str, provider_status: str | None,
               results: dict[str, dict]) -> None:
        """The batch ended (ended | expired | cancelled): every request's outcome, custom id
        -> {"status", "result", "error", "error_kind"}, in one transaction."""
        now = utcnow()
        with self.engine.begin() as conn:
            conn.execute(update(provider_batches).where(provider_batches.c.id == local_id)
                         .values(status=status, provider_status=provider_status, finished_at=now))
            for custom_id, outcome in results.items():
                conn.execute(update(batch_requests).where(
                    batch_requests.c.batch_id == local_id,
                    batch_requests.c.custom_id == custom_id).values(
                    status=outcome["status"], result=outcome.get("result"),
                    error=(outcome.get("error") or None) and outcome["error"][:1000],
                    error_kind=outcome.get("error_kind"), finished_at=now))

    def live(self, provider: str, model: str, base_url: str | None) -> list[dict]:
        """This endpoint's batches that may still be answered (stored or submitted), oldest
        first, each with `requests`: {custom id: cache key} of those not answered yet."""
        with self.engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(
                select(provider_batches).where(
                    provider_batches.c.provider == provider, provider_batches.c.model == model,
                    provider_batches.c.status.in_(LIVE))
                .order_by(provider_batches.c.id))
                if r.base_url == base_url]
            for row in rows:
                row["requests"] = dict(conn.execute(
                    select(batch_requests.c.custom_id, batch_requests.c.cache_key).where(
                        batch_requests.c.batch_id == row["id"],
                        batch_requests.c.status.in_(("queued", "submitted")))).all())
        return rows

    def lookup(self, cache_key: str) -> dict | None:
        """The latest batch request with this cache key, with its batch's columns
        (batch_status, provider_batch_id, owner, token, batch_id, run_id); None if none."""
        b, r = provider_batches, batch_requests
        with self.engine.connect() as conn:
            row = conn.execute(
                select(r.c.batch_id, r.c.custom_id, r.c.status, r.c.result, r.c.error,
                       r.c.error_kind, b.c.status.label("batch_status"), b.c.provider_batch_id,
                       b.c.owner, b.c.token, b.c.run_id)
                .join(b, b.c.id == r.c.batch_id).where(r.c.cache_key == cache_key)
                .order_by(r.c.id.desc()).limit(1)).first()
        return dict(row._mapping) if row is not None else None

    def batch(self, local_id: int) -> dict | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(provider_batches).where(provider_batches.c.id == local_id)).first()
            if row is None:
                return None
            out = dict(row._mapping)
            out["requests"] = dict(conn.execute(
                select(batch_requests.c.custom_id, batch_requests.c.cache_key).where(
                    batch_requests.c.batch_id == local_id,
                    batch_requests.c.status.in_(("queued", "submitted")))).all())
        return out
