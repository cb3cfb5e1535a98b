"""Nothing aborts a batch and nothing is lost (issue 8): the batch engine above the HTTP layer.

Simultaneous turns that fail (D1, D4), replies the store cannot take and a store that cannot
be written (D2), leases: a live one is never taken, an expired or dead one is reclaimed, a lost
one stops its episode (second worker). Mock models only where the HTTP layer is not under test;
the HTTP side of the same defects is in test_reliability_http.py.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
import time

import pytest
from enginekit import debate, direct, mock, rows, run, scalar, write_spec
from sqlalchemy.exc import OperationalError

from oversight.api.plugins import load_all
from oversight.batch.runner import run_batch
from oversight.batch.spec import load_spec
from oversight.errors import StoreError
from oversight.models import Model, ModelResponse, Provider
from oversight.store import Store, storable_text
from oversight.store.writer import Writer


def spec(tmp_path, protocols, models, *, limit=3, concurrency=4, name="rel"):
    return write_spec(tmp_path / f"{name}.toml", name=name, datasets=["boolq"], limit=limit,
                      models=models, protocols=protocols, concurrency=concurrency)


def episodes(db):
    return rows(db, "SELECT * FROM episodes ORDER BY id")


# --- D1/D4: a failed simultaneous turn wins over its cancelled sibling ---------------------

@pytest.mark.parametrize("slow_role, bad_role", [("debater_a", "debater_b"),
                                                  ("debater_b", "debater_a")])
def test_failed_turn_is_the_error_whatever_the_order(tmp_path, slow_role, bad_role):
    """One debater's call fails at once while the other's is still with the model: the batch
    ends normally, every episode failed with the real error (not a CancelledError, not an
    interruption), and the sibling's call, already sent, finished and left its row."""
    letter = bad_role[-1].upper()
    models = {"slow": mock(["My case."], delay=0.4), "bad": mock(fail_on=f"Debater {letter}"),
              "j": mock()}
    path = spec(tmp_path, [{"name": "debate", "roles": {slow_role: "slow", bad_role: "bad",
                                                         "judge": "j"}}], models)
    db = tmp_path / "s.db"
    result = run(path, db)
    assert result.summary.counts == {"failed": 6}
    assert result.summary.status == "incomplete"
    for e in episodes(db):
        assert e["status"] == "failed" and "mock failure" in e["error"], e["error"]
        assert e["lease_owner"] is None
        calls = rows(db, "SELECT * FROM model_calls WHERE episode_id = ?", e["id"])
        assert e["n_calls"] == len(calls) == 2  # the failure and the sibling that was in flight
        slow = [c for c in calls if c["role"] == slow_role]
        assert len(slow) == 1 and slow[0]["error"] is None and slow[0]["text"] == "My case."
        assert [m["role"] for m in rows(db, "SELECT role FROM messages WHERE episode_id = ?",
                                        e["id"])] == [slow_role]
    assert len(result.calls("j")) == 0  # no judge call for a failed debate


def test_protocol_awaiting_a_cancelled_task_fails_only_its_episode(tmp_path):
    proto_dir = tmp_path / "protos"
    proto_dir.mkdir()
    (proto_dir / "cancelling.py").write_text(
        "import asyncio\n"
        "from oversight import protocol\n\n"
        "@protocol(roles=('judge',))\n"
        "async def cancelling(ep):\n"
        "    task = asyncio.ensure_future(asyncio.sleep(10))\n"
        "    await asyncio.sleep(0)\n"
        "    task.cancel()\n"
        "    await task\n")
    path = spec(tmp_path, [{"name": "cancelling", "roles": {"judge": "m"}}, direct()],
                {"m": mock()})
    db = tmp_path / "s.db"
    result = run(path, db, protocol_dirs=[proto_dir])
    assert result.summary.counts == {"failed": 3, "done": 3}
    failed = [e for e in episodes(db) if e["status"] == "failed"]
    assert {e["protocol"] for e in failed} == {"cancelling"}
    assert all("CancelledError" in e["error"] for e in failed)


# --- D2: replies the store cannot take, and a store that cannot be written ----------------

