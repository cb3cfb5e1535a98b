"""`oversight export`: a run's tables written out as JSONL, CSV or Parquet, streamed.

Output renderers sit in a registry, as Datasette's do: `FORMATS` maps a format's name to an
`Exporter` (its file suffix, whether it is binary, and a `write(chunks, fields, sink, table)`
that returns the rows written); `register()` adds one. `export()` reads the table in chunks
(oversight.store.streams: episodes, messages, decisions, calls) and hands them to the
renderer, so memory stays flat whatever the run's size: no format holds more than a chunk.

Conventions, the same for every table (`streams.fields(table)` gives the columns and kinds):

- **jsonl**: one JSON object per line, keys in column order. JSON columns are real nested
  JSON (the stored text, embedded; a stored NaN or ±Infinity becomes null); NULL is null;
  booleans true/false; non-finite floats null. UTF-8, non-ASCII characters as they are.
- **csv**: a header row, then one row per record, RFC 4180 (CRLF line ends; a field with a
  comma, quote or line break is quoted, so a transcript's newlines stay inside its field).
  JSON columns hold their JSON text; booleans are ``true`` / ``false``; floats as Python
  writes them (``inf``, ``nan``); **NULL is an empty field**, which an empty string also
  is: read JSONL or Parquet where that difference matters. UTF-8, no BOM.
- **parquet**: one row group per chunk, an explicit schema: str and JSON columns as UTF-8
  strings (JSON columns hold JSON text and are listed in the schema metadata
  ``oversight.json_columns``), booleans as bool, integers as int64, floats as float64
  (NaN and ±inf kept); NULL is a Parquet null, never 0 or "". Not to stdout (binary).

Text that cannot be encoded (a lone surrogate; the store already keeps those as backslash
escapes) is written as a backslash escape, which in JSONL is the JSON escape of the same
character. A file is written under a temporary name and renamed when complete: a failed
export leaves no partial file behind.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import secrets
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring  # the C escaper when available
from pathlib import Path
from typing import IO, Any

from ..errors import OversightError
from ..store import storable_text
from ..store.streams import TABLES, Field, fields, stream
from ..tuning import quiet_gc

FORMAT = "oversight.export/1"  # in Parquet metadata; bumped when a column changes meaning


class ExportError(OversightError, ValueError):
    """An export asked for something that cannot be written (an unknown table or format,
    a binary format to stdout)."""


WriteFn = Callable[[Iterable[list[tuple]], Sequence[Field], IO[Any], str], int]


@dataclass(frozen=True)
class Exporter:
    """An output renderer: `write(chunks, fields, sink, table) -> rows written`, where `sink`
    is a binary file object when `binary`, else a text one (UTF-8, newline="")."""

    name: str
    suffix: str
    binary: bool
    write: WriteFn
    description: str = ""


FORMATS: dict[str, Exporter] = {}


def register(exporter: Exporter) -> Exporter:
    """Add (or replace) an output format."""
    FORMATS[exporter.name] = exporter
    return exporter


# -- jsonl --------------------------------------------------------------------------------

def _scalar(v: Any) -> str:
    """A non-JSON column's value as JSON, by its Python type (SQLite may hand back another
    type than the column's declared one): the slow path of `_encoded`."""
    t = v.__class__
    if t is str:
        return encode_basestring(v)
    if v is None:
        return "null"
    if t is bool:
        return "true" if v else "false"
    if t is int:
        return int.__repr__(v)
    if t is float:
        return float.__repr__(v) if math.isfinite(v) else "null"
    return json.dumps(v, ensure_ascii=False, allow_nan=False, default=str)


def _no_constant(_name: str) -> None:
    return None


def _embedded(v: str | None) -> str:
    """A JSON column's stored text, embedded as it is unless it is not strict one-line JSON
    (NaN or Infinity written by Python's json.dumps, or a pretty-printed value)."""
    if v is None:
        return "null"
    if "NaN" in v or "Infinity" in v or "\n" in v or "\r" in v:
        value = json.loads(v, parse_constant=_no_constant)
        return json.dumps(value, ensure_ascii=False, allow_nan=False)
    return v


_BOOL = {True: "true", False: "false", None: "null"}


