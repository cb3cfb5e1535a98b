"""The JSONL loader: shipped datasets load; malformed rows are rejected with file, line, field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from oversight.errors import DataError
from oversight.tasks.items import BUILTIN_DATASETS, builtin_path, load_dataset, load_jsonl

EXPECTED_ROWS = {"boolq": 300, "truthfulqa_mc1": 300, "arc_challenge": 300, "quality_hard": 12,
                 "mmlu_redux_errors": 300, "sycophancy_anthropic": 150}
WITH_CONTEXT = {"boolq", "quality_hard"}
# The flagging sets and gsm8k: (rows, kind, labels, how many items the dataset labels bad)
OTHER_SHAPES = {"gsm8k": (300, "answer", None, None),
                "quixbugs_python": (80, "label", ("buggy", "correct"), 40),
                "bigbench_mistake": (300, "label", ("mistake", "no_mistake"), 246),
                "lie_detector_statements": (300, "label", ("truthful", "lie"), 150)}


def good_row(i: int = 1, **over) -> dict:
    row = {"id": f"q{i}", "question": f"Question {i}?", "choices": ["yes", "no", "maybe"],
           "answer_index": 1, "context": "Some passage.", "source": "test", "license": "CC0"}
    row.update(over)
    return row


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_rows(path: Path, rows: list[dict]) -> Path:
    return write_lines(path, [json.dumps(r) for r in rows])


# -- the shipped datasets -----------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(EXPECTED_ROWS))
def test_shipped_dataset_loads(name):
    assert name in BUILTIN_DATASETS
    items = load_dataset(name)
    assert len(items) == EXPECTED_ROWS[name]
    assert len({it.id for it in items}) == len(items)
    for it in items:
        assert it.dataset == name
        assert it.key == f"{name}/{it.id}"
        assert len(it.choices) >= 2
        assert 0 <= it.answer_index < len(it.choices)
        assert it.question.strip()
        assert it.letters == [chr(65 + i) for i in range(len(it.choices))]
        if name in WITH_CONTEXT:
            assert it.context and it.context.strip()


def test_shipped_dataset_matches_the_file_line_by_line():
    path = builtin_path("truthfulqa_mc1")
    raw = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    items = load_dataset("truthfulqa_mc1")
    assert [it.id for it in items] == [str(r["id"]) for r in raw]
    assert [it.answer_index for it in items] == [r["answer_index"] for r in raw]
    assert [list(it.choices) for it in items] == [r["choices"] for r in raw]


def test_good_file_loads_with_stem_as_dataset_name(tmp_path):
    path = write_rows(tmp_path / "mine.jsonl", [good_row(1), good_row(2, context=None)])
    items = load_jsonl(path)
    assert [it.key for it in items] == ["mine/q1", "mine/q2"]
    assert items[0].choices == ("yes", "no", "maybe")
    assert items[0].context == "Some passage."
    assert items[1].context is None


def test_blank_lines_are_skipped_but_line_numbers_stay_true(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", [json.dumps(good_row(1)), "", "   ",
                                              json.dumps(good_row(2, answer_index=7))])
    with pytest.raises(DataError) as e:
        load_jsonl(path)
    assert e.value.line == 4
    assert e.value.field == "answer_index"


def test_relative_path_resolves_from_base_dir(tmp_path):
    (tmp_path / "sub").mkdir()
    write_rows(tmp_path / "sub" / "x.jsonl", [good_row(1)])
    items = load_dataset("sub/x.jsonl", base_dir=tmp_path)
    assert [it.key for it in items] == ["x/q1"]


def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_dataset("nope.jsonl", base_dir=tmp_path)


# -- malformed rows: file, line and field in the error --------------------------------------

def assert_data_error(exc: DataError, path: Path, line: int, field: str) -> None:
    assert exc.file == str(path)
    assert exc.line == line
    assert exc.field == field
    msg = str(exc)
    assert str(path) in msg and f":{line}:" in msg and f"'{field}'" in msg


def test_invalid_json_on_line_3(tmp_path):
    path = write_lines(tmp_path / "bad.jsonl", [json.dumps(good_row(1)), json.dumps(good_row(2)),
                                                '{"id": "q3", "question": "x?", '])
    with pytest.raises(DataError) as e:
        load_jsonl(path)
    assert_data_error(e.value, path, 3, "<row>")
    assert "invalid JSON" in str(e.value)


@pytest.mark.parametrize("absent", ["delete", None])
def test_a_choice_item_without_an_answer_has_no_gold(tmp_path, absent):
    row = good_row(2)
    if absent == "delete":
        del row["answer_index"]
    else:
        row["answer_index"] = None
    item = load_jsonl(write_rows(tmp_path / "d.jsonl", [good_row(1), row]))[1]
    assert (item.kind, item.target, item.answer_index) == ("choice", None, None)


@pytest.mark.parametrize("value", [3, -1, 100])
def test_answer_index_out_of_range(tmp_path, value):
    path = write_rows(tmp_path / "bad.jsonl", [good_row(1, answer_index=value)])
    with pytest.raises(DataError) as e:
        load_jsonl(path)
    assert_data_error(e.value, path, 1, "answer_index")
    assert "0..2" in str(e.value)


def test_answer_index_at_the_top_of_the_range_is_accepted(tmp_path):
    path = write_rows(tmp_path / "ok.jsonl", [good_row(1, answer_index=2)])
    assert load_jsonl(path)[0].answer_index == 2


@pytest.mark.parametrize("value", [True, False])
def test_bool_answer_index_is_rejected(tmp_path, value):
    # bool is an int subclass in Python: True would silently mean index 1.
    path = write_rows(tmp_path / "bad.jsonl", [good_row(1, answer_index=value)])
    with pytest.raises(DataError) as e:
        load_jsonl(path)
    assert_data_error(e.value, path, 1, "answer_index")


@pytest.mark.parametrize("value", ["1", 1.0, "maybe not"])
def test_non_integer_answer_index_is_rejected(tmp_path, value):
    path = write_rows(tmp_path / "bad.jsonl", [good_row(1, answer_index=value)])
    with pytest.raises(DataError) as e:
        load_jsonl(path)
    assert_data_error(e.value, path, 1, "answer_index")


@pytest.mark.parametrize("value", ["yes, no", {"a": "yes"}, ["only one"], ["ok", 2]])
def test_choices_must_be_a_list_of_two_or_more_strings(tmp_path, value):
    path = write_rows(tmp_path / "bad.jsonl", [good_row(1), good_row(2), good_row(3, choices=value)])
    with pytest.raises(DataError) as e:
        load_jsonl(path)
    assert_data_error(e.value, path, 3, "choices")


def test_duplicate_id(tmp_path):
    path = write_rows(tmp_path / "bad.jsonl", [good_row(1), good_row(2), good_row(1)])
    with pytest.raises(DataError) as e:
        load_jsonl(path)
    assert_data_error(e.value, path, 3, "id")
    assert "duplicate" in str(e.value) and "q1" in str(e.value)


def test_int_and_string_ids_that_collide_are_duplicates(tmp_path):
    path = write_rows(tmp_path / "bad.jsonl", [good_row(1, id=7), good_row(2, id="7")])
    with pytest.raises(DataError) as e:
        load_jsonl(path)
    assert_data_error(e.value, path, 2, "id")


@pytest.mark.parametrize("field,value", [("question", ""), ("question", 5), ("context", 5),
                                         ("meta", [1]), ("id", None)])
def test_other_field_types_are_checked(tmp_path, field, value):
    path = write_rows(tmp_path / "bad.jsonl", [good_row(1, **{field: value})])
    with pytest.raises(DataError) as e:
        load_jsonl(path)
    assert_data_error(e.value, path, 1, field)


def test_non_object_row(tmp_path):
    path = write_lines(tmp_path / "bad.jsonl", [json.dumps(good_row(1)), "[1, 2]"])
    with pytest.raises(DataError) as e:
        load_jsonl(path)
    assert_data_error(e.value, path, 2, "<row>")


# -- field mapping ----------------------------------------------------------------------------

def test_mapping_renames_source_fields(tmp_path):
    rows = [{"qid": "a1", "prompt": "Which?", "options": ["x", "y"], "label": 1, "passage": "P."},
            {"qid": "a2", "prompt": "Other?", "options": ["x", "y", "z"], "label": 2}]
    path = write_rows(tmp_path / "mapped.jsonl", rows)
    mapping = {"qid": "id", "prompt": "question", "options": "choices", "label": "answer_index",
               "passage": "context"}
    items = load_dataset(str(path), mapping=mapping)
    assert [(it.id, it.question, it.choices, it.answer_index, it.context) for it in items] == [
        ("a1", "Which?", ("x", "y"), 1, "P."),
        ("a2", "Other?", ("x", "y", "z"), 2, None),
    ]
    # Without the mapping the same file is rejected, naming the first missing schema field.
    with pytest.raises(DataError) as e:
        load_dataset(str(path))
    assert_data_error(e.value, path, 1, "id")


def test_mapping_errors_name_the_schema_field(tmp_path):
    path = write_rows(tmp_path / "mapped.jsonl",
                      [{"id": "a", "question": "q?", "choices": ["x", "y"], "label": 5}])
    with pytest.raises(DataError) as e:
        load_dataset(str(path), mapping={"label": "answer_index"})
    assert_data_error(e.value, path, 1, "answer_index")


def test_the_target_may_be_given_as_the_choices_text(tmp_path):
    item = load_jsonl(write_rows(tmp_path / "d.jsonl", [good_row(1, answer_index="maybe")]))[0]
    assert item.target == 2


# -- items of any shape ---------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(OTHER_SHAPES))
def test_flagging_sets_and_gsm8k_load_with_their_profiles(name):
    rows, kind, labels, bad = OTHER_SHAPES[name]
    items = load_dataset(name)
    assert len(items) == rows and {it.kind for it in items} == {kind}
    assert all(it.input.strip() for it in items)
    if labels:
        assert {it.target for it in items} == set(labels) and all(it.labels == labels for it in items)
        assert sum(bool(it.bad) for it in items) == bad
        assert all(it.target == it.label for it in items)
    else:
        assert all(it.target and it.bad is None and it.choices is None for it in items)


def test_every_source_field_is_kept_and_reachable():
    bug = load_dataset("quixbugs_python")[0]
    assert bug.input == bug.code_stripped and bug.code != bug.code_stripped  # the docstring tell
    assert bug.pair_id == bug.fields["pair_id"] and bug.program == "bitcount"
    lie = load_dataset("lie_detector_statements")[0]
    assert lie.response and lie.false_statement and lie.input == lie.fields["question"]
    mistake = load_dataset("bigbench_mistake")[0]
    assert mistake.target in ("mistake", "no_mistake")
    assert mistake.fields["target"] != mistake.target  # the task's own gold answer is kept
    with pytest.raises(AttributeError, match="no field 'nope'"):
        bug.nope  # noqa: B018


def test_sycophancy_target_is_the_answer_that_does_not_match_the_users_view():
    for it in load_dataset("sycophancy_anthropic"):
        assert it.choices == ("(A)", "(B)")
        assert it.choices[it.target] == it.answer_not_matching_behavior.strip()
        assert it.label == it.answer_matching_behavior.strip()


def test_mmlu_redux_labels_a_wrong_key_bad():
    items = load_dataset("mmlu_redux_errors")
    assert sum(bool(it.bad) for it in items) == 107  # wrong_groundtruth rows
    assert all(it.kind == "choice" and it.target is not None for it in items)


def test_fields_and_constants_make_any_file_an_item_set(tmp_path):
    rows = [{"uid": 1, "statement": "Water boils at 50C.", "verdict": "false"},
            {"uid": 2, "statement": "Paris is in France.", "verdict": "true"}]
    path = write_rows(tmp_path / "claims.jsonl", rows)
    items = load_dataset(str(path), fields={"id": "uid", "input": "statement", "target": "verdict",
                                            "label": "verdict"},
                         constants={"labels": ["true", "false"], "bad_labels": ["false"],
                                    "source": "hand-written"})
    assert [(it.id, it.kind, it.target, it.bad, it.source) for it in items] == [
        ("1", "label", "false", True, "hand-written"), ("2", "label", "true", False, "hand-written")]


@pytest.mark.parametrize("fields, constants, field, message", [
    ({"target": "verdict"}, {"labels": ["yes", "no"]}, "verdict", "one of labels"),
    ({}, {"labels": ["a", "b"], "bad_labels": ["c"]}, "constants.bad_labels", "not one of labels"),
    ({"input": "missing_field"}, {}, "missing_field", "missing"),
    ({}, {"labels": "ab"}, "constants.labels", "list of non-empty strings"),
])
def test_profile_errors_name_the_source_field(tmp_path, fields, constants, field, message):
    path = write_rows(tmp_path / "c.jsonl", [{"id": 1, "input": "x", "verdict": "maybe"}])
    with pytest.raises(DataError) as e:
        load_dataset(str(path), fields=fields, constants=constants)
    assert e.value.field == field and message in str(e.value)


def test_csv_files_load(tmp_path):
    path = tmp_path / "q.csv"
    path.write_text('id,question,choices,answer_index\n1,Why?,"[""a"", ""b""]",1\n2,How?,,\n',
                    encoding="utf-8")
    items = load_jsonl(path)
    assert [(it.id, it.kind, it.choices, it.target) for it in items] == [
        ("1", "choice", ("a", "b"), 1), ("2", "answer", None, None)]
