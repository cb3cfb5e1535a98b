"""`oversight run` killed with -9 while its provider batch is in flight (issue 11, part 3).

The fake server runs in its own process (its CLI) and holds every batch unfinished; the run
is killed once its first batch is stored and submitted; a second `oversight run` of the same
spec resumes it. Asserted: no custom id is ever submitted twice across both processes (the
restart waits for the live batch instead of resending it), the run finishes, no call went to
the ordinary endpoint, and every call is recorded at the batch price.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request

import pytest
from enginekit import boolq_spec, debate, rows, scalar
from test_workers_cli import finish, start, wait_until

pytestmark = pytest.mark.slow

PRICE = {"input": 1.0, "output": 2.0}


def fake_server(*args: str) -> tuple[subprocess.Popen, str]:
    """The fake server's CLI in another process; it exits when its stdin closes."""
    proc = subprocess.Popen([sys.executable, "-m", "oversight.testing.fakeserver", "--port", "0",
                             *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().split()
    assert line and line[0] == "FAKESERVER_READY", line
    return proc, line[1]


def stop_server(proc: subprocess.Popen) -> dict:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    [stats] = [json.loads(line.split(" ", 1)[1]) for line in out.splitlines()
               if line.startswith("FAKESERVER_STATS ")]
    return stats


def control(url: str, method: str = "GET", what: str = "") -> dict:
    req = urllib.request.Request(f"{url}/_fake/batches{what}", method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_killed_mid_batch_the_restart_submits_nothing_twice(tmp_path, provider):
    server, url = fake_server("--batch-hold")
    try:
        model = {"provider": provider, "model": "fake-model",
                 "base_url": url + "/v1" if provider == "openai" else url, "price": PRICE,
                 "batch": {"linger": 1.0, "poll": 0.05, "max_requests": 12}}
        spec = boolq_spec(tmp_path / "k.toml", name="k", limit=3, concurrency=50,
                          models={"m": model}, protocols=[debate(rounds=2)])
        db = tmp_path / "s.db"

        first = start(spec, db)
        wait_until(lambda: db.exists() and scalar(
            db, "SELECT count(*) FROM provider_batches WHERE provider_batch_id IS NOT NULL") == 1,
            "the first batch stored and submitted", first)
        first.send_signal(signal.SIGKILL)
        first.wait()
        [sent] = control(url)["submitted"]
        assert len(sent["custom_ids"]) == 12  # round 1 of all six debates
        polled = control(url)["batches"][0]["polls"]

        second = start(spec, db)
        wait_until(lambda: control(url)["batches"][0]["polls"] > polled,
                   "the restarted run polling the killed run's batch", second)
        assert len(control(url)["submitted"]) == 1  # it waits for the live batch
        control(url, "POST", "/release")
        code, out, err = finish(second)
        assert code == 0, (out, err)
        submitted = control(url)["submitted"]
    finally:
        stats = stop_server(server)

    ids = [cid for entry in submitted for cid in entry["custom_ids"]]
    assert len(ids) == len(set(ids)), "a request was submitted twice"
    assert [len(entry["custom_ids"]) for entry in submitted] == [12, 12, 6]
    assert stats["received"] == 0  # nothing went to the ordinary endpoint
    assert {e["status"] for e in rows(db, "SELECT status FROM episodes")} == {"done"}
    calls = rows(db, "SELECT * FROM model_calls")
    assert len(calls) == 30 and {c["attempt"] for c in calls} == {1}
    for c in calls:
        assert c["cost_usd"] == pytest.approx(
            (c["tokens_in"] * PRICE["input"] + c["tokens_out"] * PRICE["output"]) / 2 / 1e6)
    assert sorted(c["cache_key"] for c in calls) == sorted(ids)
    assert scalar(db, "SELECT replaced_usd FROM runs") == 0
    assert [b["status"] for b in rows(db, "SELECT status FROM provider_batches ORDER BY id")] == \
        ["ended"] * 3


async def test_a_live_batch_is_resumed_from_a_postgresql_store(pg_url):
    """The journal on PostgreSQL: a model stops with its batch held by the provider; the next
    one, on the same store, waits for that batch and sends nothing again."""
    import asyncio

    from test_batches import ask, batch_rows_of, config, crashed, until

    from oversight.models import Model
    from oversight.store import Store
    from oversight.testing.fakeserver import FakeServer

    store = Store(pg_url)
    try:
        async with FakeServer(batch_hold=True) as srv:
            first = Model("m", config(srv, "openai"), journal=store.batch_journal("r"))
            calls = [asyncio.create_task(first.complete(ask(i))) for i in range(3)]
            await until(lambda: [b["status"] for b in batch_rows_of(store)] == ["submitted"],
                        "a live batch")
            await crashed(first, calls)
            second = Model("m", config(srv, "openai"), journal=store.batch_journal("r"))
            srv.batch_hold = False
            replies = await asyncio.gather(*(second.complete(ask(i)) for i in range(3)))
            await second.aclose()
            assert len(srv.batches.submitted) == 1 and srv.stats["received"] == 0
        assert all(r.text.startswith("Answer: A") for r in replies)
        assert [b["status"] for b in batch_rows_of(store)] == ["ended"]
    finally:
        store.close()
