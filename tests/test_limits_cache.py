"""Limits, response cache, cost and dry run, end to end: real HTTP through the real openai SDK
against the FakeServer on 127.0.0.1, the real runner, the real SQLite store and the real CLI
(typer's CliRunner, in process).

What is asserted is what a researcher relies on when paying for calls: a concurrency cap is
never exceeded (and is used), a rate limit spaces requests at least as its definition says,
a rerun of identical requests costs nothing and says so, every stored dollar follows from the
stored tokens and the price, an unpriced call is NULL (never $0), and a dry run calls nothing
and writes nothing.

No wall-clock speed thresholds: the only time comparisons are lower bounds that follow from a
rate limit's own definition (aiolimiter's leaky bucket). Waits that could hang are bounded by
DEADLINE, which only turns a hang into a failure.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import textwrap
import time
from collections import defaultdict
from pathlib import Path

import pytest
from enginekit import boolq_spec, debate, direct, load, run_inproc
from enginekit import rows as q  # q(db, sql, *args): a query's rows as dicts
from typer.testing import CliRunner

from oversight.cli import app
from oversight.models import Model, ModelConfig, ModelRequest
from oversight.models.base import Price, RetryPolicy
from oversight.models.model import _estimate_tokens
from oversight.models.pricing import price_for, price_table
from oversight.testing.fakeserver import FakeServer

RETRY = {"max_attempts": 2, "backoff_initial": 0.01, "backoff_max": 0.05}
DEADLINE = 60.0  # seconds: only a bound on waits that would otherwise hang a broken build
PRICE = {"input": 2.0, "output": 4.0}  # USD per million tokens


# --- helpers -------------------------------------------------------------------------------

def model_cfg(srv: FakeServer, **kw) -> dict:
    """An OpenAI-compatible model on the fake server (unpriced unless `price` is given)."""
    return {"provider": "openai", "model": "fake-model", "base_url": srv.openai_base_url,
            "retry": RETRY, "timeout": 10.0, **kw}


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args],
                              env={"COLUMNS": "200", "OVERSIGHT_DB": None})


def run_calls(db: Path, run_id: str) -> list[dict]:
    return q(db, """SELECT c.* FROM model_calls c JOIN episodes e ON e.id = c.episode_id
                    WHERE e.run_id = ? ORDER BY c.id""", run_id)


def run_episodes(db: Path, run_id: str) -> list[dict]:
    return q(db, "SELECT * FROM episodes WHERE run_id = ? ORDER BY id", run_id)


@pytest.fixture
def server():
    srv = FakeServer().start_in_thread()
    try:
        yield srv
    finally:
        srv.stop()


# --- 1. concurrency caps: never exceeded, and used ------------------------------------------

async def test_model_concurrency_cap_is_reached_and_never_exceeded(tmp_path):
    async with FakeServer(latency=0.2) as srv:
        spec = boolq_spec(tmp_path / "conc.toml", name="conc", limit=12, concurrency=12,
                          models={"m": model_cfg(srv, concurrency=3)}, protocols=[direct("m")])
        loaded, summary = await run_inproc(spec, tmp_path / "store.db")
        stats = dict(srv.stats)
    assert summary.status == "finished" and len(loaded.plans) == 12
    assert stats["received"] == 12  # one request per episode: all went to the server
    assert stats["max_in_flight"] == 3, stats


async def test_endpoint_concurrency_caps_models_sharing_a_base_url(tmp_path):
    async with FakeServer(latency=0.2) as srv:
        # Each alias alone would allow 4 in flight (8 together); the endpoint allows 2.
        models = {"a": model_cfg(srv, model="fake-a", concurrency=4, endpoint_concurrency=2),
                  "b": model_cfg(srv, model="fake-b", concurrency=4, endpoint_concurrency=2)}
        spec = boolq_spec(tmp_path / "ep.toml", name="endpoint", limit=6, concurrency=12,
                          models=models, protocols=[direct("a"), direct("b")])
        loaded, summary = await run_inproc(spec, tmp_path / "store.db")
        stats = dict(srv.stats)
        sent = {r["json"]["model"] for r in srv.requests}
    assert summary.status == "finished" and len(loaded.plans) == 12
    assert stats["received"] == 12 and sent == {"fake-a", "fake-b"}
    assert stats["max_in_flight"] == 2, stats


def test_endpoint_cap_holds_in_a_second_event_loop(tmp_path, server):
    """Two batches one after the other in one process (a notebook, a script looping over
    specs), each in its own asyncio.run, against the same endpoint: the second must run
    under the same cap, not fail because the endpoint's slots belong to the first loop."""
    server.latency = 0.1
    models = {"m": model_cfg(server, concurrency=4, endpoint_concurrency=1)}
    for name in ("loop-one", "loop-two"):
        spec = boolq_spec(tmp_path / f"{name}.toml", name=name, limit=4, concurrency=4,
                          models=models, protocols=[direct("m")])
        server.clear()
        # No response cache: the second batch's identical requests must reach the server.
        loaded, summary = asyncio.run(run_inproc(spec, tmp_path / "store.db", use_cache=False))
        errors = [e["error"] for e in run_episodes(tmp_path / "store.db", loaded.run_id)
                  if e["error"]]
        assert summary.status == "finished", (name, errors)
        assert server.stats["received"] == 4 and server.stats["max_in_flight"] == 1, name


