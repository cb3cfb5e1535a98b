"""The real `oversight` command as a scheduler and a second worker meet it (issue 8): SIGTERM
and repeated Ctrl-C stop a run cleanly (D11); a second worker started halfway through a first
one on the same store runs no episode twice and both exit 0 (D12, leases); read-only commands
never write to a store, and a store that is not one is refused (exit 2).

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


def test_worker_finishing_first_says_the_other_is_still_going(tmp_path):
    """A worker whose share is done while another still holds live leases exits 0 and says
    so; the run stays 'running' until the last worker settles it."""
    spec = write_spec(tmp_path / "two.toml", name="two", datasets=["boolq"], limit=8,
                      concurrency=4, models={"m": mock(delay=0.2)}, protocols=[direct()])
    db = tmp_path / "s.db"
    assert finish(start(spec, db))[0] == 0
    con = sqlite3.connect(db)
    with con:  # two episodes held by a live worker on another machine, for ten minutes
        con.execute("""UPDATE episodes SET status = 'running', lease_owner = 'far:1:x',
                       lease_expires = (julianday('now') - 2440587.5) * 86400.0 + 600
                       WHERE id IN (1, 2)""")
    con.close()
    rc, _, err = finish(start(spec, db))
    assert rc == 0, err
    assert "2 episode(s) are being run by another worker" in err
    assert scalar(db, "SELECT status FROM runs") == "running"


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
