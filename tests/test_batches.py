"""Durable provider batches (issue 11, part 3): `batch = true` on an openai or anthropic model.

The real openai and anthropic SDKs against the fake server's batch endpoints on 127.0.0.1,
the real runner and store. What is asserted: every episode's round-k calls share one batch;
batched calls are recorded like any call, at the batch price; expired, cancelled, failed and
partly failed batches fall back to the ordinary path and the run completes; a model that
stops with a batch in flight (or dies between storing a batch and sending it, or between
sending it and storing its id) is resumed by the next one without sending any request twice;
`--dry-run` shows the batch price and the saving. The kill -9 test of the real command is in
test_batches_kill.py.
"""

from __future__ import annotations

import asyncio

import pytest
from enginekit import boolq_spec, debate, direct, load, rows, run_inproc, write_spec
from typer.testing import CliRunner

from oversight.batch.estimate import estimate
from oversight.cli.app import app
from oversight.errors import SpecError
from oversight.models import Model, ModelConfig, ModelRequest
from oversight.models.pricing import batch_price, price_for
from oversight.store import Store
from oversight.testing.fakeserver import FakeServer

PROVIDERS = ("openai", "anthropic")
PRICE = {"input": 1.0, "output": 2.0}  # USD per million tokens; the batch price is half
RETRY = {"max_attempts": 3, "backoff_initial": 0.01, "backoff_max": 0.05}
SECRET = "sk-test-BATCHLEAK-0123456789abcdef"


def batch_model(srv: FakeServer, provider: str, **batch) -> dict:
    """A model config (spec dict) for `provider` on the fake server, in batch mode."""
    return {"provider": provider, "model": "fake-model",
            "base_url": srv.openai_base_url if provider == "openai" else srv.anthropic_base_url,
            "price": PRICE, "retry": RETRY, "timeout": 5.0,
            "batch": {"linger": 2.0, "poll": 0.02, **batch}}


def batch_cost(tokens_in: int, tokens_out: int) -> float:
    return (tokens_in * PRICE["input"] + tokens_out * PRICE["output"]) / 2 / 1e6


def list_cost(tokens_in: int, tokens_out: int) -> float:
    return (tokens_in * PRICE["input"] + tokens_out * PRICE["output"]) / 1e6


def assert_sent_once(srv: FakeServer) -> None:
    ids = srv.batches.submitted_ids()
    assert len(ids) == len(set(ids)), "a request was sent in two batches"


# --- batching across episodes ---------------------------------------------------------------

@pytest.mark.parametrize("provider", PROVIDERS)
async def test_round_k_calls_of_every_episode_share_one_batch(tmp_path, provider):
    """Six debates (3 items x 2 assignments), two simultaneous rounds and a judge: three
    batches, one per protocol step (12 debater turns, 12, 6 verdicts), nothing sent to the
    ordinary endpoint, every call at the batch price, and the journal says where each went."""
    async with FakeServer() as srv:
        spec = boolq_spec(tmp_path / "d.toml", name="d", limit=3, concurrency=50,
                          models={"m": batch_model(srv, provider, max_requests=12)},
                          protocols=[debate(rounds=2)])
        db = tmp_path / "s.db"
        loaded, summary = await run_inproc(spec, db)
        assert summary.counts == {"done": 6}
        assert [len(b["custom_ids"]) for b in srv.batches.submitted] == [12, 12, 6]
        assert srv.stats["received"] == 0  # no ordinary call
        assert_sent_once(srv)
        for sent in srv.batches.submitted:  # each batch: one step of all six episodes
            marks = ",".join("?" * len(sent["custom_ids"]))
            assert len({r["episode_id"] for r in rows(
                db, f"SELECT episode_id FROM model_calls WHERE cache_key IN ({marks})",
                *sent["custom_ids"])}) == 6
    calls = rows(db, "SELECT * FROM model_calls")
    assert len(calls) == 30 and {c["attempt"] for c in calls} == {1}
    for c in calls:
        assert c["error"] is None
        assert c["cost_usd"] == pytest.approx(batch_cost(c["tokens_in"], c["tokens_out"]))
    batches = rows(db, "SELECT * FROM provider_batches ORDER BY id")
    assert [(b["status"], b["n_requests"], b["provider"]) for b in batches] == \
        [("ended", 12, provider), ("ended", 12, provider), ("ended", 6, provider)]
    assert [b["provider_batch_id"] for b in batches] == [b["batch_id"] for b in srv.batches.submitted]
    assert all(b["run_id"] == loaded.run_id and b["submitted_at"] for b in batches)
    requests = rows(db, "SELECT * FROM batch_requests")
    assert {r["status"] for r in requests} == {"succeeded"}
    assert {r["cache_key"] for r in requests} == {c["cache_key"] for c in calls}