# --- 2. rate limits: spacing after the burst, from the server's arrival times ----------------
#
# aiolimiter's AsyncLimiter(max_rate, 60) is a leaky bucket of capacity max_rate draining at
# max_rate/60 a second: a burst of max_rate, then max_rate/60 a second. So by time t after
# the first acquisition, at most max_rate + (max_rate/60)·t units can have been acquired, and
# the m-th request (1-based, in arrival order) cannot reach the server before
# t0 + (m·size − max_rate)·60/max_rate, where t0 is any time before the first call started.
# (1 ms of slack covers float rounding only; the steps are 1.5 s.)

def _arrival_recorder():
    arrivals: list[float] = []

    def record(index, req):  # a FakeServer fault callable: called as each request arrives
        arrivals.append(time.monotonic())
        return None

    return arrivals, record


async def _fire(srv: FakeServer, requests: list[ModelRequest], **limits) -> float:
    cfg = ModelConfig(provider="openai", model="fake-model", base_url=srv.openai_base_url,
                      concurrency=len(requests), retry=RetryPolicy(max_attempts=1), **limits)
    model = Model("m", cfg)
    t0 = time.monotonic()
    try:
        await asyncio.gather(*(model.complete(r) for r in requests))
    finally:
        await model.aclose()
    return t0


@pytest.mark.slow
async def test_rpm_limit_spaces_requests_after_the_burst():
    rpm, n = 40, 42  # a burst of 40, then one every 1.5 s
    arrivals, record = _arrival_recorder()
    async with FakeServer(faults=record) as srv:
        requests = [ModelRequest(messages=(("user", f"question {i}"),), max_tokens=8)
                    for i in range(n)]
        t0 = await _fire(srv, requests, rpm=rpm)
    assert len(arrivals) == n
    for m, t in enumerate(sorted(arrivals), start=1):
        bound = max(0.0, (m - rpm) * 60 / rpm)
        assert t - t0 >= bound - 1e-3, (m, t - t0, bound)


@pytest.mark.slow
async def test_tpm_limit_spaces_requests_by_their_token_estimate():
    tpm, n, max_tokens = 6000, 42, 100
    # 200 characters -> 50 prompt tokens, + max_tokens = 150 tokens a request: a burst of
    # 40 requests, then one every 1.5 s. (With one unit a request there would be no wait.)
    requests = [ModelRequest(messages=(("user", f"{i:03d}" + "x" * 197),), max_tokens=max_tokens)
                for i in range(n)]
    size = 200 // 4 + max_tokens
    assert {_estimate_tokens(r) for r in requests} == {size}
    arrivals, record = _arrival_recorder()
    async with FakeServer(faults=record) as srv:
        t0 = await _fire(srv, requests, tpm=tpm)
    assert len(arrivals) == n
    for m, t in enumerate(sorted(arrivals), start=1):
        bound = max(0.0, (m * size - tpm) * 60 / tpm)
        assert t - t0 >= bound - 1e-3, (m, t - t0, bound)


