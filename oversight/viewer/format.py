"""Numbers and names as the pages print them (Jinja2 filters). Each returns plain text; the
templates escape it like any other value. A figure that does not exist prints as "—"."""

from __future__ import annotations

import json
import math
from typing import Any

DASH = "—"


def _finite(x: Any) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def pct(x: Any, digits: int = 1) -> str:
    x = _finite(x)
    return DASH if x is None else f"{100 * x:.{digits}f}%"


def num(x: Any, spec: str = ".2f") -> str:
    x = _finite(x)
    return DASH if x is None else format(x, spec)


def value(x: Any) -> str:
    """A score or threshold: as few digits as it needs."""
    x = _finite(x)
    return DASH if x is None else f"{x:.4g}"


def param(x: Any) -> str:
    """A parameter's value as the spec would write it: text as is, anything else as JSON."""
    return x if isinstance(x, str) else json.dumps(x, ensure_ascii=False, default=str)


def interval(lo: Any, hi: Any, as_pct: bool = True) -> str:
    if _finite(lo) is None or _finite(hi) is None:
        return DASH
    return f"{pct(lo)}–{pct(hi)}" if as_pct else f"{num(lo)}–{num(hi)}"


def usd(x: Any) -> str:
    x = _finite(x)
    return DASH if x is None else f"${x:,.4f}"


def count(x: Any) -> str:
    return DASH if x is None else f"{int(x):,}"


def secs(x: Any) -> str:
    x = _finite(x)
    return DASH if x is None else (f"{x:.2f} s" if x < 100 else f"{x:,.0f} s")


def budget(b: Any) -> str:
    b = _finite(b)
    return DASH if b is None else f"{100 * b:g}%"


def letter(i: Any) -> str:
    """Choice i as the agents saw it: 0 -> A."""
    try:
        i = int(i)
    except (TypeError, ValueError):
        return "?"
    return chr(ord("A") + i) if 0 <= i < 26 else str(i)


def when(ts: Any) -> str:
    """An ISO time as 'YYYY-MM-DD HH:MM:SS' (UTC)."""
    return DASH if not ts else str(ts)[:19].replace("T", " ")


def role_class(index: int) -> str:
    """The colour class of the i-th role of an episode (never the role's own name)."""
    return f"role{int(index) % 8}"


def store_name(url: str) -> str:
    """The store as the header shows it (a PostgreSQL password hidden)."""
    from ..store import safe_url
    return safe_url(url).removeprefix("sqlite:///")