def test_storable_text_escapes_what_a_driver_refuses():
    assert storable_text("plain") == "plain"
    assert storable_text("café ☕") == "café ☕"
    assert storable_text("a\ud800b") == "a\\ud800b"
    assert storable_text("nul\x00") == "nul\x00"
    assert storable_text("nul\x00", nul=False) == "nul\\x00"
    assert storable_text("\udfff\x00", nul=False) == "\\udfff\\x00"


class Poisoned(Provider):
    """Answers like the mock, except for prompts naming `surrogate` (a lone surrogate in the
    text) or `huge` (a token count no SQLite INTEGER holds)."""

    def __init__(self, config, surrogate: str, huge: str):
        super().__init__(config)
        self.surrogate, self.huge, self.calls = surrogate, huge, 0

    async def complete(self, request):
        self.calls += 1
        prompt = "\n".join(c for _, c in request.messages)
        text = "Answer: A\nConfidence: 70%"
        if self.surrogate in prompt:
            text = "Answer: A \ud800 broken\nConfidence: 70%"
        return ModelResponse(text=text, tokens_in=2 ** 64 if self.huge in prompt else 10,
                             tokens_out=5)


def test_unstorable_replies_never_stop_the_writer(tmp_path):
    path = spec(tmp_path, [direct()], {"m": mock()}, limit=20)
    registry, prompts = load_all()
    loaded = load_spec(path, registry)
    surrogate, huge = loaded.items[3].question, loaded.items[11].question
    provider = Poisoned(loaded.models["m"], surrogate, huge)
    models = {"m": Model("m", loaded.models["m"], provider=provider)}
    db = tmp_path / "s.db"
    store = Store(db)
    try:
        summary = asyncio.run(run_batch(loaded, store, prompts, models=models))
    finally:
        store.close()
    assert provider.calls == 20
    assert summary.states == {"done": 19, "failed": 1}  # the store's word, not the protocols'
    by_item = {e["item_id"]: e for e in episodes(db)}
    assert all(e["status"] in ("done", "failed") for e in by_item.values())
    poisoned = by_item[loaded.items[3].key]
    assert poisoned["status"] == "done"
    [msg] = rows(db, "SELECT content FROM messages WHERE episode_id = ?", poisoned["id"])
    assert msg["content"] == "Answer: A \\ud800 broken\nConfidence: 70%"  # escaped, kept
    big = by_item[loaded.items[11].key]
    assert big["status"] == "failed" and "could not store a" in big["error"]
    assert "OverflowError" in big["error"]
    assert scalar(db, "SELECT count(*) FROM decisions WHERE episode_id = ?", big["id"]) == 0
    assert scalar(db, "SELECT count(*) FROM decisions") == 19


@pytest.mark.slow
def test_a_store_that_cannot_be_written_stops_the_batch_loudly(tmp_path, monkeypatch):
    """The writer gives up after a few failed flushes: the batch stops with a StoreError (no
    more calls), and a later run redoes exactly what was not stored."""
    path = spec(tmp_path, [direct()], {"m": mock(delay=0.02)}, limit=300,
                concurrency=2)
    db = tmp_path / "s.db"
    real = Writer._write
    state = {"flushes": 0}

    def failing(self, rows_, updates):
        state["flushes"] += 1
        if state["flushes"] > 2:
            raise OperationalError("INSERT", {}, Exception("disk I/O error"))
        return real(self, rows_, updates)

    monkeypatch.setattr(Writer, "_write", failing)
    with pytest.raises(StoreError, match="cannot write to the store.*disk I/O error"):
        result = run(path, db)
    monkeypatch.setattr(Writer, "_write", real)
    stored = episodes(db)
    assert 0 < sum(e["status"] == "done" for e in stored) < 300
    assert sum(e["status"] == "pending" for e in stored) > 0  # the batch stopped: never reached
    # Episodes cut off stay leased to the dead writer; this process is alive, so only
    # their leases' expiry (or this test) frees them: expire them, as a later run would.
    con_owner = {e["lease_owner"] for e in stored if e["lease_owner"]}
    store = Store(db)
    store.expire_leases(sorted(con_owner))
    store.close()
    result = run(path, db)
    assert result.summary.status == "finished"
    for e in episodes(db):
        assert e["status"] == "done"
        assert scalar(db, "SELECT count(*) FROM model_calls WHERE episode_id = ?", e["id"]) == 1