# --- 3. the response cache -----------------------------------------------------------------

@pytest.fixture(scope="module")
def twice_protocols(tmp_path_factory):
    """A user protocol asking its judge the same thing twice (identical requests: the
    template shows no transcript), then for a verdict; and its template."""
    root = tmp_path_factory.mktemp("limits_cache_user")
    pdir, tdir = root / "protocols", root / "prompts"
    pdir.mkdir()
    (pdir / "lc_protocols.py").write_text(textwrap.dedent('''
        from oversight import Episode, Verdict, protocol

        @protocol(roles=("judge",))
        async def lc_ask_twice(ep: Episode) -> Verdict:
            """The same question twice, then a verdict."""
            judge = ep.agent("judge")
            await judge.speak()
            await judge.speak()
            return await judge.decide()
    '''), encoding="utf-8")
    (tdir / "lc_ask_twice").mkdir(parents=True)
    (tdir / "lc_ask_twice" / "judge.j2").write_text(textwrap.dedent('''
        {% extends "_base.j2" %}
        {% block system %}You answer questions.{% endblock %}
        {% block user %}
        Question: {{ question }}
        {% include "_choices.j2" %}
        {% include "_verdict_format.j2" %}
        {% endblock %}
    '''), encoding="utf-8")
    return pdir


async def test_identical_requests_in_a_new_run_are_all_cache_hits(
        tmp_path, twice_protocols):
    counter = iter(range(10_000))
    async with FakeServer(reply=lambda req: f"Answer: A\nConfidence: 80%\n(reply {next(counter)})") as srv:
        models = {"m": model_cfg(srv, temperature=0.7)}
        protocols = [{"name": "lc_ask_twice", "roles": {"judge": "m"}}]
        specs = {name: boolq_spec(tmp_path / f"{name}.toml", name=name, limit=2, models=models,
                                  protocols=protocols) for name in ("first", "second", "third")}
        db = tmp_path / "store.db"

        l1, s1 = await run_inproc(specs["first"], db, protocol_dirs=[twice_protocols])
        received = srv.stats["received"]
        first_requests = [r["json"] for r in srv.requests]
        l2, s2 = await run_inproc(specs["second"], db, protocol_dirs=[twice_protocols])
        after_second = srv.stats["received"]

    assert l1.run_id != l2.run_id  # a new run, not a resume
    assert s1.status == s2.status == "finished"
    # First run: two episodes, three calls each, all sent; the two speeches of an episode
    # are the same request (same messages, temperature 0.7), and both were sent.
    assert received == 6
    speeches = defaultdict(int)
    for r in first_requests:
        assert r["temperature"] == 0.7
        if not r.get("logprobs"):
            speeches[json.dumps(r["messages"], sort_keys=True)] += 1
    assert sorted(speeches.values()) == [2, 2]
    calls1 = run_calls(db, l1.run_id)
    assert len(calls1) == 6 and not any(c["cache_hit"] for c in calls1)
    assert all(c["cache_key"] for c in calls1)
    assert len({c["cache_key"] for c in calls1}) == 6  # repeated requests: distinct samples
    text_of = {c["cache_key"]: c["text"] for c in calls1}
    assert len(set(text_of.values())) == 6  # six different answers were stored

    # Second run: nothing sent; every call a hit answered with what its key stored.
    assert after_second == received
    calls2 = run_calls(db, l2.run_id)
    assert len(calls2) == 6
    for c in calls2:
        assert c["cache_hit"] == 1 and c["attempt"] == 0 and c["error"] is None, c["id"]
        assert c["cost_usd"] in (None, 0), c["id"]
        assert c["text"] == text_of[c["cache_key"]], c["id"]
    assert {c["cache_key"] for c in calls2} == set(text_of)
    by_episode = defaultdict(list)
    for c in calls2:
        if not json.loads(c["request"])["logprobs"]:  # the two speeches, not the verdict
            by_episode[c["episode_id"]].append(c["cache_key"])
    assert len(by_episode) == 2
    for keys in by_episode.values():  # both speeches hit, each its own sample's entry
        assert len(keys) == 2 and keys[0] != keys[1]
    for e in run_episodes(db, l2.run_id):
        assert e["status"] == "done" and e["cache_hits"] == 3 and e["n_calls"] == 0, e["id"]
        assert e["cost_usd"] in (None, 0), e["id"]
    assert s2.usage.cache_hits == 6 and s2.usage.calls == 0