# --- faults: fall back to the ordinary path ---------------------------------------------------

@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("fault, answered", [
    ({"kind": "expired", "done": 2}, 2), ({"kind": "cancelled", "done": 1}, 1),
    ("partial", 3), ("failed", 0)])
async def test_batch_faults_fall_back_to_the_ordinary_path(tmp_path, provider, fault, answered):
    """A batch that expired, was cancelled or failed, or answered some requests with a 500:
    the answered ones are kept at the batch price; each other one is recorded as a failed
    attempt 1 (its batch error) and sent once through the ordinary endpoint (attempt 2, list
    price), and every episode finishes."""
    async with FakeServer(batch_faults=[fault]) as srv:
        spec = boolq_spec(tmp_path / "f.toml", name="f", limit=6, concurrency=50,
                          models={"m": batch_model(srv, provider, max_requests=6)},
                          protocols=[direct()])
        db = tmp_path / "s.db"
        _, summary = await run_inproc(spec, db)
        assert summary.counts == {"done": 6}
        assert srv.stats["received"] == 6 - answered  # the rest, one ordinary call each
        assert_sent_once(srv)
    firsts = rows(db, "SELECT * FROM model_calls WHERE attempt = 1")
    seconds = rows(db, "SELECT * FROM model_calls WHERE attempt = 2")
    assert len(firsts) == 6 and len(seconds) == 6 - answered
    kind = {"expired": "batch_expired", "cancelled": "batch_cancelled", "partial": "server",
            "failed": "batch_failed" if provider == "openai" else "server"}
    name = fault if isinstance(fault, str) else fault["kind"]
    assert sorted(c["error_kind"] or "" for c in firsts) == sorted([""] * answered +
                                                                  [kind[name]] * (6 - answered))
    for c in firsts:
        if c["error_kind"] is None:
            assert c["cost_usd"] == pytest.approx(batch_cost(c["tokens_in"], c["tokens_out"]))
        else:
            assert c["cost_usd"] is None and c["text"] is None
    for c in seconds:
        assert c["error"] is None
        assert c["cost_usd"] == pytest.approx(list_cost(c["tokens_in"], c["tokens_out"]))
    [batch] = rows(db, "SELECT * FROM provider_batches")
    assert batch["status"] == {"expired": "expired", "cancelled": "cancelled"}.get(
        name, "failed" if name == "failed" and provider == "openai" else "ended")


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_request_the_batch_refused_fails_like_an_ordinary_400(tmp_path, provider):
    """A batched request answered with a 400 is not retried anywhere: its episode fails with
    the server's message, and nothing is sent to the ordinary endpoint."""
    async with FakeServer(batch_faults=[{"kind": "partial", "fail": [0], "status": 400,
                                         "message": "bad request in batch"}]) as srv:
        spec = boolq_spec(tmp_path / "b.toml", name="b", limit=3, concurrency=50,
                          models={"m": batch_model(srv, provider, max_requests=3)},
                          protocols=[direct()])
        db = tmp_path / "s.db"
        _, summary = await run_inproc(spec, db)
        assert summary.counts == {"done": 2, "failed": 1}
        assert srv.stats["received"] == 0
    [failed] = rows(db, "SELECT * FROM episodes WHERE status = 'failed'")
    assert "HTTP 400" in failed["error"] and "bad request in batch" in failed["error"]


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_batch_overdue_is_cancelled_and_its_requests_sent_the_ordinary_way(tmp_path, provider):
    """A batch the provider does not finish within max_seconds is cancelled (the client asks
    the provider to), and its requests go through the ordinary endpoint."""
    async with FakeServer(batch_faults=[{"kind": "slow", "polls": 10**9}]) as srv:
        spec = boolq_spec(tmp_path / "o.toml", name="o", limit=2, concurrency=50,
                          models={"m": batch_model(srv, provider, max_requests=2,
                                                   max_seconds=0.2)},
                          protocols=[direct()])
        db = tmp_path / "s.db"
        _, summary = await run_inproc(spec, db)
        assert summary.counts == {"done": 2}
        [batch] = srv.batches.batches.values()
        assert batch.cancel_at is not None and batch.outcome == "cancelled"
        assert srv.stats["received"] == 2
    assert [r["status"] for r in rows(db, "SELECT status FROM provider_batches")] == ["cancelled"]


