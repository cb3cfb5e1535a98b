"""Checks of `tuning.InChild` and of the report's child process, run by test_in_child.py in a
fresh process of their own (a fork needs a process without other threads; pytest's may have
some). Prints one JSON object of findings; not a test module."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time

from oversight import tuning
from oversight.tuning import InChild

PARENT = os.getpid()


def where_am_i() -> str:
    return "parent" if os.getpid() == PARENT else "child"


def big_payload():
    return where_am_i(), os.getpid(), "x" * 2_000_000  # far more than a pipe holds


def fails_in_child():
    if where_am_i() == "child":
        raise ValueError("in the child")
    return where_am_i()


def always_fails():
    raise ValueError(f"failed in the {where_am_i()}")


def killed_in_child():
    if where_am_i() == "child":
        os.kill(os.getpid(), signal.SIGKILL)
    return where_am_i()


def unpicklable_in_child():
    return (lambda: None) if where_am_i() == "child" else where_am_i()


def sleeps():
    time.sleep(30)
    return where_am_i()


def inchild() -> dict:
    out = {}
    sys.stdout.write("unflushed before the forks|\n")  # a child must not write it again
    job = InChild(big_payload)
    out["forked"] = job.pid is not None
    place, pid, payload = job.result()
    out["big"] = [place, pid != PARENT, payload == "x" * 2_000_000]
    out["fails_in_child"] = InChild(fails_in_child).result()
    try:
        InChild(always_fails).result()
        out["always_fails"] = None
    except ValueError as exc:
        out["always_fails"] = str(exc)
    out["here"] = [InChild(fails_in_child, here=lambda: "here").result(),
                   InChild(where_am_i, here=lambda: "here").result()]
    out["killed"] = InChild(killed_in_child).result()
    out["unpicklable"] = InChild(unpicklable_in_child).result()
    job = InChild(sleeps)
    child = job.pid
    t0 = time.perf_counter()
    job.cancel()
    out["cancel_s"] = time.perf_counter() - t0
    try:
        os.waitpid(child, os.WNOHANG)
        out["reaped"] = False
    except ChildProcessError:
        out["reaped"] = True
    out["no_fork"] = InChild(where_am_i, fork=False).pid is None
    was = signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children reaped by the kernel
    try:
        out["sigchld_ignored"] = [InChild(where_am_i).result(), InChild(killed_in_child).result()]
    finally:
        signal.signal(signal.SIGCHLD, was)
    fork = os.fork

    def refused():
        raise BlockingIOError(11, "Resource temporarily unavailable")

    os.fork = refused  # as under a process limit
    try:
        job = InChild(where_am_i)
        out["fork_fails"] = [job.pid is None, job.result()]
    finally:
        os.fork = fork
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        job = InChild(where_am_i)  # another thread runs: no fork, done here
        out["with_a_thread"] = [job.pid is None, job.result()]
    finally:
        stop.set()
        other.join()
    return out


def reports(cases: list) -> dict:
    """Each case's report computed with and without the child, and whether a child ran."""
    from oversight.analysis import report as R
    from oversight.store import Store
    forked = []
    init = tuning.InChild.__init__

    def spy(self, *args, **kwargs):
        init(self, *args, **kwargs)
        forked.append(self.pid is not None)

    tuning.InChild.__init__ = spy
    if os.environ.get("REOPEN_FAILS"):  # the child cannot open the store: the parent does it
        def refuse(self):
            raise RuntimeError("cannot reopen")
        Store.reopen = refuse
    out = []
    for path, run_ids, where in cases:
        store = Store(path, readonly=True)
        R.CHILD_FROM = 10**12
        alone = R.build_report(store, run_ids, where=where, budgets=[0.1, 0.5]).to_json()
        R.CHILD_FROM = 0
        before = len(forked)
        both = R.build_report(store, run_ids, where=where, budgets=[0.1, 0.5]).to_json()
        told = len(forked)
        R.build_report(store, run_ids, where=where, budgets=[0.1, 0.5], child=False)
        out.append({"case": [path, run_ids, where], "same": alone == both,
                    "child_false_forks": len(forked) > told,
                    "child": forked[before:] == [True],
                    "detections": len(json.loads(both)["detection"])})
        store.close()
    return {"reports": out}


if __name__ == "__main__":
    what = sys.argv[1]
    found = inchild() if what == "inchild" else reports(json.loads(sys.argv[2]))
    sys.stdout.write(json.dumps(found) + "\n")
