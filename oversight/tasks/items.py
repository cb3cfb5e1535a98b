"""Items of any shape, and loaders that reject bad rows precisely (file, line, field).

An item has an input, optional choices, and a target: a choice (its index), a free-form
answer (gsm8k: a number), or a label (quixbugs: "buggy"). Every field of the source row is
kept (`item.fields`, and `item.<name>` in templates and code); `context` is the hidden
material only some roles may read; `label`/`bad_labels` say whether the item's artefact is bad
(the outcome truth of a flagging task). How a dataset's rows become items is its profile:
`fields` (item field = source field) and `constants` (item field = value), from the built-in
profiles (tasks/profiles.toml) and the spec.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import DataError
from .profiles import BUILTIN_DATASETS, builtin_path, profile

__all__ = ["Item", "BUILTIN_DATASETS", "builtin_path", "load_dataset", "load_jsonl", "make_item",
           "ITEM_FIELDS", "letter", "letters"]

# Item fields a profile may set, and the source fields each is read from when none is named.
DEFAULT_SOURCES: dict[str, tuple[str, ...]] = {
    "id": ("id",), "input": ("input", "question"), "choices": ("choices",),
    "target": ("answer_index", "answer", "target"), "context": ("context",), "label": ("label",),
    "labels": ("labels",), "bad_labels": ("bad_labels",), "source": ("source",),
    "license": ("license",), "meta": ("meta",),
}
ITEM_FIELDS = tuple(DEFAULT_SOURCES)


def letter(i: int) -> str:
    """The letter choice i is shown under: 0 -> A, 1 -> B (the one place this is decided)."""
    return chr(ord("A") + int(i))


def letters(n: int) -> list[str]:
    return [letter(i) for i in range(n)]


@dataclass(frozen=True, eq=False)
class Item:
    """One task. `kind` is "choice" (target: a choice index), "label" (target: one of
    `labels`) or "answer" (target: free text, e.g. a number); target None = no gold."""

    id: str
    input: str
    choices: tuple[str, ...] | None = None
    target: int | str | None = None
    context: str | None = None
    label: str | None = None  # the dataset's label of this item's artefact, if any
    labels: tuple[str, ...] | None = None  # the label set, for label items
    bad_labels: tuple[str, ...] = ()  # labels meaning the artefact is bad
    source: str = ""
    license: str = ""
    dataset: str = ""
    meta: Mapping[str, Any] = field(default_factory=dict)
    fields: Mapping[str, Any] = field(default_factory=dict)  # the source row, as read

    def __getattr__(self, name: str) -> Any:
        """Any other field of the source row: `item.code_stripped`."""
        fields = self.__dict__.get("fields") or {}
        if name in fields:
            return fields[name]
        raise AttributeError(f"item {self.__dict__.get('id')!r} has no field {name!r}"
                             + (f" (fields: {', '.join(sorted(fields))})" if fields else ""))

    @property
    def kind(self) -> str:
        if self.choices:
            return "choice"
        return "label" if self.labels else "answer"

    @property
    def key(self) -> str:
        return f"{self.dataset}/{self.id}"

    @property
    def question(self) -> str:
        """The input, under its multiple-choice name (templates say `question`)."""
        return self.input

    @property
    def answer_index(self) -> int | None:
        """The correct choice's index, for choice items with a gold answer."""
        return self.target if self.kind == "choice" else None

    @property
    def letters(self) -> list[str]:
        return letters(len(self.choices or ()))

    def without_context(self) -> Item:
        """The item as a role that may not read the hidden context sees it: no `context`, and
        not the source field it came from either (`item.passage` would leak it otherwise)."""
        if self.context is None:
            return self
        hidden = {k for k, v in self.fields.items() if v is self.context or v == self.context}
        return replace(self, context=None, fields={k: v for k, v in self.fields.items() if k not in hidden})

    @property
    def bad(self) -> bool | None:
        """Whether the dataset labels this item's artefact bad (None when it does not say)."""
        if self.label is None or not self.bad_labels:
            return None
        return self.label in self.bad_labels


def make_item(row: Any, file: str, line: int, dataset: str, fields: Mapping[str, str] | None = None,
              constants: Mapping[str, Any] | None = None) -> Item:
    """An Item from one source row, or a DataError naming the file, line and field."""
    if not isinstance(row, dict):
        raise DataError(file, line, "<row>", f"expected a JSON object, got {type(row).__name__}")
    for name, value in row.items():
        if _has_nul(name) or _has_nul(value):  # PostgreSQL refuses NUL in text
            raise DataError(file, line, str(name), "contains a NUL character (\\u0000)")
    fields, constants = dict(fields or {}), dict(constants or {})
    values: dict[str, Any] = {}
    where: dict[str, str] = {}  # item field -> the source field (or constant) it came from
    for name, defaults in DEFAULT_SOURCES.items():
        if name in constants:
            values[name], where[name] = constants[name], f"constants.{name}"
            continue
        if name in fields and fields[name] not in row:
            raise DataError(file, line, fields[name], f"missing (the profile reads the item's "
                            f"{name} from this field: fields.{name})")
        for src in ((fields[name],) if name in fields else defaults):
            if src in row and (row[src] is not None or name in fields):
                values[name], where[name] = row[src], src
                break
    return _checked(values, where, row, file, line, dataset)