# --- leases ---------------------------------------------------------------------------------

def _lease(db, ids, owner, seconds_from_now):
    import sqlite3
    con = sqlite3.connect(db)
    with con:
        con.execute(f"""UPDATE episodes SET status = 'running', lease_owner = ?,
                        lease_expires = (julianday('now') - 2440587.5) * 86400.0 + ?
                        WHERE id IN ({','.join('?' * len(ids))})""", (owner, seconds_from_now, *ids))
    con.close()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _run_with_lease(path, db, lease_seconds):
    """`run`, with a short lease (and so a short wait between looks at other workers' leases)."""
    registry, prompts = load_all()
    loaded = load_spec(path, registry, prompts=prompts)  # (the run `run` made: same code)
    store = Store(db)
    try:
        return asyncio.run(run_batch(loaded, store, prompts, lease_seconds=lease_seconds,
                                     models={a: Model(a, c) for a, c in loaded.models.items()}))
    finally:
        store.close()


def _epoch(iso: str) -> float:
    from datetime import datetime
    return datetime.fromisoformat(iso).timestamp()


@pytest.mark.parametrize("holder, taken", [
    ("elsewhere.example:123:abcd", False),      # live lease of a worker on another machine
    (f"{socket.gethostname()}:DEAD:abcd", True),  # a worker of this machine that is gone
])
def test_live_leases_are_never_taken_and_dead_workers_are_replaced(tmp_path, holder, taken):
    """A dead worker of this machine gives its episodes up at once; a live lease elsewhere is
    waited for (never taken) and, once it has run out, taken over by the same worker, which
    then finishes the run."""
    path = spec(tmp_path, [direct()], {"m": mock()}, limit=6)
    db = tmp_path / "s.db"
    assert run(path, db).summary.status == "finished"
    held = [e["id"] for e in episodes(db)][:3]
    owner = holder.replace("DEAD", str(_dead_pid()))
    # three episodes "in flight": for ten minutes on this machine, for 1.5 s elsewhere
    _lease(db, held, owner, 600 if taken else 1.5)
    expires = {r["id"]: r["lease_expires"] for r in episodes(db) if r["id"] in held}
    before = {i: scalar(db, "SELECT count(*) FROM model_calls WHERE episode_id = ?", i)
              for i in held}
    assert set(before.values()) == {1}
    summary = run(path, db).summary if taken else _run_with_lease(path, db, 1.0)
    assert summary.counts == {"done": 3} and summary.status == "finished"
    for i in held:  # redone from scratch: the old attempt's rows replaced, not added to
        assert scalar(db, "SELECT count(*) FROM model_calls WHERE episode_id = ?", i) == 1
    if not taken:  # waited for: started only once the holder's lease had run out
        for e in episodes(db):
            if e["id"] in held:
                assert _epoch(e["started_at"]) >= expires[e["id"]] - 0.01
    assert {e["status"] for e in episodes(db)} == {"done"}
    assert all(e["lease_owner"] is None for e in episodes(db))
    assert scalar(db, "SELECT status FROM runs") == "finished"


