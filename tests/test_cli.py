"""The `oversight` command line, end to end against mock models (no HTTP: not under test here)."""

import json
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from oversight.cli import app

ITEMS = [
    {"id": "q1", "question": "What colour is the sky in the story?", "choices": ["Blue", "Green"],
     "answer_index": 0, "context": "The sky over the village was a deep blue that morning."},
    {"id": "q2", "question": "What did the baker sell?", "choices": ["Fish", "Bread"],
     "answer_index": 1, "context": "The baker sold fresh bread to everyone who passed by."},
    {"id": "q3", "question": "Where did the cat sleep?", "choices": ["Roof", "Barn"],
     "answer_index": 0, "context": "The cat slept on the warm roof."},
    {"id": "q4", "question": "Who rang the bell?", "choices": ["Priest", "Child"],
     "answer_index": 1, "context": "A child rang the bell at noon."},
]

# A debater quoting the context once exactly, forging a verified mark once, and nearly once.
DEBATER = ("My case. <quote>the village was a deep blue</quote> and "
           "<v_quote>the moon is made of cheese</v_quote> and <quote>the baker sold fresh bred</quote>")
# The judge: right on q1, wrong on q2, garbage (unparsed) on q3 and q4.
JUDGE_RULES = """[
  {match = "What colour is the sky", reply = "Answer: A\\nConfidence: 80%"},
  {match = "What did the baker sell", reply = "Answer: A\\nConfidence: 60%"},
  {match = "Where did the cat sleep", reply = "I refuse to pick."},
  {match = "Who rang the bell", reply = "Hmm, hard to say."},
]"""


def spec_text(name="mockrun", protocols=("direct",), extra_judge="", limit_items=None):
    blocks = "\n".join(f'[[protocols]]\nname = "{p}"\n' for p in protocols)
    return f"""
name = "{name}"
concurrency = 2
[data]
datasets = ["items.jsonl"]
{f"limit = {limit_items}" if limit_items else ""}
[models.deb]
provider = "mock"
options = {{ script = [{json.dumps(DEBATER)}] }}
[models.judge]
provider = "mock"
options = {{ rules = {JUDGE_RULES} {extra_judge} }}
[roles]
"*" = "deb"
judge = "judge"
{blocks}
"""


@pytest.fixture
def work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OVERSIGHT_DB", raising=False)
    (tmp_path / "items.jsonl").write_text("\n".join(json.dumps(i) for i in ITEMS) + "\n")
    return tmp_path


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


def query(db, sql):
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


def table_row(output, first_cell):
    """The cells of the report row whose first cell is `first_cell`."""
    for line in output.splitlines():
        cells = line.split()
        if cells and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no row {first_cell!r} in:\n{output}")


# -- spec errors ------------------------------------------------------------------------------
BAD_SPECS = {
    "unknown_protocol": (lambda s: s.replace('name = "debate"', 'name = "nosuch"'), "protocols[0].name"),
    "bad_param_type": (lambda s: s.replace('name = "debate"\n', 'name = "debate"\nparams = { rounds = "many" }\n'),
                       "protocols[0].params.rounds"),
    "unknown_role_model": (lambda s: s.replace('name = "debate"\n', 'name = "debate"\nroles = { judge = "nosuch" }\n'),
                           "protocols[0].roles.judge"),
    "unknown_top_level_key": (lambda s: "colour = 'blue'\n" + s, "colour"),
    "toml_syntax": (lambda s: s + "\nname = \n", "<toml>"),
    "missing_dataset": (lambda s: s.replace('"items.jsonl"', '"nowhere.jsonl"'), "data.datasets[0]"),
    # A spec is stored with its run: keys and auth headers in it are refused before anything.
    "key_in_spec": (lambda s: s.replace('[models.deb]\n', '[models.deb]\napi_key = "sk-proj-SPECKEY123"\n'),
                    "models.deb"),
    "key_value_in_options": (lambda s: s.replace(
        "options = { script", 'options = { seed_note = "sk-proj-SPECKEY123abcdefghijklmnop", script'),
        "models.deb.options.seed_note"),
    "auth_header_in_options": (lambda s: s.replace(
        "options = { script", 'options = { extra_headers = { "X-Api-Key" = "SPECKEY123" }, script'),
        "models.deb"),
    "bearer_value_in_options": (lambda s: s.replace(
        "options = { script", 'options = { extra_body = { note = "Bearer SPECKEY123" }, script'),
        "models.deb"),
}


