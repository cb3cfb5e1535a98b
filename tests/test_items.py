"""The JSONL loader: shipped datasets load; malformed rows are rejected with file, line, field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from oversight.errors import DataError
from oversight.tasks.items import BUILTIN_DATASETS, builtin_path, load_dataset, load_jsonl

EXPECTED_ROWS = {"boolq": 300, "truthfulqa_mc1": 300, "arc_challenge": 300, "quality_hard": 12}
WITH_CONTEXT = {"boolq", "quality_hard"}


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


def test_missing_answer_index(tmp_path):
    row = good_row(2)
    del row["answer_index"]
    path = write_rows(tmp_path / "bad.jsonl", [good_row(1), row])
    with pytest.raises(DataError) as e:
        load_jsonl(path)
    assert_data_error(e.value, path, 2, "answer_index")
    assert "missing" in str(e.value)


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


@pytest.mark.parametrize("value", ["1", 1.0, None])
def test_non_integer_answer_index_is_rejected(tmp_path, value):
    path = write_rows(tmp_path / "bad.jsonl", [good_row(1, answer_index=value)])
    with pytest.raises(DataError) as e:
        load_jsonl(path)
    assert_data_error(e.value, path, 1, "answer_index")


@pytest.mark.parametrize("value", ["yes, no", {"a": "yes"}, ["only one"], ["ok", 2], None])
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
