"""`oversight rejudge`: stored transcripts judged again, as a run of its own, with provenance."""

import json
import sqlite3

import pytest
from typer.testing import CliRunner

from oversight.cli import app

ITEMS = [
    {"id": f"q{i}", "question": f"Question number {i}?", "choices": ["Yes", "No"],
     "answer_index": i % 2, "context": f"The passage of item {i} says the answer is {'Yes No'.split()[i % 2]}."}
    for i in range(4)
]

SPEC = """
name = "src"
concurrency = 2
[data]
datasets = ["items.jsonl"]
[models.deb]
provider = "mock"
options = { script = ["I argue: <quote>The passage of item</quote>."] }
[models.judge]
provider = "mock"
options = { script = ["Answer: A\\nConfidence: 70%", "Answer: B\\nConfidence: 90%", "no idea"] }
[roles]
"*" = "deb"
judge = "judge"
[[protocols]]
name = "debate"
[[protocols]]
name = "consultancy"
params = { flag = true }
"""


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


def rows(db, sql, *args):
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, args).fetchall()


@pytest.fixture
def stored(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OVERSIGHT_DB", raising=False)
    (tmp_path / "items.jsonl").write_text("\n".join(json.dumps(i) for i in ITEMS) + "\n")
    (tmp_path / "s.toml").write_text(SPEC)
    db = tmp_path / "s.db"
    result = cli("run", "s.toml", "--db", db, "-q")
    assert result.exit_code == 0, result.output
    return db


def test_rejudge_adds_a_linked_run_and_leaves_the_source_intact(stored):
    db = stored
    (src,) = rows(db, "select id from runs")[0]
    result = cli("rejudge", src, "--model", "mock/new-judge", "--db", db, "-q")
    assert result.exit_code == 0, result.output
    new = rows(db, "select id from runs where id != ?", src)[0][0]
    assert new.startswith("src.rejudge-")
    linked = rows(db, "select e.id, e.source_episode_id, e.variant, s.variant, e.item_id, s.item_id, "
                  "e.treatment, s.treatment, e.intent, s.intent, e.decides from episodes e "
                  "join episodes s on s.id = e.source_episode_id where e.run_id = ?", new)
    done = rows(db, "select count(*) from episodes where run_id = ? and status = 'done'", src)[0][0]
    assert len(linked) == done == 16  # every finished source episode, once
    for _, _, v, sv, i, si, t, st, intent, sintent, decides in linked:
        assert (v, i, t, intent) == (sv, si, st, sintent) and decides == "judge"
    # the consultancy judge was asked an answer and a flag: so is the new one
    kinds = rows(db, "select d.kind, count(*) from decisions d join episodes e on e.id = d.episode_id "
                 "where e.run_id = ? and e.protocol = 'rejudge' and e.variant like 'consultancy%' "
                 "group by d.kind", new)
    assert dict(kinds) == {"answer": 8, "flag": 8}
    # the new judge saw the transcript with the stored quote marks, and no old decision
    (request,) = rows(db, "select request from model_calls c join episodes e on e.id = c.episode_id "
                      "where e.run_id = ? order by c.id limit 1", new)[0]
    prompt = json.dumps(json.loads(request)["messages"])
    assert "<v_quote>The passage of item</v_quote>" in prompt and "Confidence: 70%" not in prompt


def test_source_rows_unchanged_byte_for_byte(stored):
    db = stored
    (src,) = rows(db, "select id from runs")[0]
    snap = {t: rows(db, f"select * from {t} order by id") for t in
            ("episodes", "messages", "decisions", "model_calls", "items")}
    assert cli("rejudge", src, "--model", "mock/new-judge", "--db", db, "-q").exit_code == 0
    new_ids = {r[0] for r in rows(db, "select id from episodes where run_id != ?", src)}
    for table, before in snap.items():
        after = rows(db, f"select * from {table} order by id")
        if table == "episodes":
            after = [r for r in after if r[0] not in new_ids]
        elif table != "items":
            col = [c[1] for c in rows(db, f"pragma table_info({table})")].index("episode_id")
            after = [r for r in after if r[col] not in new_ids]
        assert after == before, table


def test_rejudge_resumes_and_a_new_model_or_prompt_is_a_new_run(stored, tmp_path):
    db = stored
    (src,) = rows(db, "select id from runs")[0]
    assert cli("rejudge", src, "--model", "mock/j2", "--db", db, "-q").exit_code == 0
    calls = rows(db, "select count(*) from model_calls")[0][0]
    again = cli("rejudge", src, "--model", "mock/j2", "--db", db, "-q")
    assert again.exit_code == 0 and "16 of 16 episodes already in the store" in again.stderr
    assert rows(db, "select count(*) from model_calls")[0][0] == calls
    assert cli("rejudge", src, "--model", "mock/j3", "--db", db, "-q").exit_code == 0
    prompts = tmp_path / "myprompts" / "rejudge"
    prompts.mkdir(parents=True)
    (prompts / "judge.j2").write_text('{% extends "_base.j2" %}{% block system %}CUSTOM JUDGE'
                                      '{% endblock %}{% block user %}{{ question }}\n'
                                      '{% include "_transcript.j2" %}'
                                      '{% include "_decision_format.j2" %}{% endblock %}')
    custom = cli("rejudge", src, "--model", "mock/j2", "--prompts", prompts.parent, "--db", db, "-q")
    assert custom.exit_code == 0, custom.output
    assert len(rows(db, "select id from runs")) == 4
    latest = rows(db, "select id from runs order by created_at desc limit 1")[0][0]
    (request,) = rows(db, "select request from model_calls c join episodes e on e.id = c.episode_id "
                      "where e.run_id = ? limit 1", latest)[0]
    assert "CUSTOM JUDGE" in request


def test_rejudge_errors_exit_2_before_any_write(stored):
    db = stored
    (src,) = rows(db, "select id from runs")[0]
    n = rows(db, "select count(*) from episodes")[0][0]
    for args, message in [
        (("--model", "nosuch/x"), "unknown model"),
        (("--model", "mock/x", "--role", "debater_a"), "no finished episode"),
        (("--model", "mock/x", "--role", "nobody"), "no finished episode"),
    ]:
        result = cli("rejudge", src, *args, "--db", db, "-q")
        assert result.exit_code == 2 and message in result.stderr, result.output
    missing = cli("rejudge", "nosuchrun", "--model", "mock/x", "--db", db)
    assert missing.exit_code == 2 and "no run matches" in missing.stderr
    assert rows(db, "select count(*) from episodes")[0][0] == n
    assert len(rows(db, "select id from runs")) == 1


def test_a_spec_cannot_run_the_rejudge_protocol(stored, tmp_path):
    spec = SPEC.replace('name = "src"', 'name = "bad"').replace(
        '[[protocols]]\nname = "debate"', '[[protocols]]\nname = "rejudge"')
    (tmp_path / "bad.toml").write_text(spec)
    result = cli("run", "bad.toml", "--db", stored, "-q")
    assert result.exit_code == 2 and "oversight rejudge" in result.stderr


def test_a_rejudging_judged_again_sees_the_original_transcript(stored):
    db = stored
    (src,) = rows(db, "select id from runs")[0]
    assert cli("rejudge", src, "--model", "mock/j2", "--db", db, "-q").exit_code == 0
    first = rows(db, "select id from runs where id != ?", src)[0][0]
    again = cli("rejudge", first, "--model", "mock/j3", "--db", db, "-q")
    assert again.exit_code == 0, again.output
    second = rows(db, "select id from runs where id not in (?, ?)", src, first)[0][0]
    linked = rows(db, "select e.source_episode_id, s.run_id from episodes e join episodes s "
                  "on s.id = e.source_episode_id where e.run_id = ?", second)
    assert len(linked) == 16 and {r for _, r in linked} == {first}
    (request,) = rows(db, "select request from model_calls c join episodes e on e.id = c.episode_id "
                      "where e.run_id = ? order by c.id limit 1", second)[0]
    assert "<v_quote>The passage of item</v_quote>" in request  # the debaters' speeches
