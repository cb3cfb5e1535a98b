"""Nothing aborts a batch and nothing is lost, over real HTTP (issue 8): the real openai and
anthropic SDKs against the fault-injecting FakeServer on 127.0.0.1, the real runner and store.

Random faults at 10–50% on both wire formats, on simultaneous debate turns (D1/D4); poisoned
replies (D2); huge replies (D14). What is asserted: the batch never crashes, every episode ends
done or failed with a reason, and every request the server received is a row in model_calls.
"""

from __future__ import annotations

import json

import pytest
from enginekit import boolq_spec, debate, direct, load, run_inproc
from enginekit import rows as q

from oversight.testing.fakeserver import FakeServer

RETRY = {"max_attempts": 3, "backoff_initial": 0.01, "backoff_max": 0.05}
KINDS = ["rate_limit", "rate_limit_date", "server_error", "unavailable", "overloaded", "reset",
         "malformed", "empty_choices", "no_usage", "timeout", "auth"]


def model_cfg(srv: FakeServer, provider: str, **kw) -> dict:
    return {"provider": provider,
            "model": "fake-model" if provider == "openai" else "claude-fake",
            "base_url": srv.openai_base_url if provider == "openai" else srv.anthropic_base_url,
            "retry": RETRY, "timeout": 1.0, "concurrency": 8, **kw}


def check_nothing_lost(db, loaded, received: int) -> dict[str, int]:
    eps = q(db, "SELECT * FROM episodes WHERE run_id = ?", loaded.run_id)
    assert len(eps) == len(loaded.plans)
    for e in eps:
        assert e["status"] in ("done", "failed"), (e["id"], e["status"], e["error"])
        assert e["lease_owner"] is None
        calls = q(db, "SELECT * FROM model_calls WHERE episode_id = ?", e["id"])
        assert e["n_calls"] == sum(not c["cache_hit"] for c in calls), e["id"]
        if e["status"] == "failed":
            assert e["error"] and "Cancelled" not in e["error"], e["error"]
        else:
            assert q(db, "SELECT count(*) AS n FROM decisions WHERE episode_id = ?",
                     e["id"])[0]["n"] == 1
    real = q(db, "SELECT count(*) AS n FROM model_calls WHERE cache_hit = 0")[0]["n"]
    assert real == received  # every request that reached the server left a row
    return {s: sum(e["status"] == s for e in eps) for s in ("done", "failed")}


