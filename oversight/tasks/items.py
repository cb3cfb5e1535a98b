"""Question items in the shared JSONL schema, and loaders that reject bad rows precisely.

Schema (../shared/datasets/MANIFEST.md): id, question, choices, answer_index, context, source,
license, plus an optional meta object.
"""

from __future__ import annotations

import errno
import json
from importlib.resources import files
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from ..errors import DataError

BUILTIN_DATASETS = ("boolq", "truthfulqa_mc1", "arc_challenge", "quality_hard")


class Item(BaseModel):
    """One question. `context` is the hidden material only some roles may read."""

    model_config = ConfigDict(frozen=True)

    id: str
    question: str
    choices: tuple[str, ...]
    answer_index: int
    context: str | None = None
    source: str = ""
    license: str = ""
    dataset: str = ""
    meta: dict[str, Any] = {}

    @property
    def key(self) -> str:
        return f"{self.dataset}/{self.id}"

    @property
    def letters(self) -> list[str]:
        return [chr(ord("A") + i) for i in range(len(self.choices))]


def _check_row(row: Any, file: str, line: int) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise DataError(file, line, "<row>", f"expected a JSON object, got {type(row).__name__}")
    for field in ("id", "question", "choices", "answer_index"):
        if field not in row:
            raise DataError(file, line, field, "missing (required: id, question, choices, answer_index)")
    if not isinstance(row["id"], (str, int)) or isinstance(row["id"], bool) or row["id"] == "":
        raise DataError(file, line, "id", "expected a non-empty string or an integer")
    if not isinstance(row["question"], str) or not row["question"].strip():
        raise DataError(file, line, "question", "expected a non-empty string")
    choices = row["choices"]
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
        raise DataError(file, line, "choices", "expected a list of at least two strings "
                        "(free-form items such as GSM8K are not supported by these protocols)")
    ai = row["answer_index"]
    if not isinstance(ai, int) or isinstance(ai, bool) or not 0 <= ai < len(choices):
        raise DataError(file, line, "answer_index", f"expected an integer in 0..{len(choices) - 1}, got {ai!r}")
    ctx = row.get("context")
    if ctx is not None and not isinstance(ctx, str):
        raise DataError(file, line, "context", "expected a string or null")
    meta = row.get("meta") or {}
    if not isinstance(meta, dict):
        raise DataError(file, line, "meta", "expected an object")
    for field, value in row.items():
        if _has_nul(value):  # PostgreSQL refuses NUL in text; no prompt needs one
            raise DataError(file, line, str(field), "contains a NUL character (\\u0000)")
    return row


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def load_jsonl(path: str | Path, dataset: str | None = None,
               mapping: dict[str, str] | None = None) -> list[Item]:
    """Load items from a JSONL file; `mapping` renames source fields to schema fields.
    Raises OSError if the file cannot be read, DataError for a bad line (text that is not
    UTF-8 included)."""
    path = Path(path)
    name = dataset or path.stem
    items: list[Item] = []
    seen: set[str] = set()
    if path.exists() and not path.is_file() and not path.is_dir():  # /dev/zero would never end
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    with path.open("rb") as fh:
        for line_no, raw in enumerate(fh, start=1):
            try:
                text = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(str(path), line_no, "<row>", f"not UTF-8 text (byte "
                                f"0x{raw[exc.start]:02x} at column {exc.start + 1}); save the "
                                "file as UTF-8 JSON Lines") from None
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as exc:
                raise DataError(str(path), line_no, "<row>", f"invalid JSON: {exc.msg}") from None
            if mapping and isinstance(row, dict):
                row = {mapping.get(k, k): v for k, v in row.items()}
            row = _check_row(row, str(path), line_no)
            item_id = str(row["id"])
            if item_id in seen:
                raise DataError(str(path), line_no, "id", f"duplicate id {item_id!r}")
            seen.add(item_id)
            items.append(Item(
                id=item_id, question=row["question"], choices=tuple(row["choices"]),
                answer_index=row["answer_index"], context=row.get("context"),
                source=str(row.get("source", "")), license=str(row.get("license", "")),
                dataset=name, meta=row.get("meta") or {},
            ))
    return items


def builtin_path(name: str) -> Path:
    return Path(str(files("oversight").joinpath("data", f"{name}.jsonl")))


def load_dataset(name_or_path: str, base_dir: Path | None = None,
                 mapping: dict[str, str] | None = None) -> list[Item]:
    """A built-in dataset by name, or a JSONL file (relative paths resolve from `base_dir`)."""
    if name_or_path in BUILTIN_DATASETS:
        return load_jsonl(builtin_path(name_or_path), name_or_path, mapping)
    path = Path(name_or_path)
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    return load_jsonl(path, mapping=mapping)