@pytest.mark.parametrize("config, request_", [
    (ModelConfig(provider="openai", model="gpt-4o-mini"),
     ModelRequest(messages=(("user", "Is 2 even?"),))),
    (ModelConfig(provider="openai", model="m", base_url="http://127.0.0.1:9/v1",
                 options={"seed": 3, "reasoning_effort": "low", "timeout": 5}),
     ModelRequest(messages=(("system", "Be brief. ünïcödé \"quotes\" \\ \n"), ("user", "Q?")),
                  max_tokens=7, temperature=0.7, logprobs=True, top_logprobs=3, stop=("\n",))),
])
def test_cache_key_is_the_hash_of_the_whole_canonical_request(config, request_):
    """The key is assembled around the request's own encoding (encoded once per call); it must
    still be the hash of the whole canonical JSON, so caches written earlier keep matching."""
    import hashlib

    from oversight.models import cache_key

    for sample in (0, 3):
        canonical = {"provider": config.provider, "model": config.model, "base_url": config.base_url,
                     "request": request_.as_dict(), "options": config.output_options(), "sample": sample}
        text = json.dumps(canonical, sort_keys=True, separators=(",", ":"))
        assert cache_key(config, request_, sample) == hashlib.sha256(text.encode()).hexdigest()
    assert cache_key(config, request_, 0) != cache_key(config, request_, 1)


def test_no_cache_flag_sends_identical_requests_again(tmp_path, server, twice_protocols):
    models = {"m": model_cfg(server, temperature=0.7)}
    protocols = [{"name": "lc_ask_twice", "roles": {"judge": "m"}}]
    db = tmp_path / "store.db"
    first = boolq_spec(tmp_path / "first.toml", name="nc-first", limit=1, models=models,
                       protocols=protocols)
    again = boolq_spec(tmp_path / "again.toml", name="nc-again", limit=1, models=models,
                       protocols=protocols)
    r1 = cli("run", first, "--db", db, "--protocols", twice_protocols, "-q")
    assert r1.exit_code == 0, r1.output
    assert server.stats["received"] == 3
    r2 = cli("run", again, "--db", db, "--protocols", twice_protocols, "-q", "--no-cache")
    assert r2.exit_code == 0, r2.output
    assert server.stats["received"] == 6
    loaded = load(again, protocol_dirs=[twice_protocols])
    calls = run_calls(db, loaded.run_id)
    assert len(calls) == 3
    assert all(c["cache_hit"] == 0 and c["cache_key"] is None for c in calls)
    [e] = run_episodes(db, loaded.run_id)
    assert e["n_calls"] == 3 and e["cache_hits"] == 0


# --- 4. `oversight cache CALL_ID` -----------------------------------------------------------

def test_cache_command_explains_hits_no_cache_and_a_temperature_miss(tmp_path, server):
    db = tmp_path / "store.db"

    def run_spec(name: str, *flags: str, **model) -> int:
        spec = boolq_spec(tmp_path / f"{name}.toml", name=name, limit=1,
                          models={"m": model_cfg(server, **model)}, protocols=[direct("m")])
        result = cli("run", spec, "--db", db, "-q", *flags)
        assert result.exit_code == 0, result.output
        loaded = load(spec)
        [call] = run_calls(db, loaded.run_id)
        return call["id"]

    def explain(call_id: int) -> str:
        result = cli("cache", call_id, "--db", db)
        assert result.exit_code == 0, result.output
        return result.stdout

    cold = run_spec("cold", temperature=0.0)
    hit = run_spec("warm", temperature=0.0)
    uncached = run_spec("nocache", "--no-cache", temperature=0.0)
    hotter = run_spec("hotter", temperature=0.5)
    assert server.stats["received"] == 3  # cold, nocache and hotter; warm was a hit

    out = explain(hit)
    assert "served from the cache" in out and "missed" not in out, out
    out = explain(uncached)
    assert "did not use the cache" in out and "served from the cache" not in out, out
    out = explain(cold)
    assert "missed the cache" in out and "no earlier response" in out, out
    out = explain(hotter)
    assert "missed the cache" in out, out
    differences = [line.strip() for line in out.splitlines() if line.strip().startswith("- ")]
    # The only earlier entry is the cold call's: it differs in temperature alone.
    assert len(differences) == 1 and differences[0].startswith("- temperature"), out
    assert "0.5" in differences[0] and "0.0" in differences[0], out