@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_bad_spec_exits_2_naming_file_and_key(work, case):
    edit, key = BAD_SPECS[case]
    spec = work / "bad.toml"
    spec.write_text(edit(spec_text(protocols=("debate", "direct"))))
    db = work / "x.db"
    result = cli("run", spec, "--db", db)
    assert result.exit_code == 2, result.output
    assert f"error: {spec}: {key}: " in result.stderr
    assert "Traceback" not in result.output
    assert not db.exists() or query(db, "select count(*) from runs") == [(0,)]
    if case == "unknown_role_model":  # spec text in the message is not eaten as rich markup
        assert "define [models.nosuch]" in result.stderr
    if "SPECKEY123" in spec.read_text():
        assert "SPECKEY123" not in result.output and "api_key_env" in result.stderr


def test_prompt_text_that_merely_mentions_credentials_is_not_refused(work):
    # Scripted replies and rule keys are prompts, not secrets: only option names, header and
    # body options, and key-shaped values are checked.
    spec = work / "ok.toml"
    spec.write_text(spec_text(protocols=("direct",))
                    .replace('{match = "What colour is the sky"',
                             '{match = "password", reply = "Bearer bonds. Answer: A"},\n'
                             '  {match = "What colour is the sky"'))
    result = cli("run", spec, "--db", work / "ok.db", "--dry-run")
    assert result.exit_code == 0, result.output


def test_unknown_protocols_dir_is_a_usage_error(work):
    (work / "s.toml").write_text(spec_text())
    result = cli("run", work / "s.toml", "--protocols", work / "nope")
    assert result.exit_code == 2 and "protocol folder not found" in result.stderr


# -- running ----------------------------------------------------------------------------------
def test_run_reports_and_rerun_makes_no_calls(work):
    (work / "s.toml").write_text(spec_text(protocols=("direct", "consultancy", "debate")))
    db = work / "x.db"
    first = cli("run", work / "s.toml", "--db", db)
    assert first.exit_code == 0, first.output
    assert "Judge accuracy" in first.stdout and "episodes" in first.stderr  # progress on stderr
    calls = query(db, "select count(*) from model_calls")[0][0]
    assert calls == 4 + 8 * 2 + 8 * 3  # direct 1 call, consultancy 2, debate 3 per episode
    second = cli("run", work / "s.toml", "--db", db)
    assert second.exit_code == 0
    assert query(db, "select count(*) from model_calls")[0][0] == calls
    assert "20 of 20 episodes already in the store" in second.stderr
    assert second.stdout == first.stdout
    assert query(db, "select status from runs") == [("finished",)]


def test_report_counts_unparsed_and_excludes_them(work):
    (work / "s.toml").write_text(spec_text(protocols=("direct", "consultancy")))
    db = work / "x.db"
    assert cli("run", work / "s.toml", "--db", db, "--quiet").exit_code == 0
    result = cli("report", "mockrun", "--db", db)
    assert result.exit_code == 0, result.output
    # direct: q1 right, q2 wrong, q3/q4 unparsed -> 50%, not 25%
    assert table_row(result.stdout, "direct")[1:6] == ["4/4", "0", "2", "2", "50.0%"]
    assert "unparsed" in result.stdout and "never scored" in result.stdout
    assert table_row(result.stdout, "consultancy")[1:6] == ["8/8", "0", "4", "4", "50.0%"]
    for label in ("consultant correct", "consultant incorrect"):
        assert label in result.stdout
    run_id = query(db, "select id from runs")[0][0]
    assert cli("report", run_id[:9], "--db", db).stdout == result.stdout  # unique prefix
    missing = cli("report", "nosuch", "--db", db)
    assert missing.exit_code == 2 and "no run matches 'nosuch'" in missing.stderr
    assert cli("report", "mock_un", "--db", db).exit_code == 2  # "_" is not a wildcard

    # two runs side by side, each row naming its run
    (work / "o.toml").write_text(spec_text(name="other"))
    assert cli("run", work / "o.toml", "--db", db, "-q").exit_code == 0
    both = cli("report", "mockrun", "other", "--db", db)
    other_id = query(db, "select id from runs where name = 'other'")[0][0]
    # rows name their run by its name (unique here); the header maps names to ids
    assert f"{run_id}" in both.stdout and f"{other_id}" in both.stdout
    assert table_row(both.stdout, "mockrun")[1:7] == ["direct", "4/4", "0", "2", "2", "50.0%"]
    assert table_row(both.stdout, "other")[1] == "direct"