def _checked(v: dict[str, Any], where: dict[str, str], row: dict, file: str, line: int,
             dataset: str) -> Item:
    def fail(name: str, message: str) -> DataError:
        return DataError(file, line, where.get(name, name), message)

    item_id = v.get("id")
    if item_id is None:
        raise fail("id", "missing (every row needs an id)")
    if isinstance(item_id, bool) or not isinstance(item_id, (str, int)) or item_id == "":
        raise fail("id", "expected a non-empty string or an integer")
    text = v.get("input")
    if text is None:
        raise fail("input", "missing: no 'input' or 'question' field (name the source field "
                   "with fields = { input = \"...\" })")
    if not isinstance(text, str) or not text.strip():
        raise fail("input", "expected a non-empty string")
    choices = v.get("choices")
    if choices is not None and choices != []:
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
            raise fail("choices", "expected a list of at least two strings (or none at all)")
        choices = tuple(choices)
    else:
        choices = None
    labels = _strings(v.get("labels"), "labels", fail)
    bad_labels = _strings(v.get("bad_labels"), "bad_labels", fail) or ()
    if labels and (unknown := [b for b in bad_labels if b not in labels]):
        raise fail("bad_labels", f"{unknown[0]!r} is not one of labels {list(labels)}")
    target = _target(v.get("target"), choices, labels, fail)
    label = v.get("label")
    if label is not None and not isinstance(label, str):
        raise fail("label", "expected a string or null")
    context = v.get("context")
    if context is not None and not isinstance(context, str):
        raise fail("context", "expected a string or null")
    meta = v.get("meta") or {}
    if not isinstance(meta, dict):
        raise fail("meta", "expected an object")
    return Item(id=str(item_id), input=text, choices=choices, target=target, context=context,
                label=label, labels=labels, bad_labels=bad_labels,
                source=str(v.get("source") or ""), license=str(v.get("license") or ""),
                dataset=dataset, meta=meta, fields=row)


def _strings(value: Any, name: str, fail) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(x, str) and x for x in value):
        raise fail(name, "expected a list of non-empty strings")
    return tuple(value)


def _target(value: Any, choices: tuple[str, ...] | None, labels: tuple[str, ...] | None,
            fail) -> int | str | None:
    """A choice index (also given as the choice's text), a label, or a free-form answer."""
    if value is None:
        return None
    if choices is not None:
        if isinstance(value, str) and value.strip() in [c.strip() for c in choices]:
            return [c.strip() for c in choices].index(value.strip())
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < len(choices):
            raise fail("target", f"expected the index of the correct choice (0..{len(choices) - 1}) "
                       f"or its text, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, (str, int, float)) or \
            (isinstance(value, float) and not math.isfinite(value)):
        raise fail("target", f"expected a free-form answer or a label (text or a number), got {value!r}")
    value = str(value)
    if labels is not None and value not in labels:
        raise fail("target", f"expected one of labels {list(labels)}, got {value!r}")
    return value


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def _rows(path: Path) -> Iterator[tuple[int, Any]]:
    """(line, row) of a JSONL or CSV file; DataError for text that is not UTF-8 or bad JSON."""
    if path.exists() and not path.is_file() and not path.is_dir():  # /dev/zero would never end
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(str(path), line, "<row>", f"not UTF-8 text (byte 0x{data[exc.start]:02x}); "
                        "save the file as UTF-8") from None
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        for row in reader:
            yield reader.line_num, {k: _cell(v) for k, v in row.items() if k is not None}
        return
    for line_no, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip():
            continue
        try:
            yield line_no, json.loads(raw)
        except json.JSONDecodeError as exc:
            raise DataError(str(path), line_no, "<row>", f"invalid JSON: {exc.msg}") from None


def _cell(value: str | None) -> Any:
    """A CSV cell: JSON lists, objects, integers and null as such; anything else as text."""
    if value is None or value == "":
        return None
    if value[:1] in "[{" or value.lstrip("-").isdigit() or value == "null":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def load_jsonl(path: str | Path, dataset: str | None = None, mapping: dict[str, str] | None = None,
               fields: Mapping[str, str] | None = None,
               constants: Mapping[str, Any] | None = None) -> list[Item]:
    """Items from a JSONL (or .csv) file. `mapping` renames source fields first (source ->
    new name); `fields` and `constants` are the dataset's profile. Raises OSError if the file
    cannot be read, DataError for a bad row."""
    path = Path(path)
    items: list[Item] = []
    seen: set[str] = set()
    for line_no, row in _rows(path):
        if mapping and isinstance(row, dict):
            row = {mapping.get(k, k): v for k, v in row.items()}
        item = make_item(row, str(path), line_no, dataset or path.stem, fields, constants)
        if item.id in seen:
            raise DataError(str(path), line_no, "id", f"duplicate id {item.id!r}")
        seen.add(item.id)
        items.append(item)
    return items


def load_dataset(name_or_path: str, base_dir: Path | None = None,
                 mapping: dict[str, str] | None = None, fields: Mapping[str, str] | None = None,
                 constants: Mapping[str, Any] | None = None) -> list[Item]:
    """A built-in dataset by name (with its profile, which `fields`/`constants` extend), or a
    JSONL/CSV file (relative paths resolve from `base_dir`)."""
    if name_or_path in BUILTIN_DATASETS:
        base = profile(name_or_path)
        return load_jsonl(builtin_path(name_or_path), name_or_path, mapping,
                          {**base.get("fields", {}), **(fields or {})},
                          {**base.get("constants", {}), **(constants or {})})
    path = Path(name_or_path)
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    return load_jsonl(path, mapping=mapping, fields=fields, constants=constants)
