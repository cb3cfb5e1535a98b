"""Exports (oversight.review.export over oversight.store.streams): every table in every format,
read back with pyarrow, pandas, csv and json; nulls, unicode, booleans and JSON columns survive;
chunks; several runs. The store is built through the Store API (no protocol runs)."""

from __future__ import annotations

import csv
import json
import math
import sqlite3
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from oversight.review.export import FORMATS, Exporter, ExportError, export, register
from oversight.store import Store, decisions, messages, model_calls
from oversight.store.streams import TABLES, fields, stream

SURROGATE = "bad \udc80 byte"  # a lone surrogate, as a broken reply can hold
ESCAPED = "bad \\udc80 byte"  # …and as the store keeps it in a text column
TRICKY = 'He said, "yes, 🙂"\nthen left;\r\nthé end'  # commas, quotes, newlines, emoji
R1_EXTRA = 9  # plain episodes beyond the four hand-made ones: more rows than a chunk
R2_EPISODES = 3


def _episode(run_id: str, key: str, item_id: str, **kw) -> dict:
    row = {"run_id": run_id, "key": key, "item_id": item_id, "protocol": "direct",
           "variant": "direct", "params": {}, "assignment": {}, "dispositions": {"judge": "honest"},
           "treatment": "none", "decides": "judge", "intent": [], "outcome": None,
           "roles": {"judge": "j"}, "models": {"j": {"provider": "mock", "model": "m-1"}},
           "seed": 0}
    return {**row, **kw}


def _decision(episode_id: int, idx: int, **kw) -> dict:
    row = {"episode_id": episode_id, "idx": idx, "role": "judge", "kind": "answer",
           "name": "answer", "parsed": True, "raw": "Answer: A", "source": "stated"}
    return {**row, **kw}