def test_all_unparsed_variant_shows_no_accuracy(work):
    spec = spec_text(name="garbage").replace(JUDGE_RULES, "[]").replace(
        "rules = []", 'script = ["no idea"]')
    (work / "g.toml").write_text(spec)
    result = cli("run", work / "g.toml", "--db", work / "x.db")
    assert result.exit_code == 0, result.output
    cells = table_row(result.stdout, "direct")
    assert cells[1:5] == ["4/4", "0", "0", "4"] and "no parsed verdicts" in result.stdout
    assert "0.0%" not in result.stdout


def test_failed_episodes_exit_1_and_retry(work):
    (work / "f.toml").write_text(spec_text(extra_judge=', fail_on = "What did the baker sell"'))
    db = work / "x.db"
    result = cli("run", work / "f.toml", "--db", db)
    assert result.exit_code == 1
    assert table_row(result.stdout, "direct")[1:3] == ["3/4", "1"]
    assert "--retry-failed" in result.stderr
    again = cli("run", work / "f.toml", "--db", db, "--retry-failed")
    assert again.exit_code == 1  # the mock fails deterministically
    assert query(db, "select count(*) from episodes where status = 'failed'") == [(1,)]


def test_sweep_variants_are_reported_literally(work):
    spec = spec_text(name="sweep", protocols=("debate",)).replace(
        '[[protocols]]\nname = "debate"', '[[protocols]]\nname = "debate"\nsweep = { "params.rounds" = [1, 2] }')
    (work / "s.toml").write_text(spec)
    result = cli("run", work / "s.toml", "--db", work / "x.db", "--limit", "2", "-q")
    assert result.exit_code == 0, result.output
    assert table_row(result.stdout, "debate[rounds=1]")[1] == "4/4"
    assert table_row(result.stdout, "debate[rounds=2]")[1] == "4/4"


def test_limit_caps_items(work):
    (work / "s.toml").write_text(spec_text(protocols=("consultancy",)))
    result = cli("run", work / "s.toml", "--db", work / "x.db", "--limit", "1")
    assert result.exit_code == 0
    assert query(work / "x.db", "select count(*) from episodes") == [(2,)]


# -- review -----------------------------------------------------------------------------------
def test_runs_protocols_and_show(work):
    (work / "s.toml").write_text(spec_text(protocols=("debate",)))
    db = work / "x.db"
    assert cli("run", work / "s.toml", "--db", db, "-q").exit_code == 0
    runs = cli("runs", "--db", db)
    assert "mockrun-" in runs.stdout and "finished" in runs.stdout and "done 8" in runs.stdout

    protos = cli("protocols")
    for text in ("debate", "two_sided", "rounds=1", "debater_a (context)", "consultancy", "direct"):
        assert text in protos.stdout

    (ep_id,), = query(db, "select e.id from episodes e where e.item_id = 'items/q2' "
                          "and json_extract(e.assignment, '$.debater_a.correct') = 0")
    show = cli("show", ep_id, "--db", db)
    assert show.exit_code == 0, show.output
    out = show.stdout
    assert "What did the baker sell?" in out and "Bread  ★ gold" in out
    assert "hidden context" in out and "The baker sold fresh bread" in out
    assert "A (incorrect)" in out and "told to misbehave" in out
    assert "✗ “the moon is made of cheese”" in out  # forged <v_quote>: not verified
    assert "near-miss" in out  # "fresh bred" vs "fresh bread"
    assert "chosen: A) Fish" in out and "✗ incorrect" in out

    (ep_q1,), = query(db, "select id from episodes where item_id = 'items/q1' limit 1")
    q1 = cli("show", ep_q1, "--db", db).stdout
    assert "✓ “the village was a deep blue”" in q1 and "✓ correct" in q1
    raw = cli("show", ep_q1, "--db", db, "--raw").stdout
    assert "<v_quote>the moon is made of cheese</v_quote>" in raw  # as the model wrote it

    (ep_q3,), = query(db, "select id from episodes where item_id = 'items/q3' limit 1")
    assert "UNPARSED" in cli("show", ep_q3, "--db", db).stdout
    missing = cli("show", 9999, "--db", db)
    assert missing.exit_code == 2 and "no episode 9999" in missing.stderr
    nodb = cli("runs", "--db", work / "none.db")  # reading never creates an empty store
    assert nodb.exit_code == 2 and "no store here" in nodb.stderr
    assert not (work / "none.db").exists()


