"""The viewer's reads: every page is a few bounded queries (a LIMIT, a capped count), with the
filters in SQL; nothing reads a whole run into memory except the report and detection
figures, which the analysis computes (and `figures.py` caches).

SQLAlchemy Core against oversight/store/tables.py, through a store opened read-only.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any

from sqlalchemy import String, and_, case, cast, false, func, or_, select, true, type_coerce

from ..store.columns import role_models
from ..store.tables import decisions, episodes, items, messages, model_calls, runs
from .filters import EpisodeFilter

COUNT_CAP = 100_000  # a count past this shows as "100,000+" (a text search counts no further)
SNIPPET = 160  # characters of an item's input on the episodes page


def _text(col):
    """A JSON column as its stored text: grouped and compared as text on any database."""
    return cast(col, String)


def _json(value: Any) -> Any:
    """A JSON value as a driver returned it: text (SQLite) parsed, values (psycopg) as they are."""
    return json.loads(value) if isinstance(value, str) else value


def final_answer_id():
    """The row id of an episode's final answer: the deciding role's last answer decision."""
    last = decisions.alias("last_answer")
    return (select(last.c.id).where(last.c.episode_id == episodes.c.id,
                                    last.c.role == episodes.c.decides, last.c.kind == "answer")
            .order_by(last.c.idx.desc()).limit(1).correlate(episodes).scalar_subquery())


@dataclass
class Facets:
    """What the filters can choose from, with episode counts, for a set of runs."""

    protocols: dict[str, int]
    variants: dict[str, int]
    statuses: dict[str, int]
    datasets: list[str]
    models: dict[str, dict[str, int]]  # role -> model name -> episodes
    dispositions: dict[str, dict[str, int]]  # role -> disposition -> episodes
    combos: list[tuple[str, str, str, dict[str, str], dict]]  # roles, models, dispositions texts
    total: int  # episodes of these runs
    store_total: int  # episodes in the store


@dataclass
class Page:
    rows: list[dict]
    total: int
    capped: bool  # total is a floor (the count stopped at COUNT_CAP)


class Reader:
    """The store's reads for the viewer; small caches keyed by what would change them."""

    def __init__(self, store):
        self.store = store
        self.engine = store.engine
        self._facets: dict[tuple, list] = {}
        self._spend: dict = {}
        self._lock = threading.Lock()
        self.sqlite = self.engine.dialect.name == "sqlite"
        # a JSON column as its stored text: SQLite holds text already; PostgreSQL casts json
        self._text = (lambda col: type_coerce(col, String)) if self.sqlite else _text

    # -- runs ---------------------------------------------------------------------------
    def run_ids(self) -> list[str]:
        with self.engine.connect() as conn:
            return list(conn.execute(select(runs.c.id).order_by(runs.c.created_at)).scalars())

    def version(self, run_ids: tuple[str, ...]) -> tuple:
        """What changes when a run gains episodes or moves on: a cache key."""
        e = episodes.c
        stmt = select(func.count(), func.max(e.id))
        if run_ids:
            stmt = stmt.where(e.run_id.in_(run_ids))
        with self.engine.connect() as conn:
            n, top = conn.execute(stmt).one()
            stamps = conn.execute(select(runs.c.id, runs.c.updated_at, runs.c.status)
                                  .where(runs.c.id.in_(run_ids) if run_ids else true())).all()
        return (run_ids, n, top, tuple(map(tuple, stamps)))

    def runs(self) -> list[dict]:
        """Every run with its episodes by status and its spend (dollars, tokens; each run's
        read once per state of the store)."""
        rows = self.store.runs()
        key = self.version(())
        with self._lock:
            if self._spend.get("key") != key:
                self._spend = {"key": key}
        for r in rows:
            if r["id"] not in self._spend:
                self._spend[r["id"]] = self.store.run_spend(r["id"])
            r["spend_usd"], r["spend_tokens"] = self._spend[r["id"]]
            r["total"] = sum(r["episodes"].values())
        return rows

    def warm(self) -> None:
        """Compute what the first pages need (facets, spend) ahead of the first request."""
        self.facets(())
        self.runs()

    def run(self, run_id: str) -> dict | None:
        return self.store.run(run_id)

    # -- facets -------------------------------------------------------------------------
    def facets(self, run_ids: tuple[str, ...]) -> Facets:
        """The filters' choices and counts for these runs (all when empty), from one
        grouping of the whole store per state of it (`version`), merged per request."""
        key = self.version(())
        with self._lock:
            groups = self._facets.get(key)
        if groups is None:
            groups = self._read_groups()
            with self._lock:
                self._facets = {key: groups}
        return _merge([g for g in groups if not run_ids or g[0] in run_ids],
                      sum(g[-1] for g in groups), self._datasets())

    def _read_groups(self) -> list[tuple]:
        """(run, protocol, variant, status, roles, models, dispositions texts, episodes) per
        group of the store's episodes. A run's roles decide its models (the configs of the
        aliases they name), so models are not grouped on (long texts) unless some group of
        roles has several (then they are)."""
        e = episodes.c
        keys = (e.run_id, e.protocol, e.variant, e.status, self._text(e.roles),
                self._text(e.dispositions))
        stmt = select(*keys, func.min(self._text(e.models)), func.max(self._text(e.models)),
                      func.count()).group_by(*keys)
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).all()
            if all(lo == hi for *_, lo, hi, _ in rows):
                return [(run, protocol, variant, status, roles, lo, disp, n)
                        for run, protocol, variant, status, roles, disp, lo, _, n in rows]
            keys = (*keys[:5], self._text(e.models), keys[5])
            return [tuple(r) for r in conn.execute(select(*keys, func.count()).group_by(*keys))]

    def _datasets(self) -> list[str]:
        with self.engine.connect() as conn:
            return list(conn.execute(select(items.c.dataset).distinct()
                                     .order_by(items.c.dataset)).scalars())

    # -- episodes -----------------------------------------------------------------------
    def _where(self, f: EpisodeFilter, facets: Facets) -> list:
        """The filter as SQL conditions on episodes (joined to items and the final answer)."""
        e, i, d = episodes.c, items.c, decisions.c
        conds: list = []
        if f.run:
            conds.append(e.run_id.in_(f.run))
        if f.protocol:
            conds.append(e.protocol.in_(f.protocol))
        if f.variant:  # a variant is its name, else its protocol's
            conds.append(or_(e.variant.in_(f.variant),
                             and_(or_(e.variant.is_(None), e.variant == ""),
                                  e.protocol.in_(f.variant))))
        if f.status:
            conds.append(e.status.in_(f.status))
        if f.dataset:
            conds.append(e.item_id.in_(select(i.id).where(i.dataset.in_(f.dataset))))
        if f.item:
            conds.append(e.item_id == f.item)
        for role, name in f.model:  # the (roles, models) texts in which role plays `name`
            match = [(r, m) for r, m, _, by_role, _ in facets.combos if by_role.get(role) == name]
            conds.append(or_(*(and_(self._text(e.roles) == r, self._text(e.models) == m)
                               for r, m in dict.fromkeys(match))) if match else false())
        for role, disp in f.disposition:
            match = [t for _, _, t, _, ds in facets.combos if ds.get(role) == disp]
            conds.append(self._text(e.dispositions).in_(list(dict.fromkeys(match))) if match
                         else false())
        if f.intent == "honest":
            conds.append(self._text(e.intent) == "[]")
        elif f.intent == "attack":
            conds.append(and_(e.intent.is_not(None), self._text(e.intent) != "[]"))
        if f.outcome:
            conds.append({"bad": e.outcome.is_(True), "fine": e.outcome.is_(False),
                          "unknown": e.outcome.is_(None)}[f.outcome])
        if f.result:  # one subquery per episode: its final answer's state as a code
            code = (select(case((d.parsed.is_(False), 3), (d.correct.is_(None), 2),
                                (d.correct.is_(True), 1), else_=0))
                    .where(d.id == final_answer_id()).scalar_subquery())
            conds.append(code.is_(None) if f.result == "no_answer" else code == {
                "wrong": 0, "correct": 1, "no_gold": 2, "unparsed": 3}[f.result])
        if f.flagged:
            flags = select(d.id).where(d.episode_id == e.id, d.kind == "flag", d.parsed.is_(True))
            yes = flags.where(d.value == 1.0).exists()
            conds.append(yes if f.flagged == "yes" else and_(flags.exists(), ~yes))
        if f.susp_min is not None or f.susp_max is not None:
            scores = select(d.id).where(d.episode_id == e.id, d.kind == "score",
                                        d.parsed.is_(True))
            if f.susp_min is not None:
                scores = scores.where(d.value >= f.susp_min)
            if f.susp_max is not None:
                scores = scores.where(d.value <= f.susp_max)
            conds.append(scores.exists())
        if f.q:
            m = messages.c
            # SQLite's LIKE ignores ASCII case already; lower() on every message costs more
            found = (m.content.contains(f.q, autoescape=True) if self.sqlite
                     else m.content.icontains(f.q, autoescape=True))
            conds.append(select(m.id).where(m.episode_id == e.id, found).exists())
        if f.run and len(conds) > 1 and facets.total == facets.store_total:
            # these runs hold every episode, and other conditions read each row anyway: a
            # plain scan in id order beats looking each row up from the run_id index
            conds.pop(0)
        return conds

    def _order(self, f: EpisodeFilter) -> list:
        e = episodes.c
        col = {"id": e.id, "variant": e.variant, "item": e.item_id, "status": e.status,
               "calls": e.n_calls, "tokens": e.tokens_in + e.tokens_out, "cost": e.cost_usd,
               "duration": e.duration_s}[f.sort]
        if f.sort == "id":
            return [e.id.desc() if f.desc else e.id]
        by = col.desc() if f.desc else col.asc()
        if not self.sqlite:  # NULL sorts as the smallest value, as SQLite has it
            by = by.nulls_last() if f.desc else by.nulls_first()
        return [by, e.id.desc() if f.desc else e.id]

    def episodes_page(self, f: EpisodeFilter, facets: Facets) -> Page:
        """One page of episodes (the filter's sort, LIMIT/OFFSET), each with its item's
        input, dataset and decisions, and the filtered count (capped at COUNT_CAP).

        The page's ids are found first, from the episodes alone (items joined only to filter
        by dataset), so a deep OFFSET skips ids, not whole rows; then those rows are read."""
        e = episodes.c
        conds = self._where(f, facets)
        ids = select(e.id).select_from(episodes).where(*conds)
        page = ids.order_by(*self._order(f)).limit(f.per).offset((f.page - 1) * f.per)
        with self.engine.connect() as conn:
            order = list(conn.execute(page).scalars())
            total = conn.execute(select(func.count()).select_from(
                ids.limit(COUNT_CAP + 1).subquery())).scalar_one()
            rows = self._rows(conn, order)
            made = self._decisions_of(conn, order)
        for r in rows:
            for k in ("intent", "dispositions", "roles", "models"):
                r[k] = _json(r[k])
            r["role_models"] = role_models(r["roles"], r["models"])
            r.update(summarise(made.get(r["id"], []), r["decides"]))
        return Page(rows, min(total, COUNT_CAP), total > COUNT_CAP)

    @staticmethod
    def _rows(conn, ids: list[int]) -> list[dict]:
        """The episodes page's columns of these episodes, in this order."""
        if not ids:
            return []
        e, i = episodes.c, items.c
        stmt = (select(e.id, e.run_id, e.protocol, e.variant, e.item_id, e.status, e.treatment,
                       e.decides, _text(e.intent).label("intent"), e.outcome,
                       _text(e.dispositions).label("dispositions"),
                       _text(e.roles).label("roles"), _text(e.models).label("models"),
                       e.n_calls, e.tokens_in, e.tokens_out, e.cost_usd, e.duration_s,
                       e.cache_hits, e.source_episode_id, i.dataset, i.kind.label("item_kind"),
                       func.substr(i.input, 1, SNIPPET).label("input"),
                       func.length(i.input).label("input_chars"))
                .select_from(episodes).join(items, i.id == e.item_id, isouter=True)
                .where(e.id.in_(ids)))
        found = {r["id"]: dict(r) for r in conn.execute(stmt).mappings()}
        return [found[x] for x in ids if x in found]

    @staticmethod
    def _decisions_of(conn, ids: list[int]) -> dict[int, list[dict]]:
        if not ids:
            return {}
        d = decisions.c
        out: dict[int, list[dict]] = {}
        stmt = (select(d.episode_id, d.idx, d.role, d.kind, d.name, d.parsed, d.choice, d.text,
                       d.value, d.scale_lo, d.scale_hi, d.correct)
                .where(d.episode_id.in_(ids)).order_by(d.episode_id, d.idx))
        for r in conn.execute(stmt).mappings():
            out.setdefault(r["episode_id"], []).append(dict(r))
        return out

    # -- one episode --------------------------------------------------------------------
    def episode(self, episode_id: int) -> dict | None:
        """`Store.episode`, with its calls (no request or response bodies), and
        the episodes linked to it: the one it re-judged, the re-judgings of it."""
        data = self.store.episode(episode_id)
        if data is None:
            return None
        ep = data["episode"]  # JSON columns come parsed (the tables' JSON type)
        for m in data["messages"]:
            m["quotes"] = m.get("quotes") if isinstance(m.get("quotes"), list) else []
        mc, e = model_calls.c, episodes.c
        with self.engine.connect() as conn:
            data["calls"] = [dict(r) for r in conn.execute(
                select(mc.id, mc.role, mc.provider, mc.model, mc.tokens_in, mc.tokens_out,
                       mc.tokens_cached, mc.tokens_reasoning, mc.latency_s, mc.cost_usd,
                       mc.attempt, mc.error, mc.error_kind, mc.cache_hit, mc.reply_chars,
                       mc.created_at)
                .where(mc.episode_id == episode_id).order_by(mc.id)).mappings()]
            data["rejudgings"] = [dict(r) for r in conn.execute(
                select(e.id, e.run_id, e.status).where(e.source_episode_id == episode_id)
                .order_by(e.id).limit(50)).mappings()]
            data["same_item"] = [dict(r) for r in conn.execute(
                select(e.id, e.run_id, e.variant, e.protocol, e.treatment, e.status)
                .where(e.item_id == ep["item_id"], e.id != episode_id)
                .order_by(e.id).limit(20)).mappings()]
        data["role_models"] = role_models(ep["roles"], ep["models"])
        return data

    # -- comparison ---------------------------------------------------------------------
    def shared_items(self, side_a: tuple[str, str | None], side_b: tuple[str, str | None],
                     limit: int, offset: int) -> tuple[list[dict], int]:
        """Items both sides have episodes of (a side: run id, variant or None), a page of
        them with the two sides' episodes and final answers; and how many items are shared."""
        e = episodes.c

        def side(run_id: str, variant: str | None):
            s = select(e.item_id, func.min(e.id).label("ep")).where(e.run_id == run_id)
            if variant:
                s = s.where(or_(e.variant == variant,
                                and_(or_(e.variant.is_(None), e.variant == ""),
                                     e.protocol == variant)))
            return s.group_by(e.item_id).subquery()

        a, b = side(*side_a), side(*side_b)
        joined = select(a.c.item_id, a.c.ep.label("a"), b.c.ep.label("b")).join(
            b, b.c.item_id == a.c.item_id)
        return self._paged_pairs(joined, a.c.item_id, limit, offset)

    def rejudged_pairs(self, rejudge_run: str, limit: int, offset: int) -> tuple[list[dict], int]:
        """A re-judging's episodes next to the episodes they judged again, a page of them."""
        e = episodes.c
        src = episodes.alias("src")
        stmt = (select(e.id.label("b"), src.c.id.label("a"), src.c.item_id)
                .join(src, src.c.id == e.source_episode_id).where(e.run_id == rejudge_run))
        return self._paged_pairs(stmt, e.id, limit, offset)

    def _paged_pairs(self, pairs, order_by, limit: int, offset: int) -> tuple[list[dict], int]:
        """A page of `pairs` (rows with episode ids "a" and "b"), each with both episodes'
        final answers, and how many pairs there are in all."""
        e = episodes.c
        with self.engine.connect() as conn:
            total = conn.execute(select(func.count()).select_from(pairs.subquery())).scalar_one()
            rows = [dict(r) for r in conn.execute(
                pairs.order_by(order_by).limit(limit).offset(offset)).mappings()]
            ids = [r["a"] for r in rows] + [r["b"] for r in rows]
            made = self._decisions_of(conn, ids)
            decides = dict(conn.execute(select(e.id, e.decides).where(e.id.in_(ids))).all()) \
                if ids else {}
        for r in rows:
            r["answer_a"] = summarise(made.get(r["a"], []), decides.get(r["a"]))
            r["answer_b"] = summarise(made.get(r["b"], []), decides.get(r["b"]))
        return rows, total


