"""A batch whose memory does not grow with the run (issue 11, part 4; bench/memory.py measures
it): episodes and items are written a page at a time, episodes run in a fixed number of lanes
(no waiting task per episode), equal plan settings are shared, the cache's key set is compact.
These tests pin the behaviour that must survive that: every episode created and run exactly
once, within the concurrency, resumable. No timings here."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from enginekit import debate, direct, mock, rows, run, scalar, write_spec

from oversight.api.plugins import load_all
from oversight.batch import runner
from oversight.batch.cache import StoreCache
from oversight.batch.spec import load_spec
from oversight.models import Model, ModelConfig, ModelRequest, ModelResponse
from oversight.models import mock as mock_module
from oversight.store import Store


def items(tmp_path: Path, n: int) -> str:
    path = tmp_path / "items.jsonl"
    with open(path, "w") as fh:
        for i in range(n):
            fh.write(json.dumps({"id": f"q{i}", "question": f"Is {i} even?", "choices": ["Yes", "No"],
                                 "answer_index": i % 2, "context": f"{i} is a number."}) + "\n")
    return str(path)


def test_pages_create_and_run_every_episode_exactly_once(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "ROWS_PER_INSERT", 7)  # many pages of episodes and items
    spec = write_spec(tmp_path / "s.toml", datasets=[items(tmp_path, 23)], concurrency=3,
                      models={"m": mock(delay=0.001)}, protocols=[direct(), debate()])
    res = run(spec, tmp_path / "db.sqlite")
    assert res.summary.counts == {"done": 23 + 46}
    assert scalar(tmp_path / "db.sqlite", "SELECT count(*) FROM items") == 23
    keys = rows(tmp_path / "db.sqlite", "SELECT key, count(*) AS n, min(status) AS s FROM episodes GROUP BY key")
    assert len(keys) == 69 and {(r["n"], r["s"]) for r in keys} == {(1, "done")}
    # every episode's calls are its own: one judge call (direct), three calls (1-round debate)
    per = rows(tmp_path / "db.sqlite", "SELECT e.protocol, count(c.id) AS n FROM episodes e "
               "JOIN model_calls c ON c.episode_id = e.id GROUP BY e.id")
    assert {(r["protocol"], r["n"]) for r in per} == {("direct", 1), ("debate", 3)}
    assert res.total_calls() == 23 + 46 * 3


def test_lanes_keep_to_the_concurrency_and_resume_skips_what_is_done(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "ROWS_PER_INSERT", 5)
    spec = write_spec(tmp_path / "s.toml", datasets=[items(tmp_path, 30)], concurrency=4,
                      models={"m": mock(delay=0.005)}, protocols=[direct()])
    registry, prompts = load_all()
    loaded = load_spec(spec, registry, prompts=prompts)
    in_flight = peak = 0
    model = Model("m", loaded.models["m"])
    complete = model.provider.complete

    async def counted(request):
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            return await complete(request)
        finally:
            in_flight -= 1

    model.provider.complete = counted
    store = Store(tmp_path / "db.sqlite")
    try:
        first = asyncio.run(runner.run_batch(loaded, store, prompts, models={"m": model}))
        assert first.counts == {"done": 30} and 1 < peak <= 4
        again = asyncio.run(runner.run_batch(loaded, store, prompts, models={"m": Model("m", loaded.models["m"])}))
        assert again.skipped == 30 and again.counts == {}
    finally:
        store.close()
    assert scalar(tmp_path / "db.sqlite", "SELECT count(*) FROM episodes") == 30


def test_plans_share_equal_settings_but_keep_their_own_values(tmp_path):
    spec = write_spec(tmp_path / "s.toml", datasets=[items(tmp_path, 4)],
                      models={"m": mock(), "n": mock(script=["Answer: B"])},
                      protocols=[debate(), {**debate("n"), "label": "other"}])
    registry, prompts = load_all()
    plans = load_spec(spec, registry, prompts=prompts).plans
    assert len(plans) == 16 and len({p.key for p in plans}) == 16
    by_entry = {e: [p for p in plans if p.entry == e] for e in (0, 1)}
    assert all(p.roles == {"debater_a": "m", "debater_b": "m", "judge": "m"} for p in by_entry[0])
    assert all(p.roles == {"debater_a": "n", "debater_b": "n", "judge": "n"} for p in by_entry[1])
    assert len({id(p.roles) for p in plans}) == 2  # one map per entry, not one per episode
    for p in plans:  # each plan's assignment is still its own item's
        assert p.assignment.answers["debater_a"] != p.assignment.answers["debater_b"]
        assert p.assignment.label in ("a_correct", "b_correct")


def test_a_running_episode_gets_its_own_dispositions_not_the_shared_map(tmp_path, monkeypatch):
    """Plans share equal disposition maps; protocol code that changes its episode's must not
    change another episode's."""
    seen = []

    class Recording(runner.Episode):
        def __init__(self, *args, dispositions, **kw):
            seen.append(dispositions)
            dispositions["judge"] = "sycophant"  # as a protocol might
            super().__init__(*args, dispositions=dispositions, **kw)

    monkeypatch.setattr(runner, "Episode", Recording)
    spec = write_spec(tmp_path / "s.toml", datasets=[items(tmp_path, 4)],
                      models={"m": mock()}, protocols=[direct()])
    res = run(spec, tmp_path / "db.sqlite")
    assert res.summary.counts == {"done": 4} and len(seen) == 4
    assert len({id(d) for d in seen}) == 4
    stored = rows(tmp_path / "db.sqlite", "SELECT dispositions FROM episodes")
    assert all("sycophant" not in r["dispositions"] for r in stored)


def test_the_cache_still_finds_a_key_it_stored_after_the_flush(tmp_path):
    store = Store(tmp_path / "db.sqlite")
    writer = store.writer()
    cfg = ModelConfig(provider="mock", model="x")
    request = ModelRequest(messages=(("user", "hi"),), max_tokens=5)
    cache = StoreCache(store, writer, ["x"])

    async def go():
        await cache.put("ab" * 32, cfg, request, ModelResponse(text="yes", model="x"))
        writer.flush()  # no longer pending in the writer: read from the store
        hit = await cache.get("ab" * 32)
        miss = await cache.get("cd" * 32)
        return hit, miss

    hit, miss = asyncio.run(go())
    store.close()
    assert hit is not None and hit.text == "yes" and miss is None
    # a second cache over the same store knows the key from the start
    again = StoreCache(Store(tmp_path / "db.sqlite"), None, ["x"])
    assert asyncio.run(again.get("ab" * 32)).text == "yes"


def test_the_mock_keeps_the_first_requests_and_counts_them_all(monkeypatch):
    monkeypatch.setattr(mock_module, "KEEP_CALLS", 3)
    provider = mock_module.MockProvider(ModelConfig(provider="mock", model="x"))
    for i in range(5):
        asyncio.run(provider.complete(ModelRequest(messages=(("user", str(i)),), max_tokens=5)))
    assert provider.n_calls == 5 and [r.messages[0][1] for r in provider.calls] == ["0", "1", "2"]


@pytest.mark.parametrize("n", [1, 2])
def test_a_lane_per_episode_at_most(tmp_path, n):
    """Fewer episodes than the concurrency: one lane each, all run."""
    spec = write_spec(tmp_path / "s.toml", datasets=[items(tmp_path, n)], concurrency=50,
                      models={"m": mock()}, protocols=[direct()])
    assert run(spec, tmp_path / "db.sqlite").summary.counts == {"done": n}