# --- restarts: nothing sent twice -------------------------------------------------------------

def config(srv: FakeServer, provider: str, **batch) -> ModelConfig:
    return ModelConfig(**batch_model(srv, provider, linger=0.05, **batch))


def ask(i: int) -> ModelRequest:
    return ModelRequest(messages=(("system", "Be brief."), ("user", f"Question number {i}?")),
                        max_tokens=8)


async def until(predicate, what: str) -> None:
    """Wait (polling, no deadline of its own: pytest's timeout is the backstop) for a state."""
    for _ in range(20_000):
        if await asyncio.to_thread(predicate):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never saw: {what}")


class _Crash(BaseException):
    """The process dying at a chosen point (raised through everything, like kill -9)."""


async def crashed(model: Model, calls: list[asyncio.Task]) -> None:
    """Stop what was left running, as a dead process would leave it."""
    for task in calls:
        task.cancel()
    await asyncio.gather(*calls, return_exceptions=True)
    await model.aclose()


def batch_rows(db) -> list[dict]:
    return rows(db, "SELECT * FROM provider_batches ORDER BY id")


def batch_rows_of(store: Store) -> list[dict]:
    """provider_batches through the store's engine (any database)."""
    from sqlalchemy import select

    from oversight.store.tables import provider_batches
    with store.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(
            select(provider_batches).order_by(provider_batches.c.id))]


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_restarted_model_waits_for_the_live_batch_instead_of_sending_again(tmp_path, provider):
    """The first model sends a batch and stops while the provider holds it; the second, on
    the same store, sends nothing for those requests, polls the stored batch, and answers
    from it once the provider finishes it (at the batch price)."""
    db = tmp_path / "s.db"
    store = Store(db)
    async with FakeServer(batch_hold=True) as srv:
        first = Model("m", config(srv, provider), journal=store.batch_journal("r"))
        calls = [asyncio.create_task(first.complete(ask(i))) for i in range(4)]
        await until(lambda: [b["status"] for b in batch_rows(db)] == ["submitted"], "a live batch")
        await crashed(first, calls)

        second = Model("m", config(srv, provider), journal=store.batch_journal("r"))
        records = []
        pending = [asyncio.create_task(second.complete(ask(i), sink=records.append))
                   for i in (3, 2, 1, 0)]
        await until(lambda: srv.batches.batches[srv.batches.submitted[0]["batch_id"]].polls > 1,
                    "the second model polling the first's batch")
        srv.batch_hold = False
        replies = await asyncio.gather(*pending)
        await second.aclose()
        assert [r.text for r in replies] == ["Answer: A\nConfidence: 80%"] * 4
        assert len(srv.batches.submitted) == 1 and srv.stats["received"] == 0
        assert_sent_once(srv)
    assert [r.attempt for r in records] == [1] * 4
    for r in records:
        assert r.cost_usd == pytest.approx(batch_cost(r.response.tokens_in, r.response.tokens_out))
    assert [b["status"] for b in batch_rows(db)] == ["ended"]
    store.close()


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_stored_results_answer_a_later_model_without_any_request(tmp_path, provider):
    """Results stored by a finished batch answer the same requests later in the same run (a
    restart whose response cache never got them): no batch and no ordinary call is sent."""
    db = tmp_path / "s.db"
    store = Store(db)
    async with FakeServer() as srv:
        first = Model("m", config(srv, provider), journal=store.batch_journal("r"))
        await asyncio.gather(*(first.complete(ask(i)) for i in range(3)))
        await first.aclose()
        second = Model("m", config(srv, provider), journal=store.batch_journal("r"))
        records = []
        replies = await asyncio.gather(*(second.complete(ask(i), sink=records.append)
                                         for i in range(3)))
        await second.aclose()
        assert len(srv.batches.submitted) == 1 and srv.stats["received"] == 0
        # Another run without a response cache (--no-cache) asks afresh: stored results
        # resume their own run only.
        other = Model("m", config(srv, provider), journal=store.batch_journal("another run"))
        await asyncio.gather(*(other.complete(ask(i)) for i in range(3)))
        await other.aclose()
        assert len(srv.batches.submitted) == 2
    assert all(r.text.startswith("Answer: A") for r in replies)
    assert all(r.cost_usd is not None and r.error is None for r in records)
    store.close()


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_died_after_storing_a_batch_before_sending_it(tmp_path, provider, monkeypatch):
    """The process dies after the batch's rows were committed and before the provider heard
    of it: the next model finds it was never sent (OpenAI: no batch carries its token;
    Anthropic: no id was stored), marks it unsubmitted and sends its requests, once."""
    db = tmp_path / "s.db"
    store = Store(db)
    async with FakeServer() as srv:
        first = Model("m", config(srv, provider), journal=store.batch_journal("r"))
        api = first._batcher.api

        async def die(items, token):
            raise _Crash()

        monkeypatch.setattr(api, "submit", die)
        calls = [asyncio.create_task(first.complete(ask(i))) for i in range(3)]
        await until(lambda: [b["status"] for b in batch_rows(db)] == ["stored"], "a stored batch")
        await crashed(first, calls)
        assert srv.batches.submitted == []

        second = Model("m", config(srv, provider), journal=store.batch_journal("r"))
        await asyncio.gather(*(second.complete(ask(i)) for i in range(3)))
        await second.aclose()
        assert len(srv.batches.submitted) == 1 and len(srv.batches.submitted_ids()) == 3
        assert srv.stats["received"] == 0
    assert [b["status"] for b in batch_rows(db)] == ["unsubmitted", "ended"]
    store.close()


