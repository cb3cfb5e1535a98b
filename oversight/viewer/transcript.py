"""An episode's transcript as segments for the templates: plain text, and quotes whose
verified or unverified mark comes from the stored quote checks (`messages.quotes`), never from
text an agent wrote; and the hidden context with each quoted span found and highlighted.

Nothing here builds HTML: segments are (text, attributes) that the templates escape.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

# The system's marks in `messages.shown` (api/quotes.verify strips every quote-like tag an
# agent wrote before it puts its own back, one per stored check, in order).
_MARK = re.compile(r"<(v|u)_quote>(.*?)</\1_quote>", re.DOTALL)
_TRANSLATE = str.maketrans({"“": '"', "”": '"', "‘": "'", "’": "'", "–": "-", "—": "-"})


@dataclass
class Segment:
    """A run of message text: plain (`quote` None) or a quote with its stored check."""

    text: str
    quote: dict | None = None  # {"n", "status", "score", "anchor", "found"} for a quote


@dataclass
class ContextPart:
    text: str
    quotes: list[str] = field(default_factory=list)  # anchors of the quotes covering it
    status: str | None = None  # "verified" when any covering quote is, else "other"
    anchors: list[str] = field(default_factory=list)  # quotes whose first span starts here


def message_segments(shown: str, checks: list[dict], prefix: str) -> list[Segment]:
    """`shown` split into text and quotes. A mark is a quote only when the stored check in
    its position has the same text; its status is that check's. A mark without a matching
    check (a store edited by hand, a forged mark) stays plain text, tags and all."""
    out: list[Segment] = []
    pos = k = 0
    for m in _MARK.finditer(shown):
        check = checks[k] if k < len(checks) and isinstance(checks[k], dict) else None
        if check is None or check.get("text") != m.group(2):
            continue  # not the system's mark: left in the surrounding text
        if m.start() > pos:
            out.append(Segment(shown[pos:m.start()]))
        status = check.get("status")
        status = status if status in ("verified", "near_miss", "unverified") else "unverified"
        out.append(Segment(m.group(2), {"n": k + 1, "status": status,
                                        "score": check.get("score"),
                                        "anchor": f"{prefix}-{k + 1}"}))
        pos, k = m.end(), k + 1
    if pos < len(shown):
        out.append(Segment(shown[pos:]))
    return out


def _fold(text: str) -> tuple[str, list[int]]:
    """`text` folded as quotes are checked (NFKC, typographic quotes and dashes, case,
    whitespace runs as one space), with the index in `text` of each folded character."""
    out: list[str] = []
    at: list[int] = []
    space = False
    for i, ch in enumerate(text):
        piece = unicodedata.normalize("NFKC", ch).translate(_TRANSLATE).lower()
        for c in piece:
            if c.isspace():
                if space:
                    continue
                c, space = " ", True
            else:
                space = False
            out.append(c)
            at.append(i)
    return "".join(out), at


def _needle(span: str) -> str:
    folded, _ = _fold(span)
    return folded.strip().strip(" .,;:!?\"'")


def locate(context: str, spans: list[tuple[str, str, str]]) -> tuple[list[ContextPart], set[str]]:
    """The context split into parts, each quote's span (anchor, text, status) highlighted
    wherever it occurs (every occurrence); returns the parts and the anchors found."""
    if not context:
        return [], set()
    folded, at = _fold(context)
    cover: list[list[tuple[str, str]]] = [[] for _ in context]
    found: set[str] = set()
    for anchor, text, status in spans:
        needle = _needle(text)
        if not needle:
            continue
        start = folded.find(needle)
        while start >= 0:
            lo, hi = at[start], at[start + len(needle) - 1] + 1
            for j in range(lo, hi):
                cover[j].append((anchor, status))
            found.add(anchor)
            start = folded.find(needle, start + 1)
    parts: list[ContextPart] = []
    first: set[str] = set()
    for j, ch in enumerate(context):
        quotes = [a for a, _ in cover[j]]
        status = None if not quotes else (
            "verified" if any(s == "verified" for _, s in cover[j]) else "other")
        if parts and parts[-1].quotes == quotes and parts[-1].status == status:
            parts[-1].text += ch
            continue
        new = [a for a in quotes if a not in first]
        first.update(new)
        parts.append(ContextPart(ch, quotes, status, new))
    return parts, found
