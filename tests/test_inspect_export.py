"""`write_inspect_logs`: a stored run as inspect_ai `.eval` logs, read back only with inspect's
own readers (read_eval_log, list_eval_logs, recompute_metrics, inspect_ai.analysis frames).

A store built row by row through the Store API (two variants, an unparsed judgement, an item
without gold, a failed episode, a retried call, a cache hit; a second, interrupted run whose
only judgement is unparsed), then a real batch run with mock models, exported as it is.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
from enginekit import mock, run, write_spec
from inspect_ai.analysis import (
    EventInfo,
    ModelEventColumns,
    evals_df,
    events_df,
    messages_df,
    prepare,
    samples_df,
    score_to_float,
)
from inspect_ai.log import list_eval_logs, read_eval_log, recompute_metrics

from oversight.analysis import accuracy
from oversight.errors import OversightError
from oversight.review.inspect_log import write_inspect_logs
from oversight.store import Store, decisions, model_calls

RUN, RUN2 = "fixture-0123456789", "fixture-int-9876543210"
DEBATE, DIRECT = "debate[rounds=2]", "direct"
MODELS = {"j": {"provider": "mock", "model": "", "temperature": 0.0, "max_tokens": 256},
          "adv": {"provider": "openai", "model": "gpt-x", "temperature": 0.7, "max_tokens": 512,
                  "base_url": "http://127.0.0.1:9/v1"}}
ITEMS = [
    {"id": "d/q1", "input": "What colour is the sky?", "choices": ["Blue", "Green"], "target": 0},
    {"id": "d/q2", "input": "What did the baker sell?", "choices": ["Fish", "Bread"], "target": 1},
    {"id": "d/q3", "input": "Which is nicer?", "choices": ["Tea", "Coffee"], "target": None},
    {"id": "d/n1", "input": "What is 6*7?", "choices": None, "target": "42", "kind": "answer"},
]
SPEECH_A = "Blue, says the passage: <quote>a deep blue</quote>."
SPEECH_B = "Green, clearly: <quote>green hills</quote>."
REFUSAL = "I refuse to pick."


def judge_call(text, **kw):
    return {"role": "judge", "provider": "mock", "model": "", "text": text, "tokens_in": 40,
            "tokens_out": 5, "latency_s": 0.01, "cost_usd": 0.0,
            "request": {"messages": [{"role": "system", "content": "You are the judge."},
                                     {"role": "user", "content": "Pick A or B."}],
                        "max_tokens": 256, "temperature": 0.0, "logprobs": False,
                        "top_logprobs": 0, "stop": []}, **kw}


def debater_call(role, text, **kw):
    return {"role": role, "provider": "openai", "model": "gpt-x", "text": text,
            "tokens_in": 100, "tokens_out": 20, "latency_s": 0.2, "cost_usd": 0.001,
            "request": {"messages": [{"role": "system", "content": f"You are {role}."},
                                     {"role": "user", "content": "Argue."}],
                        "max_tokens": 512, "temperature": 0.7, "logprobs": False,
                        "top_logprobs": 0, "stop": []},
            "response": {"choices": [{"finish_reason": "stop"}]} if text else None, **kw}


def answer(choice=None, *, parsed=True, correct=None, raw, text=None, idx=0, name="answer"):
    return {"role": "judge", "kind": "answer", "name": name, "parsed": parsed, "choice": choice,
            "text": text, "correct": correct, "raw": raw, "idx": idx,
            "probabilities": [0.7, 0.3] if choice is not None else None,
            "source": "elicited" if parsed else None}


def episode(key, item, variant, *, status="done", made=(), messages=(), calls=(), **kw):
    protocol = variant.split("[")[0]
    roles = ({"judge": "j"} if protocol == "direct"
             else {"debater_a": "adv", "debater_b": "adv", "judge": "j"})
    return {"row": {"key": key, "item_id": item, "protocol": protocol, "variant": variant,
                    "params": {"rounds": 2} if protocol == "debate" else {},
                    "assignment": ({"debater_a": {"answer": 0, "correct": True},
                                    "debater_b": {"answer": 1, "correct": False}}
                                   if protocol == "debate" else {}),
                    "dispositions": {r: "honest" for r in roles}, "treatment": "a_correct",
                    "decides": "judge", "intent": ["debater_b"] if protocol == "debate" else [],
                    "outcome": None, "roles": roles, "models": MODELS, "seed": 0,
                    "status": status, "started_at": "2025-01-02T03:04:06.000+00:00",
                    "finished_at": "2025-01-02T03:04:08.000+00:00", "duration_s": 2.0,
                    "n_calls": len(calls), "error": None, **kw},  # every row: same keys
            "decisions": list(made), "messages": list(messages), "calls": list(calls)}


def speech(idx, role, content, rnd=1, shown=None):
    return {"idx": idx, "role": role, "kind": "speech" if rnd else "decision", "round": rnd,
            "model": "adv" if rnd else "j", "content": content, "shown": shown or content,
            "quotes": [{"text": "a deep blue", "status": "verified"}] if shown else []}


FIXTURE = {
    RUN: ("incomplete", [
        episode("k1", "d/q1", DIRECT, made=[answer(0, correct=True, raw="Answer: A")],
                messages=[speech(0, "judge", "Answer: A", rnd=None)],
                calls=[judge_call("Answer: A")]),
        episode("k2", "d/q2", DIRECT, made=[answer(0, correct=False, raw="Answer: A")],
                messages=[speech(0, "judge", "Answer: A", rnd=None)],
                calls=[judge_call("Answer: A")]),
        # no gold: parsed, never scored
        episode("k3", "d/q3", DIRECT, made=[answer(1, correct=None, raw="Answer: B")],
                messages=[speech(0, "judge", "Answer: B", rnd=None)],
                calls=[judge_call("Answer: B")]),
        # unparsed: counted and excluded, never 0
        episode("k4", "d/q1", DIRECT, treatment="again",
                made=[answer(parsed=False, raw=REFUSAL)],
                messages=[speech(0, "judge", REFUSAL, rnd=None)], calls=[judge_call(REFUSAL)]),
        episode("k5", "d/n1", DIRECT,
                made=[answer(text="42", correct=True, raw="Answer: 42")],
                messages=[speech(0, "judge", "Answer: 42", rnd=None)],
                calls=[judge_call("Answer: 42")]),
        episode("k6", "d/q1", DEBATE,
                made=[answer(0, correct=True, raw="Answer: A\nFlag: no"),
                           {"role": "judge", "kind": "flag", "name": "flag", "parsed": True,
                            "value": 0.0, "raw": "Answer: A\nFlag: no", "idx": 1}],
                messages=[speech(0, "debater_a", SPEECH_A,
                                 shown=SPEECH_A.replace("quote>", "v_quote>")),
                          speech(1, "debater_b", SPEECH_B),
                          speech(2, "judge", "Answer: A\nFlag: no", rnd=None)],
                calls=[debater_call("debater_a", None, error="429 rate limited",
                                    error_kind="rate_limit", tokens_in=None, tokens_out=None,
                                    cost_usd=None),
                       debater_call("debater_a", SPEECH_A, attempt=2, tokens_cached=60),
                       debater_call("debater_b", SPEECH_B, cache_hit=True, cost_usd=0.0),
                       judge_call("Answer: A\nFlag: no")]),
        episode("k7", "d/q2", DEBATE, status="failed", error="ModelError: boom",
                messages=[speech(0, "debater_a", SPEECH_A)],
                calls=[debater_call("debater_a", SPEECH_A),
                       debater_call("debater_b", None, error="ModelError: boom",
                                    error_kind="bad_request", tokens_in=None, tokens_out=None,
                                    cost_usd=None)]),
    ]),
    RUN2: ("interrupted", [
        episode("k1", "d/q1", DIRECT, made=[answer(parsed=False, raw=REFUSAL)],
                messages=[speech(0, "judge", REFUSAL, rnd=None)], calls=[judge_call(REFUSAL)]),
        episode("k2", "d/q2", DIRECT, status="interrupted", started_at=None, finished_at=None,
                duration_s=None),
        # a transcript without stored calls (as an imported study's), on an item without gold
        episode("k3", "d/q3", DIRECT, made=[answer(1, correct=None, raw="Answer: B")],
                messages=[speech(0, "judge", "Answer: B (imported)", rnd=None)]),
    ]),
}


def build_store(db: Path, fixture: dict = FIXTURE) -> dict[str, dict[str, dict]]:
    """The fixture through the Store API; returns run -> key -> {id, calls} as stored."""
    store = Store(db)
    stored: dict[str, dict[str, dict]] = {}
    try:
        store.save_items([{"dataset": "d", "kind": "choice", "source": "test", "license": "",
                           "meta": {}, "fields": {}, **i} for i in ITEMS])
        for n, (run_id, (status, eps)) in enumerate(fixture.items()):
            store.save_run({"id": run_id, "name": "fixture", "spec_toml": "name = 'fixture'\n",
                            "spec_hash": f"hash{n}", "status": status, "package_version": "0.1.0",
                            "created_at": f"2025-01-0{2 + n}T03:04:05.000+00:00",
                            "updated_at": f"2025-01-0{2 + n}T03:09:00.000+00:00"})
            ids = store.create_episodes(run_id, [{"run_id": run_id, **ep["row"]} for ep in eps])
            writer = store.writer()
            stored[run_id] = {}
            for ep in eps:
                eid = ids[ep["row"]["key"]][0]
                stored[run_id][ep["row"]["key"]] = {"id": eid, **ep}
                for m in ep["messages"]:
                    store.add_message({"episode_id": eid, **m})
                for c in ep["calls"]:
                    writer.insert(model_calls, {"episode_id": eid, "created_at":
                                                "2025-01-02T03:04:07.000+00:00", **c})
                for d in ep["decisions"]:
                    writer.insert(decisions, {"episode_id": eid, **d})
            writer.flush()
    finally:
        store.close()
    return stored


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("inspect_export")
    db, out = tmp / "fixture.db", tmp / "logs"
    stored = build_store(db)
    store = Store(db)
    try:
        paths = write_inspect_logs(store, RUN, out) + write_inspect_logs(store, RUN2, out)
    finally:
        store.close()
    logs = {(log.eval.metadata["oversight_run_id"], log.eval.task): log
            for log in (read_eval_log(str(p)) for p in paths)}
    return {"db": db, "out": out, "paths": paths, "stored": stored, "logs": logs}


def scores_of(log) -> dict:
    return {s.metadata["episode_key"]: (s.scores or {}).get("correct") for s in log.samples}


# -- the logs as inspect reads them ----------------------------------------------------------

def test_one_log_per_variant_listed_as_inspect_view_lists_them(exported):
    paths, logs = exported["paths"], exported["logs"]
    assert len(paths) == 3 and all(p.suffix == ".eval" and p.exists() for p in paths)
    assert set(logs) == {(RUN, DEBATE), (RUN, DIRECT), (RUN2, DIRECT)}
    listed = list_eval_logs(str(exported["out"]))
    assert len(listed) == 3
    by_id = {log.eval.task_id: log for log in logs.values()}
    for info in listed:  # task and task id parsed from the file name, as inspect view does
        log = by_id[info.task_id]
        assert info.task == log.eval.task.replace("[", "-").replace("]", "")
        assert info.name.endswith(Path(log.location).name)


def test_ids_are_set_distinct_and_stable(exported, tmp_path):
    logs = list(exported["logs"].values())
    assert all(log.eval.eval_id and log.eval.run_id and log.eval.task_id for log in logs)
    assert len({log.eval.eval_id for log in logs}) == 3
    assert len({log.eval.task_id for log in logs}) == 3
    run_ids = {key: log.eval.run_id for key, log in exported["logs"].items()}
    assert run_ids[(RUN, DEBATE)] == run_ids[(RUN, DIRECT)] != run_ids[(RUN2, DIRECT)]
    uuids = [s.uuid for log in logs for s in log.samples]
    assert all(uuids) and len(set(uuids)) == len(uuids) == 5 + 2 + 2
    # Exporting again gives the same files and the same ids.
    store = Store(exported["db"])
    try:
        again = write_inspect_logs(store, RUN, tmp_path)
    finally:
        store.close()
    assert [p.name for p in again] == [p.name for p in exported["paths"][:2]]
    for p in again:
        log = read_eval_log(str(p))
        before = exported["logs"][(RUN, log.eval.task)]
        assert (log.eval.eval_id, log.eval.run_id, log.eval.task_id) == (
            before.eval.eval_id, before.eval.run_id, before.eval.task_id)
        assert [s.uuid for s in log.samples] == [s.uuid for s in before.samples]


def test_samples_carry_the_episode(exported):
    log, stored = exported["logs"][(RUN, DEBATE)], exported["stored"][RUN]
    assert log.status == "error" and "1 of 2 episodes failed" in log.error.message
    assert log.eval.model == "mock/j" and log.eval.solver == "debate"
    assert log.eval.task_args == {"rounds": 2}
    assert log.eval.model_roles["debater_a"].model == "openai/gpt-x"
    assert log.eval.created.startswith("2025-01-02T03:04:05")
    assert log.stats.started_at.startswith("2025-01-02T03:04:05")
    assert log.stats.completed_at.startswith("2025-01-02T03:09:00")
    ok, failed = sorted(log.samples, key=lambda s: s.metadata["episode_key"])
    assert (ok.id, failed.id) == (stored["k6"]["id"], stored["k7"]["id"]) and ok.epoch == 1
    assert ok.input == "What colour is the sky?" and ok.choices == ["Blue", "Green"]
    assert ok.target == "A" and failed.target == "B"
    meta = ok.metadata
    assert meta["protocol"] == "debate" and meta["variant"] == DEBATE
    assert meta["params"] == {"rounds": 2} and meta["intent"] == ["debater_b"]
    assert meta["assignment"]["debater_a"] == {"answer": 0, "correct": True}
    assert meta["outcome"] is None and meta["treatment"] == "a_correct"
    assert meta["roles"]["judge"] == "j" and meta["models"]["adv"]["model"] == "gpt-x"
    assert (meta["item_id"], meta["dataset"]) == ("d/q1", "d")
    assert [(d["kind"], d["idx"]) for d in meta["decisions"]] == [("answer", 0), ("flag", 1)]
    # the transcript: the question, then each message under its role
    texts = [m.text for m in ok.messages]
    assert texts[0].startswith("What colour is the sky?") and "A) Blue" in texts[0]
    assert texts[1] == f"[debater_a, round 1]\n{SPEECH_A}"
    assert texts[2] == f"[debater_b, round 1]\n{SPEECH_B}"
    assert ok.messages[1].metadata["role"] == "debater_a"
    assert "v_quote" in ok.messages[1].metadata["shown"]
    assert ok.messages[3].metadata["role"] == "judge"
    # one model event per stored call attempt, with its role
    events = [e for e in ok.events if e.event == "model"]
    assert [(e.role, e.model) for e in events] == [
        ("debater_a", "openai/gpt-x"), ("debater_a", "openai/gpt-x"),
        ("debater_b", "openai/gpt-x"), ("judge", "mock/j")]
    assert events[0].error == "429 rate limited" and events[0].output.empty
    assert events[1].output.completion == SPEECH_A and events[2].cache == "read"
    assert events[1].output.usage.input_tokens_cache_read == 60
    assert events[1].output.usage.input_tokens == 40
    assert events[1].input[0].text == "You are debater_a." and events[1].input[0].role == "system"
    # the failed episode: its error, what it produced, no score
    assert failed.error.message == "ModelError: boom" and failed.scores is None
    assert [e.error for e in failed.events] == [None, "ModelError: boom"]
    # usage: tokens per model and per role, over every attempt
    usage = log.stats.model_usage
    assert usage["openai/gpt-x"].output_tokens == 20 * 3
    assert usage["mock/j"].input_tokens == 40
    assert log.stats.role_usage["debater_a"].total_tokens == 120 * 2
    assert usage["openai/gpt-x"].total_cost == pytest.approx(0.002)


def test_unparsed_and_no_gold_are_unscored_not_zero(exported):
    log = exported["logs"][(RUN, DIRECT)]
    assert log.status == "success" and log.error is None
    scores = scores_of(log)
    assert [scores[k].value for k in ("k1", "k2", "k5")] == ["C", "I", "C"]
    assert (scores["k1"].answer, scores["k5"].answer) == ("A", "42")
    for key, reason in (("k3", "no_gold"), ("k4", "invalid_response_format")):
        assert math.isnan(scores[key].value) and scores[key].reason == reason
    assert scores["k4"].explanation == REFUSAL and scores["k3"].answer == "B"
    [result] = log.results.scores
    assert (result.scored_samples, result.unscored_samples) == (3, 2)
    assert result.metrics["accuracy"].value == pytest.approx(2 / 3)  # not 2/5
    assert log.results.total_samples == 5 and log.results.completed_samples == 5
    # inspect's own recomputation over the log as read agrees
    recompute_metrics(log)
    assert log.results.scores[0].metrics["accuracy"].value == pytest.approx(2 / 3)
    # the debate log's failed episode is not counted either
    [debate] = exported["logs"][(RUN, DEBATE)].results.scores
    assert (debate.scored_samples, debate.metrics["accuracy"].value) == (1, 1.0)


def test_a_variant_with_only_unparsed_judgements_has_no_accuracy(exported):
    log = exported["logs"][(RUN2, DIRECT)]
    assert log.status == "cancelled"  # the run was interrupted: k2 never finished
    assert [s.metadata["episode_key"] for s in log.samples] == ["k1", "k3"]
    assert log.results.total_samples == 3
    [result] = log.results.scores
    assert (result.scored_samples, result.unscored_samples) == (0, 2)
    assert math.isnan(result.metrics["accuracy"].value)  # NaN, never 0
    assert log.stats.completed_at.startswith("2025-01-03T03:09:00")


@pytest.mark.parametrize("run_status, expected", [("running", "started"),
                                                   ("budget_exhausted", "error"),
                                                   ("interrupted", "cancelled")])
def test_a_variant_not_all_run_is_not_success(tmp_path, run_status, expected):
    done = episode("k1", "d/q1", DIRECT, made=[answer(0, correct=True, raw="Answer: A")],
                   messages=[speech(0, "judge", "Answer: A", rnd=None)],
                   calls=[judge_call("Answer: A")])
    build_store(tmp_path / "s.db", {RUN: (run_status, [done, episode("k2", "d/q2", DIRECT,
                                                                     status="pending")])})
    store = Store(tmp_path / "s.db")
    try:
        [path] = write_inspect_logs(store, RUN, tmp_path / "logs")
    finally:
        store.close()
    log = read_eval_log(str(path))
    assert log.status == expected and len(log.samples) == 1
    assert (log.results.total_samples, log.results.completed_samples) == (2, 1)
    assert (log.error is not None) == (expected == "error")
    assert (log.stats.completed_at == "") == (expected == "started")
    assert evals_df(str(tmp_path / "logs"), quiet=True)["status"].tolist() == [expected]


# -- inspect_ai.analysis data frames ----------------------------------------------------------

def test_data_frames(exported):
    out, stored = str(exported["out"]), exported["stored"]
    evals = evals_df(out, quiet=True)
    assert len(evals) == 3 and evals["eval_id"].is_unique
    tasks = zip(evals["run_id"], evals["task_name"], strict=True)
    acc = dict(zip(tasks, evals["score_correct_accuracy"], strict=True))
    run_id = exported["logs"][(RUN, DIRECT)].eval.run_id
    assert acc[(run_id, DIRECT)] == pytest.approx(2 / 3)

    samples = samples_df(out, quiet=True)
    assert len(samples) == 9 and samples["sample_id"].is_unique
    keyed = samples.set_index(samples["metadata_episode_key"] + "@" + samples["eval_id"])
    direct = samples[samples["eval_id"] == exported["logs"][(RUN, DIRECT)].eval.eval_id]
    as_float = prepare(direct, score_to_float("score_correct"))["score_correct"]
    assert as_float.isna().sum() == 2 and as_float.mean() == pytest.approx(2 / 3)
    assert len(keyed) == 9

    messages = messages_df(out, quiet=True)
    contents = set(messages["content"])
    for run_id in (RUN, RUN2):
        for ep in stored[run_id].values():
            for m in ep["messages"]:
                assert m["content"] in contents
    assert "You are the judge." in contents and "You are debater_b." in contents

    events = events_df(out, columns=EventInfo + ModelEventColumns, quiet=True)
    model = events[events["event"] == "model"]
    per_sample = model.groupby("sample_id").size().to_dict()
    uuid_of = {s.metadata["episode_id"]: s.uuid
               for log in exported["logs"].values() for s in log.samples}
    for run_id in (RUN, RUN2):
        for ep in stored[run_id].values():
            if ep["id"] in uuid_of:  # one per call; without calls, one per message
                assert per_sample.get(uuid_of[ep["id"]], 0) == len(ep["calls"] or ep["messages"])
    assert set(model["model_event_role"]) == {"judge", "debater_a", "debater_b"}
    assert (model["model_event_cache"] == "read").sum() == 1
    [imported] = [s for s in exported["logs"][(RUN2, DIRECT)].samples
                  if s.metadata["episode_key"] == "k3"]
    [event] = imported.events
    assert event.metadata["reconstructed"] and event.input == [] and event.role == "judge"
    assert event.output.completion == "Answer: B (imported)"
    assert model["model_event_error"].notna().sum() == 2


# -- errors -------------------------------------------------------------------------------------

def test_unknown_run_and_missing_inspect(exported, monkeypatch, tmp_path):
    store = Store(exported["db"])
    try:
        with pytest.raises(OversightError, match="no run 'nosuch'"):
            write_inspect_logs(store, "nosuch", tmp_path)
        monkeypatch.setitem(sys.modules, "inspect_ai", None)  # as if it were not installed
        with pytest.raises(OversightError, match=r"install oversight\[inspect\]") as caught:
            write_inspect_logs(store, RUN, tmp_path)
        assert isinstance(caught.value, ImportError)  # what `oversight export` catches
    finally:
        store.close()
    assert not list(tmp_path.iterdir())


# -- a real run -------------------------------------------------------------------------------

def test_a_mock_batch_exported_end_to_end(tmp_path):
    # The judge: right on magnesium, unparsable on the car, wrong on tipping point; the
    # debaters fail on tipping point (a 400-like error): those debate episodes fail.
    judge = mock(rules=[{"match": "magnesium", "reply": "Answer: A\nConfidence: 70%"},
                        {"match": "break in a car", "reply": "I cannot tell."},
                        {"match": "tipping point", "reply": "Answer: B\nConfidence: 60%"}])
    adv = mock(["I argue <quote>citric acid</quote>."], fail_on="tipping point")
    spec = write_spec(tmp_path / "e2e.toml", name="e2e", datasets=["boolq"], limit=3,
                      models={"j": judge, "adv": adv},
                      protocols=[{"name": "direct", "roles": {"judge": "j"}},
                                 {"name": "debate", "roles": {"debater_a": "adv",
                                                              "debater_b": "adv", "judge": "j"}}])
    db = tmp_path / "e2e.db"
    result = run(spec, db)
    store = Store(db)
    try:
        [run_row] = store.runs()
        paths = write_inspect_logs(store, run_row["id"], tmp_path / "logs")
        rows = store.results([run_row["id"]])
        n_calls = len(store.decisions([run_row["id"]]))
    finally:
        store.close()
    assert n_calls > 0 and result.total_calls() > 0
    logs = {log.eval.task: log for log in (read_eval_log(str(p)) for p in paths)}
    assert set(logs) == {r["variant"] for r in rows} == {"direct", "debate"}
    for variant, log in logs.items():
        mine = [r for r in rows if r["variant"] == variant]
        assert len(log.samples) == len(mine)
        [score] = log.results.scores
        est = accuracy(mine)  # the report's accuracy: parsed decisions only
        assert score.scored_samples == est.n
        assert score.metrics["accuracy"].value == pytest.approx(est.mean)
        for s in log.samples:
            row = next(r for r in mine if r["id"] == s.id)
            correct = (s.scores or {}).get("correct")
            if row["status"] == "failed":
                assert s.error is not None and correct is None
            elif not row["parsed"]:
                assert math.isnan(correct.value) and correct.explanation == "I cannot tell."
            else:
                assert correct.value == ("C" if row["correct"] else "I")
            assert len([e for e in s.events if e.event == "model"]) >= 1
    assert logs["direct"].status == "success" and logs["debate"].status == "error"
    values = [s.scores["correct"].value for s in logs["direct"].samples]
    assert [v for v in values if isinstance(v, str)] == ["C", "I"] and len(values) == 3
    frame = samples_df([str(p) for p in paths], quiet=True)
    assert len(frame) == len(rows) and frame["sample_id"].is_unique
    assert len(messages_df([str(p) for p in paths], quiet=True)) > 0