def _call(episode_id: int, **kw) -> dict:
    row = {"episode_id": episode_id, "role": "judge", "provider": "mock", "model": "m-1",
           "request": {"messages": [{"role": "user", "content": "Q?"}], "max_tokens": 16},
           "response": {"choices": [{"text": "Answer: A"}]}, "text": "Answer: A",
           "tokens_in": 10, "tokens_out": 3, "latency_s": 0.25, "attempt": 1,
           "cost_usd": 0.001, "cache_hit": False}
    return {**row, **kw}


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> Path:
    """Two runs. r1: a debate with two answers and a flag between them (the last answer is
    the final one), a failed episode (no decision), an unparsed answer, a free-form answer
    to an item with no choices, and R1_EXTRA plain ones; r2: R2_EPISODES plain ones."""
    path = tmp_path_factory.mktemp("export") / "store.db"
    store = Store(path)
    for run_id in ("r1", "r2"):
        store.save_run({"id": run_id, "name": run_id, "spec_toml": "", "spec_hash": run_id,
                        "package_version": "0.1.0"})
    store.save_items([
        {"id": "d/1", "dataset": "d", "input": "Is it?", "choices": ["Yes", "No"], "target": 0,
         "kind": "choice", "context": "A story, long.", "fields": {"document": "story-1"}},
        {"id": "d/2", "dataset": "d", "input": "Which?", "choices": ["a", "b", "c", "d"],
         "target": 2, "kind": "choice", "context": "A story, long.",
         "fields": {"document": "story-1"}},
        {"id": "d/3", "dataset": "d", "input": "Capital of France?", "choices": None,
         "target": "Paris", "kind": "answer", "context": None, "fields": None},
    ])
    debate = _episode("r1", "e1", "d/1", protocol="debate", variant="debate[rounds=2]",
                      params={"rounds": 2}, treatment="a_correct", intent=["debater_b"],
                      outcome=False, assignment={"debater_a": {"answer": 0, "correct": True},
                                                 "debater_b": {"answer": 1, "correct": False}},
                      roles={"debater_a": "s", "debater_b": "s", "judge": "j"})
    planned = [debate, _episode("r1", "e2", "d/2"), _episode("r1", "e3", "d/1"),
               _episode("r1", "e4", "d/3", outcome=True)]
    planned += [_episode("r1", f"x{i}", "d/2") for i in range(R1_EXTRA)]
    ids = {k: i for k, (i, _) in store.create_episodes("r1", planned).items()}
    ids.update({k: i for k, (i, _) in store.create_episodes(
        "r2", [_episode("r2", f"y{i}", "d/1", params=None)  # stored as the JSON text null
               for i in range(R2_EPISODES)]).items()})

    w = store.writer()
    e1, e2, e3, e4 = ids["e1"], ids["e2"], ids["e3"], ids["e4"]
    w.insert(messages, {"episode_id": e1, "idx": 0, "role": "debater_a", "kind": "speech",
                        "round": 1, "model": "s", "content": TRICKY, "shown": TRICKY,
                        "visible_to": None, "quotes": [{"text": "long", "status": "verified"}],
                        "tokens_in": 5, "tokens_out": None, "latency_s": 0.5})
    w.insert(messages, {"episode_id": e1, "idx": 1, "role": "debater_b", "kind": "speech",
                        "round": 1, "model": "s", "content": SURROGATE, "shown": SURROGATE,
                        "visible_to": ["judge", "debater_b"], "quotes": []})
    w.insert(decisions, _decision(e1, 0, choice=1, correct=False, probabilities=[0.4, 0.6]))
    w.insert(decisions, _decision(e1, 1, kind="flag", name="flag", value=1.0,
                                  probabilities=[0.2, 0.8], source="logprobs"))
    w.insert(decisions, _decision(e1, 2, choice=0, correct=True, probabilities=[0.9, 0.1],
                                  rationale=TRICKY))
    w.insert(decisions, _decision(e1, 3, kind="score", name="suspicion", value=math.inf,
                                  scale_lo=0.0, scale_hi=10.0,
                                  probabilities=[math.nan, 1.0]))  # json.dumps writes NaN
    w.insert(decisions, _decision(e3, 0, parsed=False, raw="I cannot say,\nsorry"))
    w.insert(decisions, _decision(e4, 0, text="Paris 🗼", correct=True))
    w.insert(model_calls, _call(e1, attempt=1, response=None, text=None, tokens_in=None,
                                tokens_out=None, cost_usd=None, error="429, slow down",
                                error_kind="rate_limit"))
    w.insert(model_calls, _call(e1, attempt=2, cache_hit=True, request={
        "messages": [{"role": "user", "content": SURROGATE + " 🙂"}], "max_tokens": 16}))
    w.insert(model_calls, _call(e2, error="boom", response=None))
    for key, eid in ids.items():
        failed = key == "e2"
        w.update_episode(eid, {"status": "failed" if failed else "done",
                               "error": "ModelError: boom" if failed else None,
                               "n_calls": 1, "tokens_in": 10, "tokens_out": 3,
                               "cost_usd": None if failed else 0.001, "duration_s": 1.5})
    w.flush()
    store.close()
    return path


@pytest.fixture()
def store(db):
    s = Store(db, readonly=True)  # exports only ever read
    yield s
    s.close()


# -- reading an export back ---------------------------------------------------------------

def _typed(kind: str, text: str):
    """A CSV field back to its value (the conventions in review/export.py)."""
    if text == "":
        return None
    if kind == "json":
        return json.loads(text)
    if kind == "bool":
        return {"true": True, "false": False}[text]
    if kind == "int":
        return int(text)
    if kind == "float":
        return float(text)
    return text


def read_back(path: Path, fmt: str, table: str) -> list[dict]:
    """Rows as dicts of Python values, JSON columns decoded."""
    kinds = {f.name: f.kind for f in fields(table)}
    if fmt == "parquet":
        rows = pq.read_table(path).to_pylist()
        return [{k: json.loads(v) if kinds[k] == "json" and v is not None else v
                 for k, v in r.items()} for r in rows]
    if fmt == "jsonl":
        with open(path, encoding="utf-8") as fh:
            return [json.loads(line) for line in fh]
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        return [{k: _typed(kinds[k], v) for k, v in zip(header, row, strict=True)}
                for row in reader]


