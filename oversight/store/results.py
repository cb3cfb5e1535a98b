"""A run's results and decisions read as columns: what `Store.results()`, `Store.decisions()`
and the report read, without a dict per episode and without reading what is not asked for.

An episode's answer is the deciding role's last answer decision (highest idx)."""

from __future__ import annotations

from typing import Iterable

from sqlalchemy import String, func, select, type_coerce

from .columns import _JSONCache, _read_columns
from .tables import decisions, episodes, items

# the keys of a `results()` row, in order; JSON ones parsed; role_models computed
RESULT_KEYS = ("id", "run_id", "protocol", "variant", "item_id", "params", "assignment",
               "roles", "dispositions", "intent", "target", "probabilities", "status",
               "n_calls", "tokens_in", "tokens_out", "tokens_cached", "cost_usd",
               "cache_hits", "outcome", "treatment", "decides", "duration_s",
               "source_episode_id", "item_kind", "dataset", "document", "parsed",
               "chosen", "correct", "answer_text", "role_models")
RESULT_JSON = ("params", "assignment", "roles", "models", "dispositions", "intent",
               "target", "probabilities")
RESULT_TEXTS = ("run_id", "protocol", "variant", "item_id", "status", "treatment",
                "decides", "item_kind", "dataset", "document")  # few distinct values
# answer key -> its decisions column
ANSWER_COLUMNS = {"probabilities": "probabilities", "parsed": "parsed", "chosen": "choice",
                  "correct": "correct", "answer_text": "text"}
# the decision columns the detection reads (see `decision_columns`)
DETECTION_KEYS = ("episode_id", "idx", "role", "kind", "name", "parsed", "value",
                  "scale_lo", "scale_hi", "probabilities")
# result key -> its items column
_ITEM_KEYS = {"target": items.c.target, "item_kind": items.c.kind, "dataset": items.c.dataset,
              "document": func.coalesce(items.c.document, items.c.id)}
# the keys of a `decisions()` row, in order: the decision's, then its episode's
DECISION_EPISODE_KEYS = ("intent", "dispositions", "run_id", "protocol", "variant", "item_id",
                         "treatment", "outcome", "status")
DECISION_KEYS = (*(c.name for c in decisions.columns if c.name != "probabilities"),
                 "probabilities", *DECISION_EPISODE_KEYS)
_DECISION_JSON = ("probabilities", "intent", "dispositions")
_DECISION_TEXTS = ("role", "kind", "name", "source", "run_id", "protocol", "variant", "item_id",
                   "treatment", "status")  # few distinct values: each held once


def result_columns(conn, run_ids: list[str], keys: Iterable[str] | None = None) -> dict:
    """`Store.results()` as columns (see `Store.result_columns`)."""
    keys = RESULT_KEYS if keys is None else tuple(dict.fromkeys(keys))
    if unknown := [k for k in keys if k not in RESULT_KEYS]:
        raise ValueError(f"not a key of Store.results(): {', '.join(unknown)}")
    e, i = episodes.c, items.c
    read = [k for k in keys if k not in _ITEM_KEYS and k not in ("role_models", "run_id")]
    if "role_models" in keys:
        read += [k for k in ("roles", "models") if k not in read]
    if "run_id" in keys and len(set(run_ids)) != 1:  # of one run: its id, not read per episode
        read.append("run_id")
    read += [k for k in ("id", "item_id") if k not in read]  # the order; the items
    d = decisions.c
    cols = []
    for k in read:
        col = getattr(d, ANSWER_COLUMNS[k]) if k in ANSWER_COLUMNS else getattr(e, k)
        cols.append((type_coerce(col, String) if k in RESULT_JSON else col).label(k))
    # the items join only keeps episodes that have an item (its index alone, no row read)
    stmt = (select(*cols).select_from(episodes).join(items, i.id == e.item_id)
            .where(e.run_id.in_(run_ids)))
    if any(k in ANSWER_COLUMNS for k in read):  # the deciding role's last answer
        # (highest idx): its row id, so the join is a primary-key lookup (EXPLAIN QUERY
        # PLAN: one index search of the episode's decisions, then the row by rowid). As fast
        # as reading the answers in a pass of their own and matching them (measured).
        last = decisions.alias("last_answer")
        final = (select(last.c.id).where(last.c.episode_id == e.id,
                                         last.c.role == e.decides, last.c.kind == "answer")
                 .order_by(last.c.idx.desc()).limit(1).correlate(episodes).scalar_subquery())
        stmt = stmt.join(decisions, d.id == final, isouter=True)
    parse = _JSONCache(parsed_by_driver=conn.dialect.name == "postgresql")
    convert = {k: parse.column if k in RESULT_JSON else parse.texts
               for k in read if k in RESULT_JSON or k in RESULT_TEXTS}
    if "role_models" in keys:  # the texts, each held once: role_models parses them
        convert["roles"] = convert["models"] = parse.texts
    got = _read_columns(conn, stmt, convert, order=("id",))
    if "run_id" in keys and "run_id" not in got:
        got["run_id"] = [run_ids[0]] * len(got["id"])
    if per_item := [k for k in keys if k in _ITEM_KEYS]:  # once per item, not per episode
        got |= _item_columns(conn, got["item_id"], per_item, parse)
    if "role_models" in keys:
        got["role_models"] = parse.role_models_of(got["roles"], got["models"])
        if "roles" in keys:
            got["roles"] = list(map(parse, got["roles"]))
    return {k: got[k] for k in keys}