def _encoded(key: str, kind: str, values: Sequence[Any]) -> list[str]:
    """`key` + each value as JSON, a column at a time: the common case inline, anything else
    through `_scalar` / `_embedded`."""
    enc, scalar = encode_basestring, _scalar
    if kind == "json":
        return [key + (v if v.__class__ is str and "NaN" not in v and "Infinity" not in v
                       and "\n" not in v and "\r" not in v else _embedded(v)) for v in values]
    if kind == "str":
        return [key + (enc(v) if v.__class__ is str else scalar(v)) for v in values]
    if kind == "int":
        return [key + (int.__repr__(v) if v.__class__ is int else scalar(v)) for v in values]
    if kind == "float":  # v - v == 0.0: finite (inf - inf and nan - nan are nan)
        return [key + (float.__repr__(v) if v.__class__ is float and v - v == 0.0
                       else scalar(v)) for v in values]
    return [key + (_BOOL[v] if v.__class__ is bool or v is None else scalar(v))
            for v in values]


def write_jsonl(chunks: Iterable[list[tuple]], cols: Sequence[Field], sink: IO[str],
                table: str = "") -> int:
    """One JSON object per line (see the module docstring)."""
    keys = [(encode_basestring(f.name) + ":", f.kind) for f in cols]
    n = 0
    for chunk in chunks:
        if not chunk:
            continue
        columns = [_encoded(key, kind, values)
                   for (key, kind), values in zip(keys, zip(*chunk, strict=True), strict=True)]
        sink.write("".join(["{" + ",".join(parts) + "}\n"
                            for parts in zip(*columns, strict=True)]))
        n += len(chunk)
    return n


# -- csv ----------------------------------------------------------------------------------

def write_csv(chunks: Iterable[list[tuple]], cols: Sequence[Field], sink: IO[str],
              table: str = "") -> int:
    """A header, then rows; JSON as text, booleans true/false, NULL an empty field."""
    out = csv.writer(sink)
    out.writerow([f.name for f in cols])
    bools = [i for i, f in enumerate(cols) if f.kind == "bool"]
    n = 0
    for chunk in chunks:
        if bools:
            rows = []
            for row in chunk:
                values = list(row)
                for i in bools:
                    if values[i] is not None:
                        values[i] = "true" if values[i] else "false"
                rows.append(values)
            out.writerows(rows)
        else:
            out.writerows(chunk)
        n += len(chunk)
    return n


# -- parquet ------------------------------------------------------------------------------

def _pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError as exc:
        raise ExportError(f"the parquet format needs pyarrow: pip install pyarrow ({exc})") from None
    return pyarrow, pyarrow.parquet


def arrow_schema(cols: Sequence[Field], table: str = ""):
    """The Parquet (Arrow) schema of an export table's columns."""
    pa, _ = _pyarrow()
    types = {"str": pa.string(), "json": pa.string(), "int": pa.int64(),
             "float": pa.float64(), "bool": pa.bool_()}
    meta = {"oversight.format": FORMAT, "oversight.table": table,
            "oversight.json_columns": json.dumps([f.name for f in cols if f.kind == "json"])}
    return pa.schema([pa.field(f.name, types[f.kind], nullable=True) for f in cols],
                     metadata=meta)


# Arrow arrays are built from their buffers (numpy) rather than with pa.array(), which
# imports pandas on first use: 45 MB and 0.2 s an export has no need of.

def _validity(pa, np, values: Sequence[Any]):
    """(validity bitmap, null count) of a column; (None, 0) when it has no null."""
    present = [v is not None for v in values]
    nulls = len(present) - sum(present)
    if not nulls:
        return None, 0
    return pa.py_buffer(np.packbits(np.array(present, dtype=bool), bitorder="little")), nulls


def _strings(pa, np, values: Sequence[Any], kind: str, name: str):
    try:
        data = [b"" if v is None else v.encode("utf-8") for v in values]
    except (AttributeError, UnicodeEncodeError):  # not a str (SQLite's typing), a surrogate
        data = [b"" if v is None else storable_text(
            v if isinstance(v, str) else json.dumps(v) if kind == "json" else str(v)
        ).encode("utf-8") for v in values]
    offsets = np.zeros(len(data) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in data], out=offsets[1:])
    if offsets[-1] > 2**31 - 1:
        raise ExportError(f"column {name}: over 2 GB of text in one chunk; pass a smaller "
                          "chunk size")
    valid, nulls = _validity(pa, np, values)
    return pa.Array.from_buffers(pa.string(), len(data), [
        valid, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(b"".join(data))],
        null_count=nulls)