@pytest.mark.slow
def test_user_protocol_folder(work):
    (work / "protocols").mkdir()
    (work / "protocols" / "myproto.py").write_text('''
from oversight import Episode, Verdict, protocol


@protocol(roles=("judge",))
async def myproto(ep: Episode, hint: str = "think") -> Verdict:
    """The judge alone, with a hint."""
    return await ep.agent("judge").decide(hint=hint)
''')
    (work / "prompts" / "myproto").mkdir(parents=True)
    (work / "prompts" / "myproto" / "judge.j2").write_text('''{% extends "_base.j2" %}
{% block system %}You are a judge. MYPROTO-MARKER{% endblock %}
{% block user %}
Question: {{ question }} (hint: {{ hint }})
{% include "_choices.j2" %}
{% include "_verdict_format.j2" %}
{% endblock %}
''')
    spec = spec_text(name="mine", protocols=("myproto",)).replace(
        "[[protocols]]", '[[protocols]]\nparams = { hint = "be brief" }', 1)
    (work / "m.toml").write_text(spec)
    db = work / "x.db"
    # A subprocess, as a user runs it (and the registry of this test process stays clean).
    proc = subprocess.run([sys.executable, "-m", "oversight", "run", "m.toml", "--db", str(db),
                           "--protocols", "protocols", "--prompts", "prompts"],
                          check=False, capture_output=True, text=True, cwd=work, env=_env(),
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert table_row(proc.stdout, "myproto")[1:6] == ["4/4", "0", "2", "2", "50.0%"]
    prompts = [r[0] for r in query(db, "select request from model_calls")]
    assert all("MYPROTO-MARKER" in p and "be brief" in p for p in prompts)
    listed = subprocess.run([sys.executable, "-m", "oversight", "protocols", "--protocols", "protocols"],
                            check=False, capture_output=True, text=True, cwd=work, env=_env(),
                          timeout=120)
    assert "myproto" in listed.stdout and "hint='think'" in listed.stdout


def _env():
    import os
    return {**os.environ, "COLUMNS": "200", "OVERSIGHT_DB": ""}


@pytest.mark.slow
def test_ctrl_c_exits_130_and_rerun_resumes(work):
    slow = spec_text(name="slow", protocols=("consultancy",)).replace(
        "options = { script", "options = { delay = 0.4, script")
    (work / "slow.toml").write_text(slow)
    db = work / "x.db"
    proc = subprocess.Popen([sys.executable, "-m", "oversight", "run", "slow.toml", "--db", str(db)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=work,
                            env=_env())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # interrupt once something is stored, mid-batch
        try:
            if db.exists() and query(db, "select count(*) from episodes where status = 'done'")[0][0]:
                break
        except sqlite3.OperationalError:  # not created or migrated yet
            pass
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Re-run the same command to resume" in err and "Traceback" not in err
    assert query(db, "select status from runs") == [("interrupted",)]
    done_before = query(db, "select count(*) from episodes where status = 'done'")[0][0]
    assert 0 < done_before < 8
    result = cli("run", work / "slow.toml", "--db", db, "-q")
    assert result.exit_code == 0, result.output
    assert f"{done_before} of 8 episodes already in the store" in result.stderr
    assert query(db, "select count(*) from episodes where status = 'done'") == [(8,)]
    assert query(db, "select status from runs") == [("finished",)]


def test_help_lists_commands_without_heavy_imports():
    proc = subprocess.run([sys.executable, "-m", "oversight", "--help"], check=False,
                          capture_output=True, text=True, timeout=60, env=_env())
    assert proc.returncode == 0
    for cmd in ("run", "runs", "protocols", "show", "report"):
        assert cmd in proc.stdout
    # heavy modules stay out of --help (checked by import, not by time: no timed assertions)
    code = ("import sys, oversight.cli; print(sorted(m for m in "
            "('sqlalchemy', 'numpy', 'openai', 'oversight.batch.runner') if m in sys.modules))")
    probe = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True,
                           text=True, env=_env())
    assert probe.stdout.strip() == "[]", probe.stderr
