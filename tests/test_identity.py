"""A run knows what produced it (issue 9 §6): the hashes of its protocols' source and of the
templates they can render are stored with the run and part of its id, so editing a template
or a protocol starts a new run instead of mixing old and new prompts under one id."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

from enginekit import mock, write_spec
from typer.testing import CliRunner

from oversight.api.plugins import builtin_dirs
from oversight.cli import app


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


def runs(db: Path) -> list[tuple]:
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT id, code FROM runs ORDER BY created_at").fetchall()
    finally:
        con.close()


def test_editing_a_template_or_a_protocol_starts_a_new_run(tmp_path):
    prompts = tmp_path / "my_prompts"
    shutil.copytree(builtin_dirs()[1] / "direct", prompts / "direct")  # a user's own override
    protos = tmp_path / "protos"
    protos.mkdir()
    (protos / "mine.py").write_text("from oversight import protocol\n\n@protocol(roles=('judge',))\n"
                                    "async def mine(ep):\n    return await ep.agent('judge').decide()\n")
    shutil.copytree(builtin_dirs()[1] / "direct", tmp_path / "prompts" / "mine")  # protos' sibling
    spec = write_spec(tmp_path / "s.toml", name="ident", datasets=["boolq"], limit=2,
                      models={"m": mock()}, protocols=[{"name": "direct"}, {"name": "mine"}],
                      roles={"judge": "m"})
    db = tmp_path / "s.db"
    args = ("run", spec, "--db", db, "--prompts", prompts, "--protocols", protos, "-q")

    first = cli(*args)
    assert first.exit_code == 0, first.output
    [(run1, code1)] = runs(db)
    code1 = json.loads(code1)
    assert set(code1["protocols"]) == {"direct", "mine"} and all(code1["protocols"].values())
    assert any(k.endswith("direct/judge.j2") for k in code1["templates"])
    assert any(k.endswith("_base.j2") for k in code1["templates"])
    assert not any("/debate/" in k or k.split(":")[1].startswith("debate/") for k in code1["templates"])

    again = cli(*args)  # nothing changed: the same run, resumed, nothing to do
    assert again.exit_code == 0 and len(runs(db)) == 1 and "note:" not in again.stderr

    judge = prompts / "direct" / "judge.j2"
    judge.write_text(judge.read_text().replace("accurately", "very accurately"))
    edited = cli(*args)
    assert edited.exit_code == 0, edited.output
    assert [r[0] for r in runs(db)][0] == run1 and len(runs(db)) == 2
    run2 = runs(db)[1][0]
    assert run2 != run1 and run2.startswith("ident-")
    assert f"run {run1} ran this spec with other protocol code or templates (direct/judge.j2)" \
        in " ".join(edited.stderr.split())

    source = protos / "mine.py"
    source.write_text(source.read_text() + "\n# a comment is an edit too\n")
    third = cli(*args)
    assert third.exit_code == 0 and len(runs(db)) == 3
    assert "(mine)" in " ".join(third.stderr.split())


def test_a_template_of_another_protocol_does_not_change_the_run(tmp_path):
    prompts = tmp_path / "p"
    shutil.copytree(builtin_dirs()[1] / "debate", prompts / "debate")
    spec = write_spec(tmp_path / "s.toml", name="other", datasets=["boolq"], limit=1,
                      models={"m": mock()}, protocols=[{"name": "direct"}], roles={"judge": "m"})
    db = tmp_path / "s.db"
    assert cli("run", spec, "--db", db, "--prompts", prompts, "-q").exit_code == 0
    (prompts / "debate" / "judge.j2").write_text("{% extends '_base.j2' %}")
    assert cli("run", spec, "--db", db, "--prompts", prompts, "-q").exit_code == 0
    assert len(runs(db)) == 1


def test_a_protocol_entry_may_run_on_some_of_the_datasets(tmp_path):
    from enginekit import load

    from oversight.errors import SpecError

    spec = write_spec(tmp_path / "s.toml", name="split", datasets=["boolq", "lie_detector_statements"],
                      limit=2, models={"m": mock()}, roles={"*": "m"},
                      protocols=[{"name": "direct", "datasets": ["boolq"]},
                                 {"name": "trusted_monitoring", "datasets": ["lie_detector_statements"]}])
    loaded = load(spec)
    by = {(p.protocol.name, p.item.dataset) for p in loaded.plans}
    assert by == {("direct", "boolq"), ("trusted_monitoring", "lie_detector_statements")}
    bad = write_spec(tmp_path / "b.toml", name="b", datasets=["boolq"], limit=1, models={"m": mock()},
                     roles={"*": "m"}, protocols=[{"name": "direct", "datasets": ["gsm8k"]}])
    try:
        load(bad)
    except SpecError as exc:
        assert exc.key == "protocols[0].datasets[0]" and "'gsm8k' is not one of" in exc.message
    else:
        raise AssertionError("an unknown dataset name was accepted")
