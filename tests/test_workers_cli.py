"""The real `oversight` command as a scheduler and a second worker meet it (issue 8): SIGTERM
and repeated Ctrl-C stop a run cleanly (D11); a second worker started halfway through a first
one on the same store runs no episode twice and both exit 0 (D12, leases); a worker whose
share is done waits for another's live leases (never taking them) yet stops at once when told
to; when one of two workers is killed with -9, the survivor alone finishes the run once the
dead worker's leases have run out; read-only commands never write to a store, and a store
that is not one is refused (exit 2).

Subprocesses (the process boundary is what is under test), mock models (no HTTP here).
"""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from enginekit import direct, mock, rows, scalar, write_spec

pytestmark = pytest.mark.slow

DEADLINE = 120.0


def env() -> dict:
    out = {k: v for k, v in os.environ.items() if k != "OVERSIGHT_DB"}
    out["COLUMNS"] = "160"
    return out


def start(spec: Path, db: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "oversight", "run", str(spec), "--db", str(db),
                             "-q", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=spec.parent, env=env())


def oversight(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "oversight", *map(str, args)], cwd=cwd, env=env(),
                          capture_output=True, text=True, timeout=DEADLINE)


def wait_until(predicate, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except sqlite3.OperationalError:
            pass  # the store is being created
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process ended before {what}: {proc.communicate()}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def count(db: Path, status: str) -> int:
    if not db.exists():
        return 0
    return scalar(db, "SELECT count(*) FROM episodes WHERE status = ?", status)


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, out, err


def slow_spec(tmp_path: Path, n: int = 40, delay: float = 0.5, concurrency: int = 4) -> Path:
    return write_spec(tmp_path / "slow.toml", name="slow", datasets=["boolq"], limit=n,
                      concurrency=concurrency, models={"m": mock(delay=delay)},
                      protocols=[direct()])


def one_call_each(db: Path) -> None:
    """Every episode done, each with exactly one call, one message and one verdict."""
    for e in rows(db, "SELECT * FROM episodes"):
        assert e["status"] == "done", (e["id"], e["status"], e["error"])
        for table in ("model_calls", "messages", "decisions"):
            assert scalar(db, f"SELECT count(*) FROM {table} WHERE episode_id = ?", e["id"]) == 1


# --- D11: SIGTERM and two quick Ctrl-C --------------------------------------------------------

@pytest.mark.parametrize("signals, code, name", [
    ((signal.SIGTERM,), 143, "SIGTERM"),
    ((signal.SIGINT, signal.SIGINT), 130, "SIGINT"),
    ((signal.SIGINT, signal.SIGTERM, signal.SIGINT), 130, "SIGINT"),
])
def test_signals_stop_the_run_cleanly_and_it_resumes(tmp_path, signals, code, name):
    spec, db = slow_spec(tmp_path), tmp_path / "s.db"
    proc = start(spec, db)
    wait_until(lambda: count(db, "done") >= 4, "some episodes done", proc)
    for sig in signals:
        proc.send_signal(sig)
        time.sleep(0.02)
    rc, _, err = finish(proc)
    assert rc == code, err
    assert f"{name}: stopping" in err and "Traceback" not in err
    eps = rows(db, "SELECT * FROM episodes")
    assert not [e for e in eps if e["status"] == "running"]  # none left claimed
    assert all(e["lease_owner"] is None for e in eps)
    assert {e["status"] for e in eps} <= {"done", "pending", "interrupted"}
    assert scalar(db, "SELECT status FROM runs") == "interrupted"
    rc, _, err = finish(start(spec, db))
    assert rc == 0, err
    assert scalar(db, "SELECT status FROM runs") == "finished"
    one_call_each(db)


# --- D12 and leases: a second worker joins halfway ---------------------------------------------

def test_second_worker_started_halfway_runs_nothing_twice(tmp_path):
    spec, db = slow_spec(tmp_path), tmp_path / "s.db"
    first = start(spec, db)
    wait_until(lambda: count(db, "done") >= 12, "a third of the run done", first)
    second = start(spec, db)
    results = [finish(first), finish(second)]
    for rc, _, err in results:
        assert rc == 0, err
        assert "Traceback" not in err and "IntegrityError" not in err
    assert scalar(db, "SELECT status FROM runs") == "finished"
    one_call_each(db)
    owners = {r["n"] for r in rows(db, "SELECT count(DISTINCT episode_id) AS n FROM model_calls")}
    assert owners == {40}


def start_with(spec: Path, db: Path, *args: str, **extra_env: str) -> subprocess.Popen:
    """`start`, with more environment (OVERSIGHT_LEASE_SECONDS)."""
    return subprocess.Popen([sys.executable, "-m", "oversight", "run", str(spec), "--db", str(db),
                             "-q", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=spec.parent, env={**env(), **extra_env})


def hold_elsewhere(db: Path, ids: tuple[int, ...], seconds: float) -> None:
    """These episodes in flight on another machine: a live lease for `seconds` more."""
    con = sqlite3.connect(db, timeout=30)
    with con:
        con.execute(f"""UPDATE episodes SET status = 'running', lease_owner = 'far:1:x',
                        lease_expires = (julianday('now') - 2440587.5) * 86400.0 + ?
                        WHERE id IN ({', '.join('?' * len(ids))})""", (seconds, *ids))
    con.close()


def held_far(db: Path) -> int:
    return scalar(db, "SELECT count(*) FROM episodes WHERE lease_owner = 'far:1:x' AND "
                      "lease_expires > (julianday('now') - 2440587.5) * 86400.0")


def test_worker_whose_share_is_done_waits_for_a_live_worker_and_never_takes_its_work(tmp_path):
    """A worker whose share is done while another (here: on another machine, for ten more
    minutes) holds live leases keeps waiting, quietly, without taking them; when their holder
    finishes them it exits 0 and the run is finished, having run none of them itself."""
    spec = write_spec(tmp_path / "two.toml", name="two", datasets=["boolq"], limit=8,
                      concurrency=4, models={"m": mock(delay=0.2)}, protocols=[direct()])
    db = tmp_path / "s.db"
    assert finish(start(spec, db))[0] == 0
    hold_elsewhere(db, (1, 2), 600)
    calls = scalar(db, "SELECT count(*) FROM model_calls")
    proc = start_with(spec, db, OVERSIGHT_LEASE_SECONDS="2")  # looks every 0.5 s
    wait_until(lambda: scalar(db, "SELECT status FROM runs") == "running", "the worker started",
               proc)
    time.sleep(2.5)  # several looks at the store
    assert proc.poll() is None, "the worker left while another held live leases"
    assert held_far(db) == 2  # never taken
    con = sqlite3.connect(db, timeout=30)
    with con:  # the holder finishes its episodes
        con.execute("UPDATE episodes SET status = 'done', lease_owner = NULL, "
                    "lease_expires = NULL WHERE lease_owner = 'far:1:x'")
    con.close()
    rc, _, err = finish(proc)
    assert rc == 0, err
    assert "Traceback" not in err and "another worker" not in err, err
    assert scalar(db, "SELECT status FROM runs") == "finished"
    assert scalar(db, "SELECT count(*) FROM model_calls") == calls  # it ran none of them


@pytest.mark.parametrize("how", ["SIGTERM", "budget"])
def test_a_waiting_worker_still_stops_at_once(tmp_path, how):
    """Waiting for another worker's episodes does not delay a stop: SIGTERM ends the wait at
    once (143), and a worker whose budget runs out does not wait at all. The other worker's
    leases are untouched and the run says another worker is still on it."""
    spec = write_spec(tmp_path / "two.toml", name="two", datasets=["boolq"], limit=8,
                      concurrency=2, models={"m": mock(delay=0.2)}, protocols=[direct()])
    db = tmp_path / "s.db"
    assert finish(start(spec, db, "--limit", "1"))[0] == 0  # the store and the run exist
    hold_elsewhere(db, (1,), 600)
    if how == "SIGTERM":
        proc = start_with(spec, db, OVERSIGHT_LEASE_SECONDS="2")
        wait_until(lambda: count(db, "done") == 7, "the worker's share done", proc)
        time.sleep(1.0)  # waiting now
        assert proc.poll() is None
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc, _, err = finish(proc)
        assert rc == 143, err
    else:
        spent = scalar(db, "SELECT sum(tokens_in + tokens_out) FROM model_calls")
        t0 = time.monotonic()  # a budget that runs out at this worker's first call
        rc, _, err = finish(start_with(spec, db, "--budget-tokens", str(spent + 1),
                                       OVERSIGHT_LEASE_SECONDS="2"))
        assert count(db, "done") >= 1, "the budget ran out before this worker began"
        assert count(db, "done") < 7, "the budget did not run out"
        assert rc in (0, 1), err
    assert time.monotonic() - t0 < 30  # not the ten minutes of the other worker's lease
    assert "Traceback" not in err, err
    assert held_far(db) == 1
    assert scalar(db, "SELECT status FROM runs") == "running"


def each_episode_done_once(db: Path) -> list[dict]:
    """Every episode done, with the rows of one attempt only: as many call rows as it counted
    calls and cache hits, one decision at least, no message or decision twice."""
    eps = rows(db, "SELECT * FROM episodes ORDER BY id")
    for e in eps:
        assert e["status"] == "done", (e["id"], e["status"], e["error"])
        assert e["lease_owner"] is None and e["lease_expires"] is None
        n = scalar(db, "SELECT count(*) FROM model_calls WHERE episode_id = ?", e["id"])
        assert n == e["n_calls"] + e["cache_hits"], e["id"]
        assert scalar(db, "SELECT count(*) FROM decisions WHERE episode_id = ?", e["id"]) >= 1
    for t in ("messages", "decisions"):
        assert scalar(db, f"SELECT count(*) FROM (SELECT DISTINCT episode_id, idx FROM {t})") \
            == scalar(db, f"SELECT count(*) FROM {t}")
    return eps


def test_the_survivor_alone_finishes_a_killed_workers_episodes(tmp_path):
    """Two `oversight run` processes on one SQLite store; A is killed with -9 mid-episode and
    its leases made a foreign machine's (a dead worker of this machine is found by its pid at
    once; this tests the other path: the lease running out). B, alone (no restart, no third
    worker), waits for those leases to run out, takes the episodes over, finishes the run and
    exits 0: every episode done once, A's partial rows replaced (their tokens kept as
    replaced spend), none of A's episodes started before its lease had run out."""
    from datetime import datetime

    spec = write_spec(tmp_path / "kill.toml", name="kill", datasets=["boolq"], limit=10,
                      concurrency=2, models={"m": mock(delay=0.3)},
                      protocols=[{"name": "debate", "roles": {
                          "debater_a": "m", "debater_b": "m", "judge": "m"}}])
    db = tmp_path / "s.db"
    lease = {"OVERSIGHT_LEASE_SECONDS": "3"}
    a = start_with(spec, db, **lease)
    wait_until(lambda: db.exists() and scalar(db, "SELECT count(*) FROM episodes") > 0,
               "A to create the run", a)
    b = start_with(spec, db, **lease)
    mine = f"%:{a.pid}:%"

    def a_mid_episode() -> bool:
        partial = scalar(db, "SELECT count(*) FROM episodes e WHERE e.lease_owner LIKE ? AND "
                             "EXISTS (SELECT 1 FROM model_calls c WHERE c.episode_id = e.id)",
                         mine)
        return count(db, "done") >= 2 and partial >= 1

    wait_until(a_mid_episode, "worker A in the middle of an episode", a)
    a.send_signal(signal.SIGKILL)
    a.wait(DEADLINE)
    con = sqlite3.connect(db, timeout=30)
    with con:
        held = dict(con.execute("UPDATE episodes SET lease_owner = 'elsewhere:1:dead' "
                                "WHERE lease_owner LIKE ? RETURNING id, lease_expires",
                                (mine,)).fetchall())
    con.close()
    assert held and min(held.values()) > 0  # live leases (not ended by a pid check)
    assert b.poll() is None, "B finished before A's leases ran out"
    rc, _, err = finish(b)
    assert rc == 0, err
    assert "Traceback" not in err and "another worker" not in err, err
    assert scalar(db, "SELECT status FROM runs") == "finished"
    eps = each_episode_done_once(db)
    assert len(eps) == 20 and len({e["n_calls"] + e["cache_hits"] for e in eps}) == 1
    for e in eps:
        if e["id"] in held:  # taken over only once A's lease had run out
            assert datetime.fromisoformat(e["started_at"]).timestamp() >= held[e["id"]] - 0.01
    assert scalar(db, "SELECT replaced_tokens FROM runs") > 0  # A's partial calls
    assert scalar(db, "SELECT count(*) FROM episodes WHERE lease_owner IS NOT NULL") == 0


# --- read-only commands and stores that are not stores -----------------------------------------

def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_read_commands_never_write_and_old_or_new_schemas_are_refused(tmp_path):
    spec = write_spec(tmp_path / "r.toml", name="r", datasets=["boolq"], limit=2,
                      models={"m": mock()}, protocols=[direct()])
    db = tmp_path / "s.db"
    assert finish(start(spec, db))[0] == 0
    before = digest(db)
    for args in (("runs",), ("report", "r"), ("show", "1"), ("cache", "1")):
        res = oversight(*args, "--db", db, cwd=tmp_path)
        assert res.returncode == 0, (args, res.stderr)
    assert digest(db) == before

    missing = tmp_path / "nowhere" / "deeper" / "s.db"
    res = oversight("runs", "--db", missing, cwd=tmp_path)
    assert res.returncode == 2 and "no store here" in res.stderr
    assert not (tmp_path / "nowhere").exists()

    con = sqlite3.connect(db)
    with con:
        con.execute("INSERT INTO schema_migrations VALUES ('m999_from_the_future', 'x')")
    con.close()
    newer = digest(db)
    for args in (("runs",), ("run", spec)):
        res = oversight(*args, "--db", db, cwd=tmp_path)
        assert res.returncode == 2 and "newer than this oversight" in res.stderr, res.stderr
        assert "Traceback" not in res.stderr
    assert digest(db) == newer

    old = tmp_path / "old.db"
    con = sqlite3.connect(old)
    con.executescript((Path(__file__).parent / "data" / "store_v1.sql").read_text())
    con.close()
    res = oversight("runs", "--db", old, cwd=tmp_path)
    assert res.returncode == 2 and "older than this oversight" in res.stderr
    assert "oversight migrate" in res.stderr
    assert oversight("migrate", "--db", old, cwd=tmp_path).returncode == 0
    assert oversight("runs", "--db", old, cwd=tmp_path).returncode == 0


@pytest.mark.parametrize("kind", ["folder", "text", "other_sqlite"])
def test_db_that_is_not_a_store_is_refused_before_anything(tmp_path, kind):
    spec = write_spec(tmp_path / "r.toml", name="r", datasets=["boolq"], limit=2,
                      models={"m": mock()}, protocols=[direct()])
    target = tmp_path / "target"
    if kind == "folder":
        target.mkdir()
    elif kind == "text":
        target.write_text("name,score\nalice,3\n")
    else:
        con = sqlite3.connect(target)
        with con:
            con.execute("CREATE TABLE mine (x)")
        con.close()
    before = None if kind == "folder" else digest(target)
    for args in (("run", spec), ("runs",), ("report", "r")):
        res = oversight(*args, "--db", target, cwd=tmp_path)
        assert res.returncode == 2, (args, res.stderr)
        assert res.stderr.startswith("error:") and str(target) in res.stderr, res.stderr
        assert "Traceback" not in res.stderr
    if before is not None:
        assert digest(target) == before