async def test_died_after_sending_before_storing_the_batch_id_is_found_by_its_metadata(tmp_path):
    """OpenAI: the provider accepted the batch but the process died before its id was
    stored. The next model finds the batch by the token in its metadata, stores its id and
    waits for it: nothing is sent twice."""
    db = tmp_path / "s.db"
    store = Store(db)

    class DiesAfterSending(type(store.batch_journal())):
        def submitted(self, *args, **kwargs):
            raise _Crash()

    async with FakeServer(batch_hold=True) as srv:
        first = Model("m", config(srv, "openai"), journal=DiesAfterSending(store.engine, "r"))
        calls = [asyncio.create_task(first.complete(ask(i))) for i in range(3)]
        await until(lambda: len(srv.batches.submitted) == 1, "the batch at the provider")
        await until(lambda: not first._batcher._tasks, "the batch's task dead")
        await crashed(first, calls)
        [row] = batch_rows(db)
        assert row["status"] == "stored" and row["provider_batch_id"] is None
        assert srv.batches.submitted[0]["metadata"] == {"oversight_batch": row["token"]}

        srv.batch_hold = False
        second = Model("m", config(srv, "openai"), journal=store.batch_journal("r"))
        await asyncio.gather(*(second.complete(ask(i)) for i in range(3)))
        await second.aclose()
        assert len(srv.batches.submitted) == 1 and srv.stats["received"] == 0
    [row] = batch_rows(db)
    assert row["status"] == "ended" and row["provider_batch_id"] == srv.batches.submitted[0]["batch_id"]
    store.close()


