"""Review commands end to end on mock runs: report sections, compare, plot, --where, frames."""

import json
import sqlite3

import pytest
from typer.testing import CliRunner

from oversight.analysis import episodes_frame
from oversight.cli import app
from oversight.store import Store

# Two items share one passage (one document), two stand alone.
PASSAGE = "The river town kept its boats red and its bridges grey."
ITEMS = [
    {"id": "a", "question": "Boat colour?", "choices": ["Red", "Blue"], "answer_index": 0, "context": PASSAGE},
    {"id": "b", "question": "Bridge colour?", "choices": ["Green", "Grey"], "answer_index": 1, "context": PASSAGE},
    {"id": "c", "question": "Sky colour?", "choices": ["Blue", "Pink"], "answer_index": 0, "context": "Blue sky."},
    {"id": "d", "question": "Grass colour?", "choices": ["Orange", "Green"], "answer_index": 1, "context": "Green grass."},
]


def spec(name, judge_script, protocols=("direct", "debate")):
    blocks = "\n".join(f'[[protocols]]\nname = "{p}"\n' for p in protocols)
    return f"""
name = "{name}"
concurrency = 1
[data]
datasets = ["items.jsonl"]
[models.deb]
provider = "mock"
options = {{ script = ["I argue: <quote>river town</quote>."] }}
[models.judge]
provider = "mock"
options = {{ script = {json.dumps(judge_script)} }}
[roles]
"*" = "deb"
judge = "judge"
{blocks}
"""


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "100"})


