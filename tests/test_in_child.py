"""`tuning.InChild` (work in a forked child, its result pickled back) and the report's use of
it: the same report, byte for byte, with and without the child. Each check runs in a fresh
process (tests/in_child_checks.py): a fork needs a process without other threads."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent

pytestmark = pytest.mark.slow  # subprocesses


def checks(*args: str, env: dict | None = None) -> tuple[dict, str]:
    proc = subprocess.run([sys.executable, str(HERE / "in_child_checks.py"), *args],
                          capture_output=True, text=True, timeout=300, cwd=HERE,
                          env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stderr[-3000:]
    head, _, last = proc.stdout.rstrip("\n").rpartition("\n")
    return json.loads(last), head


def test_in_child_returns_the_childs_result_or_does_the_work_here():
    found, printed = checks("inchild")
    assert found["forked"]
    assert found["big"] == ["child", True, True]  # 2 MB through the pipe
    # whenever the child fails, the work is done here: same result, same error as without it
    assert found["fails_in_child"] == "parent"
    assert found["always_fails"] == "failed in the parent"
    assert found["here"] == ["here", "child"]  # `here` stands in only when the child fails
    assert found["killed"] == "parent"
    assert found["unpicklable"] == "parent"
    assert found["cancel_s"] < 10 and found["reaped"]  # killed, not waited out (30 s)
    assert found["no_fork"]
    # a host that ignores SIGCHLD: the child's status is unknown, its result still counts
    # when it is whole, and a killed child's work is still done here
    assert found["sigchld_ignored"] == ["child", "parent"]
    assert found["fork_fails"] == [True, "parent"]  # a refused fork: the work is done here
    assert found["with_a_thread"] == [True, "parent"]  # never a fork beside other threads
    assert printed.count("unflushed before the forks|") == 1  # children leave by os._exit


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    from test_report_detection import build as build_detection
    from viewer_store import build as build_hostile
    folder = tmp_path_factory.mktemp("in-child")
    hand = build_detection(folder / "hand.db")
    hostile = build_hostile(folder / "hostile")["db"]
    # a decision whose episode has no result row (its item was deleted by hand)
    orphan = folder / "orphan.db"
    shutil.copy(hand, orphan)
    con = sqlite3.connect(orphan)
    with con:
        con.execute("DELETE FROM items WHERE id = 'd/i2'")
    con.close()
    return {"hand": hand, "hostile": str(hostile), "orphan": str(orphan)}


def test_the_report_is_the_same_with_its_detection_in_a_child(stores):
    con = sqlite3.connect(stores["hostile"])
    hostile_runs = [r for (r,) in con.execute("SELECT id FROM runs ORDER BY created_at")]
    params = [json.loads(p) for (p,) in con.execute("SELECT DISTINCT params FROM episodes")
              if p]
    con.close()
    name, value = next((k, v) for p in params for k, v in sorted(p.items())
                       if isinstance(v, str | int | bool))
    cases = [[stores["hand"], ["mon-1"], None], [stores["hand"], ["mon-1", "plain-1"], None],
             [stores["orphan"], ["mon-1"], None],
             [stores["hostile"], hostile_runs, None],
             [stores["hostile"], hostile_runs, {name: value}],
             *[[stores["hostile"], [r], None] for r in hostile_runs]]
    found, _ = checks("reports", json.dumps(cases))
    for case in found["reports"]:
        assert case["same"], case["case"]
        assert case["child"], case["case"]  # the child did run (and its figures were used)
        assert not case["child_false_forks"], case["case"]  # child=False: never
    # the cases do have detection sections to compute (not only empty ones)
    assert found["reports"][0]["detections"] > 0 and found["reports"][2]["detections"] > 0
    assert any(c["detections"] for c in found["reports"][3:])


def test_a_child_that_cannot_open_the_store_leaves_the_report_to_the_parent(stores):
    found, _ = checks("reports", json.dumps([[stores["hand"], ["mon-1"], None]]),
                      env={"REOPEN_FAILS": "1"})
    (case,) = found["reports"]
    assert case["same"] and case["child"] and case["detections"] > 0


def test_on_postgres_the_child_opens_its_own_connection(stores, pg_server):
    from typer.testing import CliRunner

    from oversight.cli import app
    url = pg_server.create_database("in_child")
    con = sqlite3.connect(stores["hostile"])
    hostile_runs = [r for (r,) in con.execute("SELECT id FROM runs ORDER BY created_at")]
    con.close()
    for run_id in hostile_runs:  # a re-judging after its source
        res = CliRunner().invoke(app, ["push", run_id, "--db", stores["hostile"], "--to", url])
        assert res.exit_code == 0, res.output
    found, _ = checks("reports", json.dumps([[url, hostile_runs, None]]))
    (case,) = found["reports"]
    assert case["same"] and case["child"] and case["detections"] > 0
