"""`import_nyu_debate`: the released study of Michael et al. 2023 as ordinary rows, and the
paper's headline numbers reproduced from those rows through the general analysis code.

The release (CC-BY 4.0, github.com/julianmichael/debate @ dafd201, pub/, as staged in
shared/datasets with its MANIFEST) ships with the tests as tests/data/nyu-debate-2023.tar.xz
(2.5 MB) and is unpacked once per module; set OVERSIGHT_NYU_DEBATE to a release folder to
read that instead. It is required, never skipped: these tests are the check that the importer
reproduces the paper.

The paper's numbers (Debate_Helps_Supervise_Unreliable_Experts.pdf in the release's repository,
github.com/julianmichael/debate @ dafd201): Figure 3 (judge accuracy), Figure 4 (consultancy by
the consultant's honesty), Table 1 (n, rounds, ECE of final judgements).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import tarfile
from pathlib import Path

import pytest

from oversight.analysis import accuracy
from oversight.analysis.calibration import calibration, ece_of
from oversight.errors import OversightError
from oversight.importers import ImportFailed, import_nyu_debate
from oversight.importers.nyu_debate import item_id
from oversight.importers.nyu_story import render_story
from oversight.store import Store

TABLES = ("runs", "items", "episodes", "messages", "decisions")
SETTINGS = {  # variant -> the paper's name for the setting
    "consultancy[gpt-4]": "AI Consultancy", "debate[gpt-4]": "AI Debate",
    "consultancy[human]": "Human Consultancy", "debate[human]": "Human Debate"}
# Figure 3; Table 1 (n, rounds, ECE_final); Figure 4 (consultancy: honest, dishonest consultant)
FIGURE_3 = {"AI Consultancy": 80, "AI Debate": 78, "Human Consultancy": 74, "Human Debate": 84}
TABLE_1 = {"AI Consultancy": (76, 4.2, 0.17), "AI Debate": (87, 3.8, 0.16),
           "Human Consultancy": (96, 4.0, 0.17), "Human Debate": (154, 2.7, 0.11)}
FIGURE_4 = {"AI Consultancy": (74, 87), "Human Consultancy": (88, 60)}


PACKED = Path(__file__).parent / "data" / "nyu-debate-2023.tar.xz"


def _release(unpack_to: Path) -> Path:
    if os.environ.get("OVERSIGHT_NYU_DEBATE"):
        found = Path(os.environ["OVERSIGHT_NYU_DEBATE"])
    else:
        with tarfile.open(PACKED, "r:xz") as tar:
            tar.extractall(unpack_to, filter="data")
        found = unpack_to / "nyu-debate-2023"
    if not (found / "debates" / "official").is_dir():
        pytest.fail(f"the NYU debate release is not at {found} (set OVERSIGHT_NYU_DEBATE to "
                    f"a release folder, or restore {PACKED})")
    return found


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    return _release(tmp_path_factory.mktemp("release"))


@pytest.fixture(scope="module")
def imported(release, tmp_path_factory):
    """(store, run id, the store's file): the whole release, imported once for the module."""
    db = tmp_path_factory.mktemp("nyu") / "s.db"
    store = Store(db)
    run_id = import_nyu_debate(store, release)
    yield store, run_id, db
    store.close()


def counts(db: Path) -> dict[str, int]:
    con = sqlite3.connect(db)
    try:
        return {t: con.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in TABLES}
    finally:
        con.close()


def query(db: Path, sql: str, *args) -> list[tuple]:
    con = sqlite3.connect(db)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def paper_rows(store: Store, run_id: str, db: Path) -> dict[str, list[dict]]:
    """Store.results rows of the rooms the paper analysed (includedInPaper), by setting."""
    params = {i: json.loads(p) for i, p in query(db, "SELECT id, params FROM episodes")}
    gold = dict(query(db, "SELECT id, target FROM items"))
    out: dict[str, list[dict]] = {name: [] for name in SETTINGS.values()}
    for row in store.results([run_id]):
        if params[row["id"]]["included_in_paper"]:
            out[SETTINGS[row["variant"]]].append({**row, "params": params[row["id"]],
                                                  "target": int(gold[row["item_id"]])})
    return out


# -- what the import writes ------------------------------------------------------------------

def test_every_room_is_an_episode(imported, release):
    store, run_id, db = imported
    rooms = len(list((release / "debates" / "official").glob("*.json")))
    assert rooms == 631
    assert counts(db) == {"runs": 1, "items": 342, "episodes": 631, "messages": 5192,
                          "decisions": 3113}
    run = store.run(run_id)
    assert run_id.startswith("nyu-debate-2023-") and len(run_id) == len("nyu-debate-2023-") + 10
    assert run["status"] == "finished" and run["spec"]["import"] == "nyu-debate"
    if (release.parent / "MANIFEST.md").is_file():
        assert run["spec"]["commit"] == "dafd201de160da7e3a1e2257270752e33c82a845"
    assert 'kind = "nyu-debate"' in run["spec_toml"]
    by_variant = dict(query(db, "SELECT variant, COUNT(*) FROM episodes GROUP BY variant"))
    assert by_variant == {"consultancy[gpt-4]": 113, "consultancy[human]": 120,
                          "debate[gpt-4]": 113, "debate[human]": 285}
    assert dict(query(db, "SELECT status, COUNT(*) FROM episodes GROUP BY status")) == \
        {"done": 517, "failed": 114}
    # the live judges' turns, then the offline judges' as roles of their own
    live, offline = query(db, "SELECT COUNT(*) FROM decisions WHERE role = 'Judge'"
                              " UNION ALL SELECT COUNT(*) FROM decisions WHERE role != 'Judge'")
    assert (live[0], offline[0]) == (2421, 692)
    assert not query(db, "SELECT 1 FROM decisions WHERE role != 'Judge' "
                         "AND role NOT LIKE 'Offline judge %'")


def test_importing_again_adds_nothing(imported, release):
    store, run_id, db = imported
    before = counts(db)
    assert import_nyu_debate(store, release) == run_id
    assert counts(db) == before


def test_an_episode_carries_the_room(imported):
    store, run_id, db = imported
    (ep_id,) = query(db, "SELECT id FROM episodes WHERE key = 'ambition-8'")[0]
    got = store.episode(ep_id)
    ep, item = got["episode"], got["item"]
    # a human consultancy whose consultant (Debater A) argued the wrong answer, which the
    # item lists second: the room's order is not the item's
    assert ep["protocol"] == "consultancy" and ep["variant"] == "consultancy[human]"
    assert ep["params"]["room_answer_to_choice"] == [1, 0]
    assert item["id"] == item_id("51274", item["input"])
    assert item["target"] == 0 and ep["assignment"] == {"Debater A": {"answer": 1,
                                                                      "correct": False}}
    assert ep["dispositions"] == {"Debater A": "dishonest"} and ep["intent"] == ["Debater A"]
    assert ep["treatment"] == "consultant_incorrect" and ep["decides"] == "Judge"
    assert ep["roles"] == {"Debater A": "human:Gigglesworth Grapevine",
                           "Judge": "human:Hopsy Hummingbird"}
    assert ep["models"]["human:Hopsy Hummingbird"] == {"provider": "human",
                                                       "model": "Hopsy Hummingbird"}
    assert ep["params"]["judge_id"] == "Hopsy Hummingbird"
    assert ep["params"]["included_in_paper"] is True
    assert ep["status"] == "done" and ep["outcome"] is False  # the judge was right
    if "document" in item:
        assert item["document"] == "quality/51274"
    # the judge's distribution after each turn, in the item's order; the last one is final
    made = got["decisions"]
    assert [d["role"] for d in made] == ["Judge"] * 5
    assert made[0]["probabilities"] == [0.37, 0.63] and made[0]["raw"] == "[0.63, 0.37]"
    assert made[0]["choice"] == 1 and made[0]["correct"] is False
    assert made[-1]["choice"] == 0 and made[-1]["correct"] is True
    assert all(d["parsed"] and d["source"] == "stated" and d["kind"] == d["name"] == "answer"
               for d in made)
    rows = {r["id"]: r for r in store.results([run_id])}
    assert rows[ep_id]["chosen"] == 0 and rows[ep_id]["correct"] is True


def test_a_quote_is_the_story_text_its_span_covers(imported):
    store, run_id, db = imported
    (ep_id,) = query(db, "SELECT id FROM episodes WHERE key = 'ambition-8'")[0]
    got = store.episode(ep_id)
    first = got["messages"][0]
    assert first["role"] == "Debater A" and first["round"] == 1
    quote = first["quotes"][0]
    assert quote["span"] == [3557, 3567] and quote["status"] == "verified"
    assert quote["text"] == '"Miss, do you speak my language?"'
    assert got["item"]["context"][quote["start"]:quote["end"]] == quote["text"]
    assert f"<quote>{quote['text']}</quote>" in first["content"]
    assert f"<v_quote>{quote['text']}</v_quote>" in first["shown"]
    # every quote of every room: verified, and exactly the item's context where it says
    checked = 0
    for key, context, raw in query(db, "SELECT e.key, i.context, m.quotes FROM messages m "
                                       "JOIN episodes e ON e.id = m.episode_id "
                                       "JOIN items i ON i.id = e.item_id"):
        for q in json.loads(raw):
            if "span" in q:
                assert q["status"] == "verified", (key, q)
                assert context[q["start"]:q["end"]] == q["text"], (key, q)
                checked += 1
    assert checked == 8329


def test_unjudged_and_unfinished_rooms_fail_with_the_reason(imported):
    store, run_id, db = imported
    errors = dict(query(db, "SELECT key, error FROM episodes WHERE status = 'failed'"))
    assert "status WaitingToBegin" in errors["grifters-asteroid-1"]
    assert "offline" in errors["pied-piper-of-mars-3"]  # no live judge: offline judges only
    roles = {r for (r,) in query(db, "SELECT d.role FROM decisions d JOIN episodes e ON "
                                     "e.id = d.episode_id WHERE e.key = 'pied-piper-of-mars-3'")}
    assert roles == {"Offline judge Quibble Quackenbush", "Offline judge Izzy Icetoes"}
    rows = [r for r in store.results([run_id]) if r["status"] == "failed"]
    assert len(rows) == 114 and accuracy(rows).n == 0  # never scored


def test_a_fifty_fifty_final_judgement_is_wrong_not_unparsed(imported):
    store, run_id, db = imported
    ties = [r for r in store.results([run_id])
            if r["status"] == "done" and r["probabilities"] == [0.5, 0.5]]
    assert ties
    assert all(r["parsed"] and r["chosen"] is None and r["correct"] is False for r in ties)


# -- the paper, reproduced ------------------------------------------------------------------

def test_figure_3_judge_accuracy(imported):
    rows = paper_rows(*imported)
    for name, paper in FIGURE_3.items():
        est = accuracy(rows[name])
        print(f"{name}: n={est.n} accuracy={est.mean:.3f} [{est.lo:.3f}, {est.hi:.3f}] "
              f"(paper {paper}%)")
        assert est.n == TABLE_1[name][0] and est.unparsed == 0
        assert abs(round(est.mean * 100) - paper) <= 1


def test_figure_4_consultancy_by_the_consultants_honesty(imported):
    rows = paper_rows(*imported)
    for name, (honest, dishonest) in FIGURE_4.items():
        got = {t: accuracy([r for r in rows[name] if r["treatment"] == t]).mean
               for t in ("consultant_correct", "consultant_incorrect")}
        print(f"{name}: honest consultant {got['consultant_correct']:.3f} (paper {honest}%), "
              f"dishonest {got['consultant_incorrect']:.3f} (paper {dishonest}%)")
        assert abs(round(got["consultant_correct"] * 100) - honest) <= 1
        assert abs(round(got["consultant_incorrect"] * 100) - dishonest) <= 1


def test_table_1_rounds(imported):
    rows = paper_rows(*imported)
    for name, (n, rounds, _) in TABLE_1.items():
        mean = sum(r["params"]["speech_rounds"] for r in rows[name]) / len(rows[name])
        print(f"{name}: n={len(rows[name])} rounds={mean:.2f} (paper {rounds})")
        assert len(rows[name]) == n and round(mean, 1) == rounds


def test_table_1_calibration_of_final_judgements(imported):
    """Table 1's ECE_final is that of the paper's code (AnalyzeResults.scala, ten bins
    [k/10, (k+1)/10)): confidence max(p, 1 - p) with p the final probability on the correct
    answer, correctness 1, 0, or 0.5 for a 50/50. For two answers that is the chosen answer's
    probability, but computed as 1 - p: a judgement stored as [0.6, 0.4000000000000001] has
    confidence 0.5999999999999999 and falls in the 50-60% bin. The chosen answer's probability
    as stored (calibration's default; a 50/50 then counts as wrong) puts six judgements in the
    next bin up and gives 0.14 / 0.16 / 0.15 / 0.12: the table depends on that rounding."""
    rows = paper_rows(*imported)
    for name, (_, _, paper) in TABLE_1.items():
        p_right = [r["probabilities"][r["target"]] for r in rows[name]]
        paper_way = ece_of([max(p, 1 - p) for p in p_right],
                           [1.0 if p > 0.5 else 0.0 if p < 0.5 else 0.5 for p in p_right]).ece
        chosen = calibration(rows[name], bins=10)
        each = calibration(rows[name], bins=10, confidence="each")
        answer_a = ece_of([r["probabilities"][0] for r in rows[name]],
                          [float(r["target"] == 0) for r in rows[name]]).ece
        print(f"{name}: ECE of the paper's code {paper_way:.3f} (Table 1: {paper}); chosen "
              f"answer {chosen.ece:.3f} (n={chosen.n}), answer A {answer_a:.3f}, all classes "
              f"{each.ece:.3f}")
        assert chosen.n == len(rows[name])
        assert abs(round(paper_way, 2) - paper) <= 0.01


# -- the story and malformed releases -------------------------------------------------------

def test_render_story_rebuilds_text_and_keeps_each_tokens_characters():
    tokens = ["``", "I", "ca", "n't", "-LRB-", "really", "-RRB-", "go", "--", "yet", ",", "''",
              "Tr", "`", "en", "said", ".", "\n", "\n", "It", "was", "Wass", "'", "gon", "na",
              "work", "."]
    story = render_story(tokens)
    assert story.style == "ptb"
    assert story.text == ("\"I can't (really) go—yet,\" Tr'en said.\n\n"
                          "It was Wass' gonna work.")
    s, e = story.span(1, 7)
    assert story.text[s:e] == "I can't (really)"
    assert story.span(17, 19) is None  # only line breaks
    assert story.span(25, 99) == story.span(25, 27)  # the end is clamped, as the release does
    chunked = render_story(["TITLE", "\n", "By A. Writer", "\n", "\n", " It began.", "And it",
                            "\n", " went on."])
    assert chunked.style == "chunk"
    assert chunked.text == "TITLE\nBy A. Writer\n\nIt began. And it went on."


def _mini_release(release: Path, dest: Path, rooms: list[str]) -> Path:
    (dest / "debates" / "official").mkdir(parents=True)
    for room in rooms:
        shutil.copy(release / "debates" / "official" / f"{room}.json",
                    dest / "debates" / "official" / f"{room}.json")
    meta = json.loads((release / "debates-metadata.json").read_text())
    (dest / "debates-metadata.json").write_text(json.dumps([m for m in meta
                                                             if m["name"] in rooms]))
    return dest


ROOMS = ["ambition-8", "pied-piper-of-mars-3", "grifters-asteroid-1"]


def test_a_small_release_imports(release, tmp_path):
    folder = _mini_release(release, tmp_path / "rel", ROOMS)
    db = tmp_path / "s.db"
    store = Store(db)
    run_id = import_nyu_debate(store, folder)
    full = counts(db)
    assert full["episodes"] == 3
    assert import_nyu_debate(store, folder) == run_id
    assert store.run(run_id)["spec"]["commit"] is None  # no MANIFEST.md beside it
    # a run missing an episode (another importer's transaction meanwhile): the missing rows
    # are added, the present ones left as they are, none twice
    con = sqlite3.connect(db)
    with con:
        (gone,) = con.execute("SELECT id FROM episodes WHERE key = 'ambition-8'").fetchone()
        for table in ("messages", "decisions"):
            con.execute(f"DELETE FROM {table} WHERE episode_id = ?", (gone,))
        con.execute("DELETE FROM episodes WHERE id = ?", (gone,))
    con.close()
    assert counts(db)["episodes"] == 2
    assert import_nyu_debate(store, folder) == run_id
    assert counts(db) == full


def _edit(path: Path, change) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def _set_distribution(doc):
    doc["rounds"][0]["JudgeFeedback"]["distribution"] = [1.0]


def _set_span(doc):
    doc["rounds"][1]["SequentialSpeeches"]["speeches"]["0"]["content"][1]["Quote"]["span"] = \
        [99999, 100000]


@pytest.mark.parametrize(("change", "where", "key"), [
    (_set_distribution, "ambition-8.json", "rounds[0].JudgeFeedback.distribution"),
    (_set_span, "ambition-8.json",
     "rounds[1].SequentialSpeeches.speeches.0.content[1].Quote.span"),
    (lambda doc: doc["setup"].pop("answers"), "ambition-8.json", "setup.answers"),
    (lambda doc: doc["rounds"].append({"Mystery": {}}), "ambition-8.json", "rounds[9]"),
])
def test_a_malformed_room_is_refused_before_anything_is_written(release, tmp_path, change,
                                                                 where, key):
    folder = _mini_release(release, tmp_path / "rel", ROOMS)
    _edit(folder / "debates" / "official" / "ambition-8.json", change)
    store = Store(tmp_path / "s.db")
    with pytest.raises(ImportFailed) as failed:
        import_nyu_debate(store, folder)
    assert where in str(failed.value) and f": {key}: expected " in str(failed.value)
    assert failed.value.key == key
    assert isinstance(failed.value, ValueError) and isinstance(failed.value, OversightError)
    assert counts(tmp_path / "s.db") == dict.fromkeys(TABLES, 0)


def test_a_different_item_under_the_same_id_is_refused(release, tmp_path):
    """Items are shared and never rewritten: an item stored by another version of the importer
    (another rendering of its story) stops the import instead of misplacing its quotes."""
    folder = _mini_release(release, tmp_path / "rel", ["ambition-8"])
    doc = json.loads((folder / "debates" / "official" / "ambition-8.json").read_text())
    store = Store(tmp_path / "s.db")
    key = item_id("51274", doc["setup"]["question"])
    store.save_items([{"id": key, "dataset": "nyu-debate-2023", "input": "?", "kind": "choice",
                       "choices": doc["setup"]["answers"][::-1], "target": 0,
                       "context": "another rendering", "meta": {}}])
    with pytest.raises(ImportFailed, match="another version of the importer"):
        import_nyu_debate(store, folder)
    assert counts(tmp_path / "s.db") == {**dict.fromkeys(TABLES, 0), "items": 1}


def test_missing_and_unreadable_files_are_named(release, tmp_path):
    folder = _mini_release(release, tmp_path / "rel", ROOMS)
    (folder / "debates" / "official" / "grifters-asteroid-1.json").unlink()
    store = Store(tmp_path / "s.db")
    with pytest.raises(ImportFailed, match="grifters-asteroid-1.json"):
        import_nyu_debate(store, folder)
    folder = _mini_release(release, tmp_path / "rel2", ROOMS)
    (folder / "debates" / "official" / "ambition-8.json").write_text("{not json")
    with pytest.raises(ImportFailed, match=r"ambition-8\.json: \(file\): expected JSON"):
        import_nyu_debate(store, folder)
    with pytest.raises(ImportFailed, match="expected the release's folder"):
        import_nyu_debate(store, tmp_path / "nowhere")
    assert counts(tmp_path / "s.db") == dict.fromkeys(TABLES, 0)