async def test_one_request_asked_twice_is_sent_once(tmp_path):
    """Two callers with the same request and sample index share one batched request."""
    async with FakeServer() as srv:
        model = Model("m", config(srv, "openai"))
        a, b = await asyncio.gather(model.complete(ask(1)), model.complete(ask(1)))
        await model.aclose()
        assert a.text == b.text and srv.batches.submitted_ids() and len(srv.batches.submitted_ids()) == 1


# --- prices, the estimate, the spec, secrets --------------------------------------------------

def test_batch_prices_default_to_the_providers_half_and_can_be_set():
    for provider, model in (("openai", "gpt-4o-mini"), ("anthropic", "claude-haiku-4-5")):
        cfg = ModelConfig(provider=provider, model=model, batch=True)
        listed, batched = price_for(cfg), batch_price(cfg)
        assert batched.input == pytest.approx(listed.input / 2)
        assert batched.output == pytest.approx(listed.output / 2)
        assert batched.cached_input == pytest.approx(listed.cached_input / 2)
    cfg = ModelConfig(provider="openai", model="x", base_url="http://127.0.0.1:1/v1", batch=True,
                      price={"input": 1.0, "output": 4.0, "batch_output": 1.0})
    assert (batch_price(cfg).input, batch_price(cfg).output) == (0.5, 1.0)
    assert batch_price(ModelConfig(provider="litellm", model="x", price=PRICE)) is None
    assert ModelConfig(provider="openai", model="x", batch=False).batch is None


def test_dry_run_shows_the_batch_price_and_the_saving(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "dry-run-only")
    monkeypatch.delenv("OVERSIGHT_DB", raising=False)
    spec = write_spec(tmp_path / "dry.toml", name="dry", datasets=["boolq"], limit=4,
                      models={"cheap": {"provider": "openai", "model": "gpt-4o-mini", "batch": True}},
                      protocols=[direct("cheap")])
    loaded = load(spec)
    from oversight.api.plugins import load_all
    _, prompts = load_all()
    cheap = estimate(loaded.plans, 0, loaded.models, prompts).per_model["cheap"]
    listed = price_for(loaded.models["cheap"])
    standard = [(i * listed.input + o * listed.output) / 1e6
                for i, o in zip(cheap.tokens_in, cheap.tokens_out, strict=True)]
    assert cheap.batched and cheap.calls == 4
    assert list(cheap.standard_cost()) == pytest.approx(standard)
    assert list(cheap.cost()) == pytest.approx([c / 2 for c in standard])
    assert list(cheap.saving()) == pytest.approx([c / 2 for c in standard])
    result = CliRunner().invoke(app, ["run", str(spec), "--dry-run", "--db", str(tmp_path / "no.db")])
    assert result.exit_code == 0, result.output
    assert "batch (saves" in result.output and "provider batches (batch = true) save $" in result.output
    assert not (tmp_path / "no.db").exists()