def expected(store, table: str, run_ids) -> list[dict]:
    """What the stream holds, JSON decoded: what every format must give back."""
    names = [f.name for f in fields(table)]
    kinds = [f.kind for f in fields(table)]
    return [{n: json.loads(v) if k == "json" and v is not None else v
             for n, k, v in zip(names, kinds, row, strict=True)}
            for chunk in stream(store, table, run_ids) for row in chunk]


def same(a, b) -> bool:
    """Equality where NaN equals NaN (a JSON column may hold one)."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


# -- every table, every format ------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
@pytest.mark.parametrize("table", TABLES)
def test_every_table_round_trips(store, tmp_path, table, fmt):
    out = tmp_path / f"{table}.{fmt}"
    n = export(store, ["r1", "r2"], table, fmt, out, chunk_size=4)
    want = expected(store, table, ["r1", "r2"])
    got = read_back(out, fmt, table)
    assert n == len(want) == len(got) > 0
    assert [list(r) for r in got] == [[f.name for f in fields(table)]] * n  # column order
    for g, w in zip(got, want, strict=True):
        for k in w:
            if fmt == "jsonl" and isinstance(w[k], float) and not math.isfinite(w[k]):
                assert g[k] is None, k  # strict JSON: no NaN or Infinity
            elif fmt == "jsonl" and k == "probabilities" and w[k] and math.isnan(w[k][0]):
                assert g[k] == [None, 1.0]
            else:
                assert same(g[k], w[k]), (k, g[k], w[k])
    assert not list(tmp_path.glob(".*partial"))


def test_episode_rows(store, tmp_path):
    """Item, final answer, truths and nulls, in each format."""
    for fmt in FORMATS:
        out = tmp_path / f"episodes.{fmt}"
        export(store, "r1", "episodes", fmt, out)
        rows = {r["key"]: r for r in read_back(out, fmt, "episodes")}
        assert len(rows) == 4 + R1_EXTRA
        e1, e2, e3, e4 = rows["e1"], rows["e2"], rows["e3"], rows["e4"]
        assert "lease_owner" not in e1 and "lease_expires" not in e1
        # the last answer of the deciding role, not the flag or score after it
        assert (e1["parsed"], e1["chosen"], e1["correct"]) == (True, 0, True), fmt
        assert e1["probabilities"] == [0.9, 0.1]
        assert e1["params"] == {"rounds": 2} and e1["intent"] == ["debater_b"]
        assert e1["assignment"]["debater_b"] == {"answer": 1, "correct": False}
        assert e1["roles"] == {"debater_a": "s", "debater_b": "s", "judge": "j"}
        assert e1["models"] == {"j": {"provider": "mock", "model": "m-1"}}
        assert e1["outcome"] is False and e4["outcome"] is True
        assert (e1["dataset"], e1["item_kind"], e1["target"], e1["n_choices"]) == ("d", "choice", 0, 2)
        assert e1["document"] == "story-1"
        # failed: no decision at all; null, never 0 or ""
        assert e2["status"] == "failed" and e2["error"] == "ModelError: boom"
        for k in ("parsed", "chosen", "correct", "probabilities", "answer_text", "cost_usd",
                  "outcome", "source_episode_id"):
            assert e2[k] is None, (fmt, k)
        assert e2["target"] == 2 and e2["n_choices"] == 4
        # unparsed: parsed false (not null), nothing chosen, correctness unknown
        assert (e3["parsed"], e3["chosen"], e3["correct"]) == (False, None, None)
        # a free-form answer to an item without choices or document
        assert (e4["answer_text"], e4["chosen"], e4["target"]) == ("Paris 🗼", None, "Paris")
        assert e4["n_choices"] is None and e4["document"] is None
        assert e4["item_kind"] == "answer"


def test_text_survives_every_format(store, tmp_path):
    """Commas, quotes, CR/LF and emoji as written; a lone surrogate as the store keeps it
    (escaped in text columns, a JSON escape inside JSON columns)."""
    for fmt in FORMATS:
        out = tmp_path / f"m.{fmt}"
        export(store, ["r1"], "messages", fmt, out)
        m0, m1 = read_back(out, fmt, "messages")
        assert m0["content"] == m0["shown"] == TRICKY, fmt
        assert m1["content"] == ESCAPED
        assert m0["visible_to"] is None and m1["visible_to"] == ["judge", "debater_b"]
        assert m0["quotes"] == [{"text": "long", "status": "verified"}] and m1["quotes"] == []
        assert (m0["tokens_in"], m0["tokens_out"], m0["round"]) == (5, None, 1)
        assert m1["latency_s"] is None
        out = tmp_path / f"c.{fmt}"
        export(store, ["r1"], "calls", fmt, out)
        calls = read_back(out, fmt, "calls")
        assert calls[1]["request"]["messages"][0]["content"] == SURROGATE + " 🙂"
        assert [c["cache_hit"] for c in calls] == [False, True, False]
        assert calls[0]["response"] is None and calls[0]["error"] == "429, slow down"
        assert calls[0]["cost_usd"] is None and calls[1]["cost_usd"] == 0.001


def test_csv_conventions_and_pandas(store, tmp_path):
    out = tmp_path / "d.csv"
    export(store, ["r1"], "decisions", "csv", out)
    raw = out.read_text(encoding="utf-8")
    assert raw.startswith("id,episode_id,run_id,idx,role,kind,name,parsed,")
    with open(out, encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows[0]["parsed"] == "true" and rows[0]["correct"] == "false"
    assert rows[1]["correct"] == "" and rows[1]["choice"] == ""  # NULL: an empty field
    assert rows[2]["rationale"] == TRICKY
    assert json.loads(rows[0]["probabilities"]) == [0.4, 0.6]
    df = pd.read_csv(out)
    assert df["parsed"].tolist()[:3] == [True, True, True]
    assert pd.isna(df.loc[1, "choice"]) and df.loc[2, "rationale"] == TRICKY


def test_jsonl_is_strict_json(store, tmp_path):
    out = tmp_path / "d.jsonl"
    export(store, ["r1"], "decisions", "jsonl", out)

    def refuse(name):
        raise AssertionError(f"non-standard JSON constant {name}")

    rows = [json.loads(line, parse_constant=refuse) for line in out.read_text().splitlines()]
    score = next(r for r in rows if r["kind"] == "score")
    assert score["value"] is None and score["probabilities"] == [None, 1.0]
    assert isinstance(rows[0]["probabilities"], list)  # nested JSON, not a string


def test_parquet_schema_and_nulls(store, tmp_path):
    out = tmp_path / "e.parquet"
    export(store, ["r1", "r2"], "episodes", "parquet", out)
    table = pq.read_table(out)
    types = {f.name: str(f.type) for f in table.schema}
    assert types["id"] == "int64" and types["cost_usd"] == "double"
    assert types["parsed"] == "bool" and types["outcome"] == "bool"
    assert types["models"] == "string" and types["target"] == "string"
    meta = table.schema.metadata
    assert meta[b"oversight.table"] == b"episodes"
    assert "models" in json.loads(meta[b"oversight.json_columns"])
    df = table.to_pandas()
    failed = df[df["key"] == "e2"].iloc[0]
    assert pd.isna(failed["parsed"]) and pd.isna(failed["cost_usd"]) and pd.isna(failed["chosen"])
    assert table.column("cost_usd").null_count == 1  # the failed episode, never 0.0
    out = tmp_path / "d.parquet"
    export(store, ["r1"], "decisions", "parquet", out)
    values = pq.read_table(out).column("value").to_pylist()
    assert math.isinf(values[3]) and values[0] is None  # floats as they are, nulls null


def test_chunks_and_row_groups(store, tmp_path):
    chunks = list(stream(store, "episodes", ["r1"], chunk_size=5))
    n = 4 + R1_EXTRA
    assert [len(c) for c in chunks] == [5] * (n // 5) + ([n % 5] if n % 5 else [])
    ids = [row[0] for c in chunks for row in c]
    assert ids == sorted(ids)
    out = tmp_path / "e.parquet"
    assert export(store, ["r1"], "episodes", "parquet", out, chunk_size=5) == n
    assert pq.ParquetFile(out).metadata.num_row_groups == len(chunks)
    with pytest.raises(ValueError):
        stream(store, "episodes", ["r1"], chunk_size=0)


def test_runs_are_exported_together_or_apart(store, tmp_path):
    """r1 is most of the store (read by walking the table), r2 a fifth of it (read through
    the run index and sorted): both ways give the same ordered rows."""
    per_run = {}
    for run_id in ("r1", "r2"):
        out = tmp_path / f"{run_id}.jsonl"
        export(store, [run_id], "episodes", "jsonl", out)
        per_run[run_id] = read_back(out, "jsonl", "episodes")
        assert {r["run_id"] for r in per_run[run_id]} == {run_id}
    assert len(per_run["r2"]) == R2_EPISODES
    con = sqlite3.connect(store.url.removeprefix("sqlite:///"))
    try:
        stored = con.execute("SELECT DISTINCT params FROM episodes WHERE run_id = 'r2'").fetchall()
    finally:
        con.close()
    assert stored == [("null",)]
    assert [r["params"] for r in per_run["r2"]] == [None] * R2_EPISODES  # SQL NULL, as stated
    out = tmp_path / "both.jsonl"
    export(store, ["r1", "r2"], "episodes", "jsonl", out)
    both = read_back(out, "jsonl", "episodes")
    assert both == sorted(per_run["r1"] + per_run["r2"], key=lambda r: r["id"])
    for table in ("messages", "decisions", "calls"):
        rows = [row for c in stream(store, table, ["r2"]) for row in c]
        assert rows == []  # r2's episodes have none
    assert export(store, [], "episodes", "csv", tmp_path / "none.csv") == 0
    assert (tmp_path / "none.csv").read_text().startswith("id,run_id,key,")
    assert export(store, ["no-such-run"], "episodes", "parquet", tmp_path / "none.parquet") == 0
    assert pq.read_table(tmp_path / "none.parquet").num_rows == 0


def test_columns_are_the_tables_own():
    calls = [f.name for f in fields("calls")]
    assert calls == [c.name for c in model_calls.columns][:2] + ["run_id"] + [
        c.name for c in model_calls.columns][2:]
    assert [f.name for f in fields("decisions")][:3] == ["id", "episode_id", "run_id"]
    assert [f.kind for f in fields("episodes") if f.name in ("models", "outcome", "seed")] == [
        "bool", "json", "int"]


def test_stdout_and_refusals(store, tmp_path, capsysbinary):
    assert export(store, ["r1"], "decisions", "jsonl", "-") == 6
    lines = capsysbinary.readouterr().out.decode("utf-8").splitlines()
    assert len(lines) == 6 and json.loads(lines[2])["rationale"] == TRICKY
    with pytest.raises(ExportError, match="binary"):
        export(store, ["r1"], "episodes", "parquet", "-")
    with pytest.raises(ExportError, match="jsonl, csv, parquet"):
        export(store, ["r1"], "episodes", "xml", tmp_path / "x.xml")
    with pytest.raises(ExportError, match="episodes, messages, decisions, calls"):
        export(store, ["r1"], "verdicts", "csv", tmp_path / "x.csv")
    with pytest.raises(ExportError, match="folder"):
        export(store, ["r1"], "episodes", "csv", tmp_path)


def test_a_failed_export_leaves_no_file(store, tmp_path):
    """A renderer that fails midway: neither the file nor its temporary is left behind, and
    the registry takes new formats."""
    def broken(chunks, cols, sink, table):
        for _ in chunks:
            sink.write("half a row")
            raise RuntimeError("disk on fire")
        return 0

    register(Exporter("broken", ".txt", False, broken))
    try:
        with pytest.raises(RuntimeError, match="disk on fire"):
            export(store, ["r1"], "episodes", "broken", tmp_path / "out.txt")
    finally:
        del FORMATS["broken"]
    assert list(tmp_path.iterdir()) == []
