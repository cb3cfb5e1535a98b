"""Which worker runs what: worker ids, episodes leased a batch at a time, and workers on
this host that are gone. The leases themselves live in the store (store/leases.py)."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket

from ..store import Store

# How long a worker's claim on an episode lasts without renewal (renewed every quarter of
# it): a dead worker's episodes are taken over this long after it stopped renewing, or at
# once by a worker on the same host, which can see that its process is gone. Taken over by
# a surviving worker of the run, which waits for them once its own share is done
# ($OVERSIGHT_LEASE_SECONDS sets it for `oversight run`).
LEASE_SECONDS = 60.0

# A worker whose own share is done and that waits for episodes other workers hold looks at
# the store this often (at most), and at least four times per lease.
WAIT_POLL_SECONDS = 5.0


def wait_poll(lease_seconds: float) -> float:
    """Seconds between two looks at the store while waiting for other workers' episodes."""
    return min(WAIT_POLL_SECONDS, lease_seconds / 4)


class Claims:
    """Leases episodes a batch at a time (one transaction each, not one per episode), in the
    order the runner starts them, and keeps the leases of claimed ones it has not started."""

    MAX_BATCH = 500  # ids in one SQL IN (...)

    def __init__(self, store: Store, owner: str, ttl: float, order: list[int], batch: int,
                 retry_failed: bool, position: dict[int, int] | None = None):
        """`position`: ep_id -> its index in `order`, when the caller has it already."""
        self.store, self.owner, self.ttl, self.retry_failed = store, owner, ttl, retry_failed
        self.order = order
        self.position = position if position is not None else {ep_id: i for i, ep_id in enumerate(order)}
        self.batch = max(1, min(batch, self.MAX_BATCH))
        self.decided: dict[int, bool] = {}  # claimed (True) or lost (False), not yet taken
        self._lock = asyncio.Lock()
        self._claiming: asyncio.Future | None = None

    async def take(self, ep_id: int) -> bool:
        """Whether this worker runs the episode; claims it and the next ones if needed."""
        async with self._lock:  # two overlapping chunks would claim an episode twice
            if ep_id not in self.decided:
                start = self.position[ep_id]
                chunk = [i for i in self.order[start:start + self.batch] if i not in self.decided]
                # In a thread, which a cancelled batch cannot stop: shielded, so that what it
                # won is known (and given back) even if the batch stops meanwhile.
                self._claiming = asyncio.ensure_future(asyncio.to_thread(
                    self.store.claim_episodes, chunk, self.owner, self.ttl, self.retry_failed))
                self._claiming.add_done_callback(
                    lambda f: f.cancelled() or f.exception() or
                    self.decided.update({i: i in f.result() for i in chunk}))
                await asyncio.shield(self._claiming)
            return self.decided.pop(ep_id)

    def again(self, ids: list[int]) -> None:
        """From now on take these episodes, in this order: ones given up earlier because another
        worker held them, whose lease has since ended. Claimed like any others (a batch at a
        time, partial rows replaced), but never as a retry of a failed episode: one that another
        worker failed meanwhile is finished."""
        self.order = list(ids)
        self.position = {ep_id: i for i, ep_id in enumerate(self.order)}
        self.retry_failed = False

    async def settle(self) -> None:
        """Wait for a claim still running in its thread (after the batch was cancelled)."""
        if self._claiming is not None:
            await asyncio.gather(self._claiming, return_exceptions=True)

    def unstarted(self) -> list[int]:
        return [ep_id for ep_id, won in self.decided.items() if won]

    def forget(self, ep_id: int) -> None:
        """A claimed, unstarted episode whose lease ran out: another worker may have it."""
        if self.decided.get(ep_id):
            self.decided[ep_id] = False


def worker_id() -> str:
    """host:pid:nonce — unique per process, and says where to look for it."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def dead_workers(holders: dict[str, int]) -> list[str]:
    """Lease holders on this host whose process is gone."""
    host, dead = socket.gethostname(), []
    for owner in holders:
        name, _, rest = owner.partition(":")
        pid = rest.partition(":")[0]
        if name == host and pid.isdigit() and not _alive(int(pid)):
            dead.append(owner)
    return dead


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process: alive
        return True
    return True