def _numbers(pa, np, values: Sequence[Any], kind: str, name: str):
    filled = [0 if v is None else v for v in values]
    try:
        if kind == "int":
            array = np.array(filled)
            if array.dtype.kind != "i" and len(filled):  # a float, a text: exactly ints only
                array = np.array([_exact_int(v) for v in filled], dtype=np.int64)
            array = array.astype(np.int64, copy=False)
        elif kind == "float":
            array = np.array(filled, dtype=np.float64)
        else:
            array = np.packbits(np.array([bool(v) for v in filled], dtype=bool),
                                bitorder="little")
    except (TypeError, ValueError, OverflowError) as exc:
        raise ExportError(f"column {name}: a value is not a {kind} ({exc})") from None
    valid, nulls = _validity(pa, np, values)
    arrow_type = {"int": pa.int64(), "float": pa.float64(), "bool": pa.bool_()}[kind]
    return pa.Array.from_buffers(arrow_type, len(values), [valid, pa.py_buffer(array)],
                                 null_count=nulls)


def _exact_int(v: Any) -> int:
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, (int, bool)):
        return int(v)
    raise ValueError(f"{v!r}")


def _batch(chunk: list[tuple], cols: Sequence[Field], schema):
    import numpy as np

    pa, _ = _pyarrow()
    columns = list(zip(*chunk, strict=True))
    arrays = [(_strings if f.kind in ("str", "json") else _numbers)(pa, np, values, f.kind, f.name)
              for values, f in zip(columns, cols, strict=True)]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def write_parquet(chunks: Iterable[list[tuple]], cols: Sequence[Field], sink: IO[bytes],
                  table: str = "") -> int:
    """A Parquet file, one row group per chunk, with `arrow_schema`'s types."""
    _, pq = _pyarrow()
    schema = arrow_schema(cols, table)
    n = 0
    with pq.ParquetWriter(sink, schema) as writer:
        for chunk in chunks:
            if chunk:
                writer.write_batch(_batch(chunk, cols, schema))
                n += len(chunk)
    return n


register(Exporter("jsonl", ".jsonl", False, write_jsonl, "one JSON object per line"))
register(Exporter("csv", ".csv", False, write_csv, "comma-separated, with a header"))
register(Exporter("parquet", ".parquet", True, write_parquet, "Apache Parquet (pyarrow)"))


# -- export -------------------------------------------------------------------------------

def export(store, run_ids: str | Sequence[str], table: str, fmt: str, out: str | os.PathLike,
           *, chunk_size: int | None = None) -> int:
    """Write `table` (episodes, messages, decisions or calls) of the runs `run_ids` (resolved
    ids) of `store` to `out` (a path, or "-" for stdout: text formats only) as `fmt` (a key of
    FORMATS); returns the rows written. See the module docstring for each format."""
    exporter = FORMATS.get(fmt)
    if exporter is None:
        raise ExportError(f"unknown format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if table not in TABLES:
        raise ExportError(f"unknown table {table!r}: expected one of {', '.join(TABLES)}")
    if str(out) == "-" and exporter.binary:
        raise ExportError(f"{fmt} is binary: give a file to write, not stdout")
    cols = fields(table)
    chunks = stream(store, table, run_ids, chunk_size=chunk_size)
    try:
        with quiet_gc():
            if str(out) == "-":
                return _to_stdout(exporter, chunks, cols, table)
            return _to_file(exporter, chunks, cols, table, Path(out))
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()  # releases the database cursor when a write failed midway




def _text(raw: IO[bytes]) -> io.TextIOWrapper:
    return io.TextIOWrapper(raw, encoding="utf-8", errors="backslashreplace", newline="",
                            write_through=False)


def _to_stdout(exporter: Exporter, chunks, cols, table: str) -> int:
    sys.stdout.flush()
    sink = _text(sys.stdout.buffer)
    try:
        return exporter.write(chunks, cols, sink, table)
    finally:
        sink.flush()
        sink.detach()  # leave sys.stdout's buffer open


def _to_file(exporter: Exporter, chunks, cols, table: str, path: Path) -> int:
    if path.is_dir():
        raise ExportError(f"{path} is a folder; expected a file to write")
    if not path.parent.is_dir():
        raise ExportError(f"{path}: its folder {path.parent} does not exist")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.partial")
    try:
        with open(tmp, "xb") as raw:
            if exporter.binary:
                n = exporter.write(chunks, cols, raw, table)
            else:
                sink = _text(raw)
                n = exporter.write(chunks, cols, sink, table)
                sink.flush()
                sink.detach()
        os.replace(tmp, path)
        return n
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


__all__ = ["FORMAT", "FORMATS", "ExportError", "Exporter", "arrow_schema", "export", "register",
           "write_csv", "write_jsonl", "write_parquet"]