# --- 5. cost ---------------------------------------------------------------------------------

async def test_stored_costs_follow_from_tokens_and_price_and_unpriced_is_null(tmp_path):
    async with FakeServer() as srv:
        models = {"p": model_cfg(srv, model="fake-priced", price=PRICE),
                  "u": model_cfg(srv, model="unpriced-model-x")}
        spec = boolq_spec(tmp_path / "cost.toml", name="cost", limit=1, models=models,
                          protocols=[debate("p"), direct("u")])
        db = tmp_path / "store.db"
        loaded, summary = await run_inproc(spec, db)
    assert summary.status == "finished"
    assert price_for(loaded.models["u"]) is None  # the premise: no price for this model
    eps = run_episodes(db, loaded.run_id)
    assert sorted(e["protocol"] for e in eps) == ["debate", "debate", "direct"]
    for e in eps:
        calls = q(db, "SELECT * FROM model_calls WHERE episode_id = ?", e["id"])
        assert calls and all(c["error"] is None and not c["cache_hit"] for c in calls)
        for c in calls:
            assert c["tokens_in"] and c["tokens_out"], c["id"]
        if e["protocol"] == "debate":
            assert len(calls) == 3
            for c in calls:
                assert not c["tokens_cached"]  # so the whole input is billed at `input`
                expected = (c["tokens_in"] * PRICE["input"] + c["tokens_out"] * PRICE["output"]) / 1e6
                assert c["cost_usd"] == pytest.approx(expected, rel=1e-9), c["id"]
            assert e["cost_usd"] == pytest.approx(sum(c["cost_usd"] for c in calls), rel=1e-9)
        else:
            assert [c["cost_usd"] for c in calls] == [None]  # unknown, never 0
            assert e["cost_usd"] is None


def test_price_for_resolves_dated_snapshots_and_litellm_names():
    table = price_table()["models"]

    def price(provider: str, model: str):
        return price_for(ModelConfig(provider=provider, model=model))

    mini, gpt4o = Price(**table["openai/gpt-4o-mini"]), Price(**table["openai/gpt-4o"])
    assert mini != gpt4o
    assert price("openai", "gpt-4o-mini-2024-07-18") == mini
    assert price("openai", "gpt-4o-2024-08-06") == gpt4o
    haiku = Price(**table["anthropic/claude-haiku-4-5"])
    assert price("anthropic", "claude-haiku-4-5-20251001") == haiku
    assert price("litellm", "anthropic/claude-haiku-4-5-20251001") == haiku
    assert price("litellm", "openai/gpt-4o-mini-2024-07-18") == mini
    assert price("openai", "unpriced-model-x") is None
    override = ModelConfig(provider="openai", model="gpt-4o", price=PRICE)
    assert price_for(override) == Price(**PRICE)


def test_dollar_budget_with_an_unpriced_model_is_a_spec_error(tmp_path, server):
    models = {"p": model_cfg(server, model="fake-priced", price=PRICE),
              "u": model_cfg(server, model="unpriced-model-x")}
    spec = boolq_spec(tmp_path / "budget.toml", name="budget", limit=1, models=models,
                      protocols=[direct("p"), direct("u")], budget={"usd": 1.0})
    db = tmp_path / "store.db"
    result = cli("run", spec, "--db", db, "-q")
    assert result.exit_code == 2, result.output
    assert "models.u.price" in result.stderr, result.stderr
    assert "Traceback" not in result.output
    assert server.stats["received"] == 0 and not db.exists()


# --- 6. dry run -----------------------------------------------------------------------------