@pytest.fixture
def db(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OVERSIGHT_DB", raising=False)
    (tmp_path / "items.jsonl").write_text("\n".join(json.dumps(i) for i in ITEMS) + "\n")
    # always A: right on a and c, wrong on b and d
    (tmp_path / "a.toml").write_text(spec("always_a", ["Answer: A\nConfidence: 80%"]))
    (tmp_path / "b.toml").write_text(spec("always_b", ["Answer: B\nConfidence: 60%"]))
    path = tmp_path / "s.db"
    for f in ("a.toml", "b.toml"):
        result = cli("run", f, "--db", path, "-q")
        assert result.exit_code == 0, result.output
    return path


def report_json(db, *runs, where=()):
    result = cli("report", *runs, "--db", db, "--json", *[x for w in where for x in ("--where", w)])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_report_sections_from_the_rows(db):
    rep = report_json(db, "always_a")
    assert rep["format"] == "oversight.report/2"
    direct = next(a for a in rep["accuracy"] if a["variant"] == "direct")
    # 2 of 4 right; items a and b share a document: 3 clusters
    assert (direct["accuracy"], direct["parsed"], direct["clusters"]) == (0.5, 4, 3)
    assert direct["lo"] < 0.5 < direct["hi"]
    cal = {c["variant"]: c["calibration"] for c in rep["calibration"]}
    # every answer says 80% on the chosen one, half right: ECE = |0.5 - 0.8|
    assert cal["direct"]["ece"] == pytest.approx(0.3)
    # Brier: right (0.8, 0.2) -> 0.04 + 0.04; wrong -> 0.64 + 0.64; mean 0.68
    assert cal["direct"]["brier"] == pytest.approx(0.68)
    pos = {p["variant"]: p["position"] for p in rep["position"]}
    assert pos["direct"]["first"] == 1.0 and pos["direct"]["first_lo"] < 1.0
    # a debate is run in both orders per item; the judge always picks A: every pair flips
    # the winner but never the answer -> 0 flips
    assert pos["debate"]["flip_pairs"] == 4 and pos["debate"]["flips"] == 0
    assert rep["debaters"] == []  # both debaters are one model: self-play, no ratings


def test_where_filters_on_params(db, tmp_path):
    (tmp_path / "r.toml").write_text(spec("rounds", ["Answer: A\nConfidence: 80%"], ("debate",))
                                     .replace('name = "debate"', 'name = "debate"\nsweep = { "params.rounds" = [1, 2] }'))
    assert cli("run", "r.toml", "--db", db, "-q").exit_code == 0
    every = report_json(db, "rounds")
    assert sorted(a["variant"] for a in every["accuracy"]) == ["debate[rounds=1]", "debate[rounds=2]"]
    two = report_json(db, "rounds", where=["rounds=2"])
    assert [a["variant"] for a in two["accuracy"]] == ["debate[rounds=2]"]
    assert two["settings"]["where"] == {"rounds": 2}
    bad = cli("report", "rounds", "--db", db, "--where", "rounds")
    assert bad.exit_code == 2 and "PARAM=VALUE" in bad.stderr


def test_compare_is_paired_on_shared_items(db):
    result = cli("compare", "always_a", "always_b", "--db", db, "--json")
    assert result.exit_code == 0, result.output
    cmp = json.loads(result.stdout)
    direct = next(p for p in cmp["pairs"] if p["variant_a"] == "direct")
    d = direct["difference"]
    # A right on a, c; B right on b, d: 2 discordant each way, exact McNemar p = 1
    assert (d["shared"], d["a_right_b_wrong"], d["a_wrong_b_right"]) == (4, 2, 2)
    assert d["difference"] == 0 and d["p_value"] == 1.0 and d["test"] == "mcnemar exact"
    assert direct["agreement"]["agree"] == 0 and direct["agreement"]["flip_rate"] == 1.0
    text = cli("compare", "always_a", "always_b", "--db", db)
    assert text.exit_code == 0 and "Paired comparison" in text.stdout
    one = cli("compare", "always_a:direct", "always_a:debate", "--db", db, "--json")
    assert one.exit_code == 0
    (pair,) = json.loads(one.stdout)["pairs"]
    assert (pair["variant_a"], pair["variant_b"]) == ("direct", "debate")
    missing = cli("compare", "always_a:nosuch", "always_b", "--db", db)
    assert missing.exit_code == 2 and "no variant 'nosuch'" in missing.stderr


def test_plot_writes_pngs(db, tmp_path):
    result = cli("plot", "always_a", "always_b", "--db", db, "--out", tmp_path / "figs")
    assert result.exit_code == 0, result.output
    written = sorted(p.name for p in (tmp_path / "figs").iterdir())
    assert written == ["accuracy.png", "reliability.png"]
    for name in written:
        assert (tmp_path / "figs" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_review_commands_never_write(db):
    before = db.read_bytes()
    for args in (("report", "always_a"), ("compare", "always_a", "always_b"),
                 ("export", "always_a", "--format", "jsonl")):
        assert cli(*args, "--db", db).exit_code == 0
    assert db.read_bytes() == before


def test_episodes_frame_has_gold_params_and_models(db):
    df = episodes_frame(Store(db, readonly=True), ["always_a"])
    assert {"gold", "dataset", "document", "model_judge", "model_debater_a", "param_rounds",
            "assignment_label"} <= set(df.columns)
    direct = df[df.protocol == "direct"]
    assert direct.model_judge.unique().tolist() == ["judge"]  # the mock's alias: its model name
    assert direct.param_rounds.isna().all() and df[df.protocol == "debate"].param_rounds.notna().all()
    assert sorted(direct.gold.tolist()) == [0, 0, 1, 1]
    with sqlite3.connect(db) as conn:
        docs = dict(conn.execute("select id, document from items"))
    assert docs["items/a"] == docs["items/b"] != docs["items/c"]
    assert docs["items/a"].startswith("context:")


def test_export_through_the_cli(db, tmp_path):
    import pyarrow.parquet as pq
    out = tmp_path / "e.parquet"
    result = cli("export", "always_a", "--format", "parquet", "--out", out, "--db", db)
    assert result.exit_code == 0, result.output
    table = pq.read_table(out)
    assert table.num_rows == 4 + 8 and "correct" in table.column_names
    for args, message in [(("--format", "parquet"), "give --out"),
                          (("--format", "xml"), "--format: expected one of"),
                          (("--table", "secrets"), "--table: expected one of")]:
        bad = cli("export", "always_a", *args, "--db", db)
        assert bad.exit_code == 2 and message in bad.stderr, bad.output
    logs = cli("export", "always_a", "--format", "inspect", "--out", tmp_path / "logs", "--db", db)
    assert logs.exit_code == 0, logs.output
    assert len(list((tmp_path / "logs").glob("*.eval"))) == 2  # one per variant


def test_import_refuses_bad_arguments_before_writing(tmp_path):
    db = tmp_path / "i.db"
    unknown = cli("import", "nosuch", tmp_path, "--db", db)
    assert unknown.exit_code == 2 and "KIND: expected one of nyu-debate" in unknown.stderr
    missing = cli("import", "nyu-debate", tmp_path / "nowhere", "--db", db)
    assert missing.exit_code == 2 and "expected the release's folder" in missing.stderr
    assert not db.exists()
    empty = cli("import", "nyu-debate", tmp_path, "--db", db)  # a folder with no release in it
    assert empty.exit_code == 2 and str(tmp_path) in empty.stderr
    assert not db.exists()  # checked before a store is made


def test_roc_points_by_hand_and_their_area_is_the_auroc():
    import numpy as np

    from oversight.review.plots import roc_points
    # descending: 3 (attack), 2 (attack) tied with 2 (honest), 1 (honest)
    fpr, tpr = roc_points([1, 2, 2, 3], [False, True, False, True])
    assert fpr.tolist() == [0, 0, 0.5, 1] and tpr.tolist() == [0, 0.5, 1, 1]
    # straight lines between the points: the tie's ½ is the diagonal, area = AUROC 3.5 / 4
    assert float(np.trapezoid(tpr, fpr)) == 0.875