def test_batch_is_refused_for_a_provider_without_a_batch_api(tmp_path):
    spec = write_spec(tmp_path / "bad.toml", name="bad", datasets=["boolq"], limit=1,
                      models={"m": {"provider": "mock", "batch": True}}, protocols=[direct()])
    with pytest.raises(SpecError) as info:
        load(spec)
    assert "models.m.batch" in str(info.value) and "openai and anthropic" in str(info.value)
    spec.write_text(spec.read_text().replace('"batch" = true', '"batch" = {"linger" = -1}'))
    with pytest.raises(SpecError):
        load(spec)


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_no_key_reaches_the_store(tmp_path, provider, monkeypatch):
    """The key the SDK sends with every batch call is nowhere in the store."""
    monkeypatch.setenv("OVERSIGHT_TEST_BATCH_KEY", SECRET)
    async with FakeServer(batch_faults=["partial"]) as srv:
        spec = boolq_spec(tmp_path / "k.toml", name="k", limit=2, concurrency=50,
                          models={"m": {**batch_model(srv, provider, max_requests=2),
                                        "api_key_env": "OVERSIGHT_TEST_BATCH_KEY"}},
                          protocols=[direct()])
        db = tmp_path / "s.db"
        _, summary = await run_inproc(spec, db)
        assert summary.counts == {"done": 2}
    for path in tmp_path.glob("s.db*"):
        assert SECRET.encode() not in path.read_bytes()


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_server_without_batch_endpoints_makes_calls_the_ordinary_way(provider):
    """A compatible server with no batch API (404): the batch cannot be submitted, so its
    request is recorded as a failed attempt 1 and sent the ordinary way."""
    async with FakeServer() as srv:
        routes = srv._dispatch

        async def no_batches(method, path, *rest):
            if "batches" in path or "files" in path:
                path = "/none" + path
            return await routes(method, path, *rest)

        srv._dispatch = no_batches
        model = Model("m", config(srv, provider))
        records = []
        reply = await model.complete(ask(1), sink=records.append)
        await model.aclose()
    assert reply.text.startswith("Answer: A")
    assert [(r.attempt, r.error_kind) for r in records] == [(1, "batch_failed"), (2, None)]
    assert "HTTP 404" in records[0].error


# --- the fake server's batch endpoints ----------------------------------------------------------

async def test_fake_batch_endpoints_through_both_sdks():
    """Upload, create, poll (a slow batch), list, results and cancel, as the SDKs call them;
    every submitted custom id is recorded."""
    import json

    import anthropic
    import openai

    line = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "m", "max_tokens": 5,
                     "messages": [{"role": "user", "content": "The capital?"}]}}
    async with FakeServer(batch_faults=[{"kind": "slow", "polls": 3}],
                          rules=[("capital", "Paris")]) as srv:
        oa = openai.AsyncOpenAI(base_url=srv.openai_base_url, api_key="x", max_retries=0)
        file = await oa.files.create(file=("in.jsonl", (json.dumps(line) + "\n").encode(),
                                           "application/jsonl"), purpose="batch")
        batch = await oa.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions",
                                        completion_window="24h", metadata={"k": "v"})
        statuses = [(await oa.batches.retrieve(batch.id)).status for _ in range(3)]
        assert statuses == ["in_progress", "in_progress", "completed"]
        assert [b.id async for b in oa.batches.list()] == [batch.id]
        done = await oa.batches.retrieve(batch.id)
        assert done.metadata == {"k": "v"} and done.request_counts.completed == 1
        out = json.loads((await oa.files.content(done.output_file_id)).content)
        assert out["custom_id"] == "a"
        assert out["response"]["body"]["choices"][0]["message"]["content"] == "Paris"
        await oa.close()

        an = anthropic.AsyncAnthropic(base_url=srv.anthropic_base_url, api_key="x", max_retries=0)
        mb = await an.messages.batches.create(requests=[{"custom_id": "q", "params": {
            "model": "c", "max_tokens": 5, "messages": [{"role": "user", "content": "The capital?"}]}}])
        assert (await an.messages.batches.cancel(mb.id)).processing_status == "canceling"
        ended = await an.messages.batches.retrieve(mb.id)
        assert ended.processing_status == "ended" and ended.request_counts.canceled == 1
        assert [r.result.type async for r in await an.messages.batches.results(mb.id)] == ["canceled"]
        assert [b.id async for b in an.messages.batches.list()] == [mb.id]
        await an.close()
        assert srv.batches.submitted_ids() == ["a", "q"]