def _cells(output: str, first: str) -> list[str]:
    """The cells of the table row whose first cell is `first`."""
    for line in output.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃|]", line) if c.strip()]
        if cells and cells[0] == first:
            return cells
    raise AssertionError(f"no row {first!r} in:\n{output}")


def _range(cell: str) -> tuple[float, float]:
    lo, hi = re.fullmatch(r"\$?([\d.,]+)–\$?([\d.,]+)", cell).groups()
    return float(lo.replace(",", "")), float(hi.replace(",", ""))


def _dry(spec: Path, db: Path) -> str:
    result = cli("run", spec, "--dry-run", "--db", db)
    assert result.exit_code == 0, result.output
    return result.stdout


def test_dry_run_calls_nothing_writes_nothing_and_counts_what_is_left(tmp_path, server):
    models = {"m": model_cfg(server, price=PRICE), "j": model_cfg(server, model="fake-j", price=PRICE)}
    spec = boolq_spec(tmp_path / "dry.toml", name="dry", limit=2, models=models,
                      protocols=[debate("m", rounds=2), direct("j")])
    db = tmp_path / "dry.db"

    out = _dry(spec, db)
    assert server.stats["received"] == 0
    assert not list(tmp_path.glob("dry.db*"))  # no store, no -wal, no -shm
    # debate: 2 items x 2 orders = 4 episodes of 2 rounds x 2 speeches + 1 verdict;
    # direct: 2 episodes of 1 call.
    assert "6 episodes planned, 0 already in the store, 6 to run" in out, out
    m, j = _cells(out, "m"), _cells(out, "j")
    assert m[1] == "20" and j[1] == "2", out
    for row in (m, j):
        lo, hi = _range(row[4])
        assert 0 < lo <= hi, row
        tin, tout = _range(row[2]), _range(row[3])
        assert 0 < tin[0] <= tin[1] and 0 < tout[0] <= tout[1], row
    total = re.search(r"total: \$([\d.]+)–\$([\d.]+)", out)
    assert total and 0 < float(total[1]) <= float(total[2]), out
    assert "unpriced" not in out

    # Run part of the spec (--limit 1: the same run, one item), then dry-run the whole.
    part = cli("run", spec, "--db", db, "--limit", "1", "-q")
    assert part.exit_code == 0, part.output
    received = server.stats["received"]
    assert received == 2 * 5 + 1
    counts = {t: q(db, f"SELECT count(*) AS n FROM {t}")[0]["n"]
              for t in ("runs", "episodes", "model_calls", "messages", "response_cache")}

    out = _dry(spec, db)
    assert "6 episodes planned, 3 already in the store, 3 to run" in out, out
    assert _cells(out, "m")[1] == "10" and _cells(out, "j")[1] == "1", out
    assert server.stats["received"] == received
    assert {t: q(db, f"SELECT count(*) AS n FROM {t}")[0]["n"] for t in counts} == counts


def test_dry_run_does_not_wait_on_rate_limits(tmp_path, server):
    """The dry run's stand-in calls cost nothing: a spec whose real run would be paced by
    rpm/tpm for many minutes (1 request and 1 token a minute) is estimated without waiting
    for those limits. A subprocess with a deadline, so that waiting is a failure, not a hang."""
    models = {"m": model_cfg(server, rpm=1, tpm=1, endpoint_concurrency=1, price=PRICE)}
    spec = boolq_spec(tmp_path / "slow.toml", name="slow", limit=2, models=models,
                      protocols=[debate("m", rounds=2)])
    db = tmp_path / "slow.db"
    try:
        proc = subprocess.run([sys.executable, "-m", "oversight", "run", str(spec), "--dry-run",
                               "--db", str(db)], capture_output=True, text=True, cwd=tmp_path,
                              env={**_env(), "COLUMNS": "200"}, timeout=DEADLINE)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the dry run was still running after {DEADLINE} s (waiting on rpm/tpm?)")
    assert proc.returncode == 0, proc.stderr
    assert "4 episodes planned" in proc.stdout and _cells(proc.stdout, "m")[1] == "20"
    assert server.stats["received"] == 0 and not db.exists()


def _env() -> dict:
    import os
    return {k: v for k, v in os.environ.items() if k not in ("OVERSIGHT_DB", "OPENAI_API_KEY")}