def _item_columns(conn, item_ids: list, keys: list[str], parse: _JSONCache,
                  chunk: int = 500) -> dict[str, list]:
    """The item columns `keys` of each of `item_ids`, read once per distinct item."""
    distinct = list(dict.fromkeys(item_ids))
    cols = [(type_coerce(_ITEM_KEYS[k], String) if k in RESULT_JSON else _ITEM_KEYS[k]).label(k)
            for k in keys]
    found: dict[str, list] = {k: [] for k in ("_id", *keys)}
    for start in range(0, len(distinct), chunk):  # within any database's bound parameters
        got = _read_columns(conn, select(items.c.id.label("_id"), *cols).where(
            items.c.id.in_(distinct[start:start + chunk])),
            {k: parse.column if k in RESULT_JSON else parse.texts for k in keys})
        for k, v in got.items():
            found[k].extend(v)
    at = dict(zip(found["_id"], range(len(found["_id"])), strict=True))
    rows = [at[i] for i in item_ids]
    return {k: [found[k][j] for j in rows] for k in keys}


def decision_columns(conn, run_ids: list[str], kinds: tuple[str, ...] | None = None,
                     keys: Iterable[str] | None = None) -> dict[str, list]:
    """`Store.decisions()` as columns (see `Store.decision_columns`): the `keys` (decisions
    columns, and the episode columns of `DECISION_EPISODE_KEYS`) of the runs' decisions of
    these `kinds` (all when None), by episode, then idx."""
    keys = DECISION_KEYS if keys is None else tuple(dict.fromkeys(keys))
    if unknown := [k for k in keys if k not in DECISION_KEYS]:
        raise ValueError(f"not a key of Store.decisions(): {', '.join(unknown)}")
    e, d = episodes.c, decisions.c
    read = (*keys, *(k for k in ("episode_id", "idx") if k not in keys))  # + the order
    exprs = {k: getattr(e, k) if k in DECISION_EPISODE_KEYS else getattr(d, k) for k in read}
    stmt = (select(*((type_coerce(exprs[k], String) if k in _DECISION_JSON else exprs[k])
                     .label(k) for k in read))
            .select_from(decisions).join(episodes, e.id == d.episode_id)
            .where(e.run_id.in_(run_ids)))
    if kinds is not None:
        stmt = stmt.where(d.kind.in_(kinds))
    parse = _JSONCache(parsed_by_driver=conn.dialect.name == "postgresql")
    convert = {k: parse.column for k in keys if k in _DECISION_JSON}
    convert |= {k: parse.texts for k in keys if k in _DECISION_TEXTS}
    got = _read_columns(conn, stmt, convert, order=("episode_id", "idx"))
    return {k: got[k] for k in keys}
