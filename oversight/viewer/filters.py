"""The episodes page's filter, sort and page, read from the URL and written back to it, so any
view can be shared as a link. Unknown or malformed values are dropped (and listed), never
passed to SQL as text: every value reaches the database as a bound parameter."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from urllib.parse import urlencode

SORTS = ("id", "variant", "item", "status", "calls", "tokens", "cost", "duration")
PAGE_SIZES = (25, 50, 100, 200)
RESULTS = ("correct", "wrong", "unparsed", "no_gold", "no_answer")
INTENTS = ("attack", "honest")
OUTCOMES = ("bad", "fine", "unknown")
FLAGGED = ("yes", "no")
MAX_TEXT = 200  # characters of a search or a value kept from the URL


def _pair(value: str) -> tuple[str, str] | None:
    """'role:name' -> (role, name); None when either side is empty."""
    role, sep, name = value.partition(":")
    return (role, name) if sep and role and name else None


def _number(value: str | None) -> float | None:
    try:
        x = float(value) if value not in (None, "") else None
    except ValueError:
        return None
    return x if x is not None and math.isfinite(x) else None


@dataclass(frozen=True)
class EpisodeFilter:
    """What the episodes page shows: every field a URL parameter of the same name (lists
    repeat the parameter; `model` and `disposition` are ROLE:VALUE)."""

    run: tuple[str, ...] = ()
    protocol: tuple[str, ...] = ()
    variant: tuple[str, ...] = ()
    dataset: tuple[str, ...] = ()
    status: tuple[str, ...] = ()
    model: tuple[tuple[str, str], ...] = ()  # (role, model name)
    disposition: tuple[tuple[str, str], ...] = ()  # (role, disposition)
    intent: str | None = None  # attack | honest
    outcome: str | None = None  # bad | fine | unknown
    result: str | None = None  # the deciding role's final answer: RESULTS
    flagged: str | None = None  # yes | no
    susp_min: float | None = None  # some parsed score decision's value, on its own scale
    susp_max: float | None = None
    item: str | None = None  # one item id
    q: str = ""  # text in a message of the transcript
    sort: str = "id"
    desc: bool = False
    page: int = 1
    per: int = 50
    dropped: tuple[str, ...] = field(default=(), compare=False)  # parameters ignored

    @classmethod
    def from_query(cls, params) -> EpisodeFilter:
        """From a Starlette QueryParams (a multi-dict)."""
        dropped: list[str] = []

        def many(name: str) -> tuple[str, ...]:
            return tuple(dict.fromkeys(v[:MAX_TEXT] for v in params.getlist(name) if v))

        def one(name: str, allowed: tuple[str, ...]) -> str | None:
            v = params.get(name) or None
            if v is not None and v not in allowed:
                dropped.append(name)
                return None
            return v

        def pairs(name: str) -> tuple[tuple[str, str], ...]:
            out = []
            for v in many(name):
                p = _pair(v)
                (out.append(p) if p else dropped.append(name))
            return tuple(dict.fromkeys(out))

        def number(name: str) -> float | None:
            raw = params.get(name)
            x = _number(raw)
            if raw not in (None, "") and x is None:
                dropped.append(name)
            return x

        def integer(name: str, default: int, lo: int, hi: int) -> int:
            raw = params.get(name)
            try:
                return min(hi, max(lo, int(raw))) if raw else default
            except ValueError:
                dropped.append(name)
                return default

        per = integer("per", 50, 1, max(PAGE_SIZES))
        if per not in PAGE_SIZES:
            per = min(PAGE_SIZES, key=lambda s: abs(s - per))
        sort = params.get("sort") or "id"
        if sort not in SORTS:
            dropped.append("sort")
            sort = "id"
        return cls(run=many("run"), protocol=many("protocol"), variant=many("variant"),
                   dataset=many("dataset"), status=many("status"), model=pairs("model"),
                   disposition=pairs("disposition"), intent=one("intent", INTENTS),
                   outcome=one("outcome", OUTCOMES), result=one("result", RESULTS),
                   flagged=one("flagged", FLAGGED), susp_min=number("susp_min"),
                   susp_max=number("susp_max"), item=(params.get("item") or None),
                   q=(params.get("q") or "")[:MAX_TEXT], sort=sort,
                   desc=params.get("dir") == "desc", page=integer("page", 1, 1, 10**9),
                   per=per, dropped=tuple(dict.fromkeys(dropped)))

    def params(self) -> list[tuple[str, str]]:
        """The URL parameters that give this filter back (defaults left out)."""
        out: list[tuple[str, str]] = []
        for name in ("run", "protocol", "variant", "dataset", "status"):
            out += [(name, v) for v in getattr(self, name)]
        out += [("model", f"{r}:{m}") for r, m in self.model]
        out += [("disposition", f"{r}:{d}") for r, d in self.disposition]
        for name in ("intent", "outcome", "result", "flagged", "item"):
            if getattr(self, name) is not None:
                out.append((name, getattr(self, name)))
        for name in ("susp_min", "susp_max"):
            if getattr(self, name) is not None:
                out.append((name, format(getattr(self, name), "g")))
        if self.q:
            out.append(("q", self.q))
        if self.sort != "id":
            out.append(("sort", self.sort))
        if self.desc:
            out.append(("dir", "desc"))
        if self.per != 50:
            out.append(("per", str(self.per)))
        if self.page != 1:
            out.append(("page", str(self.page)))
        return out

    def query(self, **changes) -> str:
        """This filter's query string after `changes` (e.g. page=2), without the '?'."""
        return urlencode((replace(self, **changes) if changes else self).params())

    def sorted_by(self, column: str) -> str:
        """The query string sorting by `column`: descending on a second click."""
        desc = not self.desc if column == self.sort else column in ("cost", "tokens", "calls",
                                                                     "duration")
        return self.query(sort=column, desc=desc, page=1)

    def without(self, name: str, value=None) -> str:
        """The query string without one filter (or one value of a list filter)."""
        current = getattr(self, name)
        if isinstance(current, tuple) and value is not None:
            return self.query(**{name: tuple(v for v in current if v != value)}, page=1)
        blank = () if isinstance(current, tuple) else ("" if name == "q" else None)
        return self.query(**{name: blank}, page=1)

    def active(self) -> list[tuple[str, str, str]]:
        """(name, shown value, query string without it) of each filter in use, for chips."""
        out = []
        for name in ("run", "protocol", "variant", "dataset", "status"):
            out += [(name, v, self.without(name, v)) for v in getattr(self, name)]
        for name in ("model", "disposition"):
            out += [(name, f"{r}: {v}", self.without(name, (r, v))) for r, v in getattr(self, name)]
        for name in ("intent", "outcome", "result", "flagged", "item"):
            if getattr(self, name) is not None:
                out.append((name, getattr(self, name), self.without(name)))
        for name in ("susp_min", "susp_max"):
            if getattr(self, name) is not None:
                out.append((name, format(getattr(self, name), "g"), self.without(name)))
        if self.q:
            out.append(("text", self.q, self.without("q")))
        return out