def test_a_lost_lease_stops_its_episode_and_drops_its_rows(tmp_path):
    """Another worker takes over an episode this one is running (its lease lapsed while the
    process was stalled): this worker stops it and writes nothing more for it, then waits
    for the taker (alive: it holds a live lease) to finish it, and never runs it again."""
    path = spec(tmp_path, [direct()], {"m": mock(delay=1.0)}, limit=2)
    registry, prompts = load_all()
    loaded = load_spec(path, registry)
    models = {"m": Model("m", loaded.models["m"])}
    db = tmp_path / "s.db"
    store = Store(db)

    def steal():
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if rows(db, "SELECT id FROM episodes WHERE status = 'running' AND lease_owner IS NOT NULL"):
                break
            time.sleep(0.02)
        import sqlite3
        con = sqlite3.connect(db, timeout=30)
        with con:  # taken over, for ten minutes
            con.execute("""UPDATE episodes SET lease_owner = 'thief:1:x',
                           lease_expires = (julianday('now') - 2440587.5) * 86400.0 + 600
                           WHERE status = 'running'""")
        time.sleep(2.0)  # the thief runs them (it stores nothing here), then finishes them
        with con:
            con.execute("UPDATE episodes SET status = 'done', lease_owner = NULL, "
                        "lease_expires = NULL WHERE lease_owner = 'thief:1:x'")
        con.close()

    thief = threading.Thread(target=steal)
    thief.start()
    try:
        summary = asyncio.run(run_batch(loaded, store, prompts, models=models, lease_seconds=0.4))
    finally:
        thief.join()
        store.close()
    assert summary.counts == {"lost": 2, "skipped": 2}  # lost here, then finished by the thief
    assert summary.status == "finished"
    for e in episodes(db):
        assert e["status"] == "done" and e["lease_owner"] is None
    assert scalar(db, "SELECT count(*) FROM model_calls") == 0
    assert scalar(db, "SELECT count(*) FROM messages") == 0


def test_debate_and_direct_leave_no_lease_behind(tmp_path):
    path = spec(tmp_path, [direct(), debate()], {"m": mock()}, limit=2)
    db = tmp_path / "s.db"
    assert run(path, db).summary.status == "finished"
    assert all(e["lease_owner"] is None and e["lease_expires"] is None for e in episodes(db))


def test_a_store_refusing_writes_before_the_batch_is_a_store_error(tmp_path):
    """Registering the run is the first write: a store that refuses it (here: read-only
    connections) gives a StoreError naming the store, not a driver traceback, and no call."""
    from sqlalchemy import event

    path = spec(tmp_path, [direct()], {"m": mock()}, limit=2)
    registry, prompts = load_all()
    loaded = load_spec(path, registry)
    models = {"m": Model("m", loaded.models["m"])}
    store = Store(tmp_path / "s.db")
    store.engine.dispose()
    event.listen(store.engine, "connect", lambda con, _: con.execute("PRAGMA query_only=ON"))
    try:
        with pytest.raises(StoreError, match=r"s\.db: cannot write to the store"):
            asyncio.run(run_batch(loaded, store, prompts, models=models))
    finally:
        store.close()
    assert models["m"].provider.calls == []


def test_a_store_failing_midway_through_a_refused_batch_loses_and_repeats_nothing(tmp_path):
    """A flush the database refuses is written row by row; if the store then fails midway,
    the rows already written are not queued again (no duplicate) and the rest are."""
    from sqlalchemy import event

    from oversight.store import messages

    store = Store(tmp_path / "s.db")
    path = spec(tmp_path, [direct()], {"m": mock()}, limit=1)
    run(path, tmp_path / "s.db")
    [ep] = episodes(tmp_path / "s.db")
    writer = store.writer()
    good = [{"episode_id": ep["id"], "idx": 10 + i, "role": "judge", "content": f"m{i}",
             "shown": f"m{i}"} for i in range(4)]
    bad = {"episode_id": ep["id"], "idx": 20, "role": "judge", "content": "x", "shown": "x",
           "tokens_in": 2 ** 64}  # refused: the batch goes row by row
    for row in (good[0], bad, good[1], good[2], good[3]):
        writer.insert(messages, row)
    inserts = {"n": 0}

    def fail_third_insert(conn, cursor, statement, *args):
        if statement.startswith("INSERT INTO messages"):
            inserts["n"] += 1
            if inserts["n"] == 5:  # the batch, then rows 1, 2 (bad), 3 -> the 4th row fails
                raise OperationalError(statement, {}, Exception("disk I/O error"))

    event.listen(store.engine, "before_cursor_execute", fail_third_insert)
    with pytest.raises(OperationalError):
        writer.flush()
    event.remove(store.engine, "before_cursor_execute", fail_third_insert)
    writer.flush()  # what was left
    store.close()
    stored = [r["idx"] for r in rows(tmp_path / "s.db", "SELECT idx FROM messages "
                                     "WHERE idx >= 10 ORDER BY idx")]
    assert stored == [10, 11, 12, 13]
    assert "OverflowError" in writer.unstored[ep["id"]]
