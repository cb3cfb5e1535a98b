"""Reading a run's rows as columns, fast: plain DBAPI tuples in batches, each distinct JSON
text parsed once (params, roles, models and truths repeat across a run's episodes). What
`Store.results()`, `Store.decisions()` and the report read through."""

from __future__ import annotations

import json
from operator import itemgetter
from typing import Any, Callable, Sequence

_DECODER = json.JSONDecoder()


def _loads(text: str) -> Any:
    """json.loads(text): the scanner straight away for text without surrounding whitespace
    (what json.dumps writes), json.loads itself for anything else (and for its errors)."""
    try:
        value, end = _DECODER.scan_once(text, 0)
    except StopIteration:
        return json.loads(text)
    return value if end == len(text) else json.loads(text)


def _loads_many(texts: list[str]) -> list:
    """[json.loads(t) for t in texts], in one parse of them all as one JSON array (one C call,
    not one per text); text by text when that array is not exactly them (a text that is not
    one JSON value alone)."""
    if len(texts) > 1:
        try:
            values = json.loads("[" + ",".join(texts) + "]")
        except ValueError:
            values = None
        if values is not None and len(values) == len(texts):
            return values
    return list(map(_loads, texts))


class _JSONCache:
    """JSON text to values, each distinct text parsed once: the same params, roles, models
    and truths repeat across a run's episodes. A store whose driver reads JSON itself (psycopg)
    hands values through, strings included: they are values, not JSON text. Parsed values are
    shared: treat them as read-only."""

    def __init__(self, parsed_by_driver: bool = False):
        self.parsed_by_driver = parsed_by_driver
        self.seen: dict[str | None, Any] = {None: None}  # NULL: None, looked up like the rest
        self.models: dict[tuple[str | None, str | None], dict[str, str]] = {}
        self.shared: dict[tuple, dict[str, str]] = {}
        self.held: dict[str, str] = {}

    def __call__(self, value: Any) -> Any:
        if self.parsed_by_driver or not isinstance(value, str):
            return value
        if len(value) > 256:  # long and most likely unique (probabilities are short)
            return _loads(value)
        try:
            return self.seen[value]
        except KeyError:
            parsed = self.seen[value] = _loads(value)
            return parsed

    def column(self, values: Sequence) -> Sequence:
        """[self(v) for v in values], each distinct text of the batch parsed once (a long one
        is cached for the batch only) and the rest looked up in C."""
        if self.parsed_by_driver:
            return values
        seen, batch = self.seen, {}
        new = [t for t in set(values).difference(seen) if isinstance(t, str)]
        for text, value in zip(new, _loads_many(new), strict=True):
            (batch if len(text) > 256 else seen)[text] = value
        get = seen.__getitem__ if not batch else (lambda v: batch[v] if v in batch else seen[v])
        try:
            return list(map(get, values))
        except KeyError:  # not text (a number SQLite stored as one): through as it is
            return [get(v) if isinstance(v, str) else v for v in values]

    def texts(self, values: Sequence) -> list:
        """The values unparsed, one object per distinct text (the copies are let go: a
        column that repeats a few texts holds them once, and hashes them once)."""
        held = self.held
        if set(map(type, values)) <= {str, type(None)}:
            return list(map(held.setdefault, values, values))
        return [held.setdefault(v, v) if isinstance(v, str) else v for v in values]

    def role_models(self, roles: Any, models: Any) -> dict[str, str]:
        """`role_models` of an episode's roles and models as the store returned them (JSON
        text, or values), computed once per distinct pair of texts; equal results are one
        shared dict."""
        texts = isinstance(roles, str | None) and isinstance(models, str | None)
        if texts and (found := self.models.get((roles, models))) is not None:
            return found
        out = role_models(self(roles), self(models))
        out = self.shared.setdefault(tuple(out.items()), out)
        if texts:
            self.models[(roles, models)] = out
        return out

    def role_models_of(self, roles: Sequence, models: Sequence) -> list[dict[str, str]]:
        """`role_models` of every episode (the pairs seen before looked up in C)."""
        pairs = list(zip(roles, models, strict=True))
        try:
            for pair in dict.fromkeys(pairs):  # each distinct pair of texts once
                self.role_models(*pair)
            return list(map(self.models.__getitem__, pairs))
        except (KeyError, TypeError):  # values, not texts (a driver parsed them): one by one
            return [self.role_models(r, m) for r, m in pairs]


def role_models(roles: dict | None, models: dict | None) -> dict[str, str]:
    """role -> the model name behind the role's alias (the alias when its config has none)."""
    models = models or {}
    return {role: str((models.get(alias) or {}).get("model") or alias)
            for role, alias in (roles or {}).items()}


def _read_columns(conn, stmt, convert: dict[str, Callable[[Sequence], Sequence]] | None = None,
                  order: tuple[str, ...] = (), size: int = 10_000) -> dict[str, list]:
    """The rows of `stmt` as columns (label -> a list), read in batches of plain tuples
    straight from the DBAPI cursor: no Row object per row. Each column goes through its type's
    result processor, as SQLAlchemy applies it (SQLite's 0/1 to a bool), then through
    `convert[label]` if given, which maps a batch of values at once (so raw text is not all
    held at once, and per-value work can be done once per distinct value). Rows in
    the order of the `order` columns (integers, never NULL, together unique), sorted here: an
    ORDER BY would have the database hold every row, wide JSON and all, in a temporary b-tree
    before the first one comes out. For statements whose parameters are plain strings and
    numbers (none is converted)."""
    dialect = conn.dialect
    compiled = stmt.compile(dialect=dialect, compile_kwargs={"render_postcompile": True})
    params = compiled.construct_params()
    args = tuple(params[k] for k in compiled.positiontup) if compiled.positional else params
    cursor = conn.connection.cursor()
    try:
        cursor.execute(str(compiled), args)
        labels = [c.key for c in stmt.selected_columns]
        procs = [col.type.dialect_impl(dialect).result_processor(dialect, desc[1])
                 for col, desc in zip(stmt.selected_columns, cursor.description, strict=True)]
        convs = [(convert or {}).get(label) for label in labels]
        out: list[list] = [[] for _ in labels]
        while batch := cursor.fetchmany(size):
            for values, proc, conv, column in zip(zip(*batch, strict=True), procs, convs, out,
                                                  strict=True):
                if proc is not None:
                    values = list(map(proc, values))
                column.extend(values if conv is None else conv(values))
    finally:
        cursor.close()
    return _in_order(dict(zip(labels, out, strict=True)), order)


def _in_order(cols: dict[str, list], order: tuple[str, ...]) -> dict[str, list]:
    """The columns with their rows sorted by the `order` columns (see `_read_columns`)."""
    n = len(cols[order[0]]) if order else 0
    if n < 2:
        return cols
    import numpy as np
    perm = np.lexsort([np.asarray(cols[k], dtype=np.int64) for k in reversed(order)])
    if (perm[1:] > perm[:-1]).all():  # already in order
        return cols
    take = itemgetter(*perm.tolist())
    return {k: list(take(v)) for k, v in cols.items()}