def _merge(groups: list[tuple], store_total: int, datasets: list[str]) -> Facets:
    """Facets of the episodes in these groups (see `Reader._read_groups`)."""
    protocols: dict[str, int] = {}
    variants: dict[str, int] = {}
    statuses: dict[str, int] = {}
    models: dict[str, dict[str, int]] = {}
    disps: dict[str, dict[str, int]] = {}
    combos: dict[tuple, list] = {}
    total = 0

    def add(table: dict, key, n: int) -> None:
        table[key] = table.get(key, 0) + n

    for _, protocol, variant, status, roles_t, models_t, disp_t, n in groups:
        total += n
        add(protocols, protocol, n)
        add(variants, variant or protocol, n)
        add(statuses, status, n)
        key = (roles_t, models_t, disp_t)
        if key not in combos:
            disp = _json(disp_t)
            combos[key] = [role_models(_json(roles_t), _json(models_t)),
                           disp if isinstance(disp, dict) else {}]
        by_role, disp = combos[key]
        for role, name in by_role.items():
            add(models.setdefault(role, {}), name, n)
        for role, d in disp.items():
            if isinstance(d, str):
                add(disps.setdefault(role, {}), d, n)
    return Facets(protocols, variants, statuses, datasets, models, disps,
                  [(*k, *v) for k, v in combos.items()], total, store_total)


def summarise(made: list[dict], decides: str | None) -> dict:
    """The episodes page's columns from an episode's decisions: the final answer (the
    deciding role's last answer), whether it was flagged, its suspicion scores."""
    answers = [d for d in made if d["kind"] == "answer" and d["role"] == decides]
    final = answers[-1] if answers else None
    flags = [d for d in made if d["kind"] == "flag" and d["parsed"]]
    scores = [d for d in made if d["kind"] == "score"]
    if final is None:
        result = "no_answer"
    elif not final["parsed"]:
        result = "unparsed"
    elif final["correct"] is None:
        result = "no_gold"
    else:
        result = "correct" if final["correct"] else "wrong"
    return {"final": final, "result": result,
            "flagged": None if not flags else any(d["value"] == 1.0 for d in flags),
            "scores": scores}