@pytest.mark.slow
@pytest.mark.parametrize("provider", ["openai", "anthropic"])
@pytest.mark.parametrize("rate", [0.1, 0.3, 0.5])
async def test_fault_runs_never_crash_and_lose_nothing(tmp_path, provider, rate):
    async with FakeServer(latency=0.02, fault_rate=rate, fault_kinds=KINDS,
                          seed=int(rate * 100)) as srv:
        spec = boolq_spec(tmp_path / "f.toml", name="f", limit=4, concurrency=8,
                          models={"m": model_cfg(srv, provider)},
                          protocols=[direct(), debate(rounds=2)])
        db = tmp_path / "s.db"
        loaded, summary = await run_inproc(spec, db, use_cache=False)
        counts = check_nothing_lost(db, loaded, srv.stats["received"])
        assert counts["done"] + counts["failed"] == len(loaded.plans) == 12
        assert summary.status in ("finished", "incomplete")
        # A second run with --retry-failed and no faults finishes everything.
        srv.fault_rate = 0.0
        srv.clear()
        _, summary = await run_inproc(spec, db, retry_failed=True, use_cache=False)
        assert summary.status == "finished"
        assert check_nothing_lost(db, loaded, q(db, "SELECT count(*) AS n FROM model_calls "
                                                 "WHERE cache_hit = 0")[0]["n"])["done"] == 12


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_simultaneous_turn_failing_while_sibling_is_in_flight(tmp_path, provider):
    """D1 over HTTP: debater_b's request fails at once (401) while debater_a's is held by the
    server for a while. Each debate fails with the 401, debater_a's reply arrives and is
    stored, and the judge is never asked."""
    def faults(index, req):
        text = str(req)
        if "Debater B" in text:
            return {"kind": "auth"}
        if "Debater A" in text:
            return {"kind": "slow", "delay": 0.5}
        return None

    async with FakeServer(faults=faults) as srv:
        spec = boolq_spec(tmp_path / "d.toml", name="d", limit=3,
                          models={"m": model_cfg(srv, provider)}, protocols=[debate()])
        db = tmp_path / "s.db"
        loaded, summary = await run_inproc(spec, db, use_cache=False)
        assert summary.counts == {"failed": 6}
        check_nothing_lost(db, loaded, srv.stats["received"])
        assert srv.stats["received"] == 12  # a and b in each of six debates, no judge
    for e in q(db, "SELECT * FROM episodes"):
        assert "HTTP 401" in e["error"], e["error"]
        [a] = q(db, "SELECT * FROM model_calls WHERE episode_id = ? AND role = 'debater_a'", e["id"])
        assert a["error"] is None and a["text"] and a["tokens_out"]


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_poisoned_reply_is_stored_and_the_batch_goes_on(tmp_path, provider):
    """D2: one reply in 30 carries a lone surrogate (legal in JSON, refused by SQLite's UTF-8
    encoder): it is stored escaped, and the other 29 are stored too."""
    async with FakeServer() as srv:
        spec = boolq_spec(tmp_path / "p.toml", name="p", limit=30,
                          models={"m": model_cfg(srv, provider)}, protocols=[direct()])
        loaded = load(spec)
        srv.rules = [(loaded.items[7].question, "Answer: A \ud800\nConfidence: 60%")]
        db = tmp_path / "s.db"
        _, summary = await run_inproc(spec, db)
        assert summary.counts == {"done": 30}
        check_nothing_lost(db, loaded, srv.stats["received"])
    key = loaded.items[7].key
    [msg] = q(db, """SELECT m.content FROM messages m JOIN episodes e ON e.id = m.episode_id
                     WHERE e.item_id = ?""", key)
    assert msg["content"] == "Answer: A \\ud800\nConfidence: 60%"


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_huge_usage_counts_are_unknown_not_a_dead_writer(tmp_path, provider):
    """D2: a usage count of 2**64 cannot be an SQLite INTEGER: it is recorded as unknown."""
    async with FakeServer() as srv:
        spec = boolq_spec(tmp_path / "u.toml", name="u", limit=5,
                          models={"m": model_cfg(srv, provider)}, protocols=[direct()])
        loaded = load(spec)
        body = ({"id": "x", "object": "chat.completion", "model": "fake-model",
                 "choices": [{"index": 0, "finish_reason": "stop",
                              "message": {"role": "assistant", "content": "Answer: A"}}],
                 "usage": {"prompt_tokens": 2 ** 64, "completion_tokens": 3}}
                if provider == "openai" else
                {"id": "x", "type": "message", "role": "assistant", "model": "claude-fake",
                 "content": [{"type": "text", "text": "Answer: A"}], "stop_reason": "end_turn",
                 "usage": {"input_tokens": 2 ** 64, "output_tokens": 3}})
        srv.faults = [None, {"kind": "malformed", "body": json.dumps(body)}]
        db = tmp_path / "s.db"
        _, summary = await run_inproc(spec, db)
        assert summary.counts == {"done": 5}
        check_nothing_lost(db, loaded, srv.stats["received"])
    assert q(db, "SELECT count(*) AS n FROM model_calls WHERE tokens_in IS NULL")[0]["n"] == 1


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_huge_reply_is_stored_once_cut_and_says_so(tmp_path, provider):
    """D14: a 2 MB reply to max_tokens = 100 is kept as its head, with its length recorded."""
    async with FakeServer() as srv:
        spec = boolq_spec(tmp_path / "h.toml", name="h", limit=3,
                          models={"m": model_cfg(srv, provider, max_reply_chars=5000)},
                          protocols=[direct()])
        loaded = load(spec)
        srv.faults = [{"kind": "huge", "chars": 2_000_000}]
        db = tmp_path / "s.db"
        await run_inproc(spec, db)
        check_nothing_lost(db, loaded, srv.stats["received"])
    cut = q(db, "SELECT * FROM model_calls WHERE reply_chars IS NOT NULL")
    assert len(cut) == 1 and cut[0]["reply_chars"] >= 2_000_000
    assert len(cut[0]["text"]) == 5000
    assert len(q(db, "SELECT response FROM model_calls WHERE id = ?", cut[0]["id"])[0]["response"]) < 50_000
    assert max(len(m["content"]) for m in q(db, "SELECT content FROM messages")) <= 5000
    assert (tmp_path / "s.db").stat().st_size < 3_000_000
