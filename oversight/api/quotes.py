"""Quote verification for roles that read the hidden context.

Agents quote with <quote>…</quote>. Each span is checked against the context after
normalisation (case, whitespace, typographic quotes and dashes); exact matches become
<v_quote>, everything else <u_quote> — the marks of Khan et al. 2024. Near-misses (fuzzy score
>= NEAR_MISS) are recorded separately for reviewers but shown to the judge as unverified.
An agent cannot forge a mark: any quote-like tag it writes is treated as an ordinary quote
and verified again, including look-alikes (full-width or other '<'/'>' look-alikes, and
square-bracket marks).
"""

from __future__ import annotations

import re
import unicodedata

NEAR_MISS = 85.0  # partial_ratio score at or above which an unverified quote is a near-miss

# Any tag an agent might write to pass as verified: <quote>, <v_quote>, <u_quote>, with spaces,
# different case or attributes (<v_quote source="passage">). All are re-verified, none is trusted.
_TAG = r"(?:v_|u_)?quote\b[^<>\x00]*>"
_QUOTE = re.compile(r"<\s*" + _TAG + r"(.*?)<\s*/\s*" + _TAG, re.I | re.S)
# Left-over tags, and unterminated ones ('<v_quote a="1'), which the '>' of a system mark
# placed right after them would otherwise complete.
_STRAY_TAG = re.compile(r"<\s*/?\s*(?:v_|u_)?quote\b(?:[^<>\x00]*>)?", re.I)
_TRANSLATE = str.maketrans({"“": '"', "”": '"', "‘": "'", "’": "'", "–": "-", "—": "-"})
# Marks in square brackets ('[v_quote]') are never the system's: stripped like stray tags.
_SQUARE_MARK = re.compile(r"\[\s*/?\s*(?:v_|u_)quote\b[^\[\]\x00]*\]", re.I)
# Look-alikes of '<' and '>' that NFKC leaves alone. Agent text is NFKC-folded (so a
# full-width '＜ｖ_quote＞' becomes '<v_quote>') and these are mapped to ASCII before any tag
# is looked for, so no look-alike mark reaches the judge.
_BRACKETS = str.maketrans({**{c: "<" for c in "‹〈⟨˂ᐸ❮❬⧼﹤"}, **{c: ">" for c in "›〉⟩˃ᐳ❯❭⧽﹥"}})


def _strip_tags(text: str) -> str:
    """Remove quote-like tags until none is left: one pass is not enough, because removing
    one tag can join its neighbours into another ('<v_<quote>quote>' -> '<v_quote>')."""
    while True:
        stripped = _SQUARE_MARK.sub("", _STRAY_TAG.sub("", text))
        if stripped == text:
            return text
        text = stripped


def normalise(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).translate(_TRANSLATE).replace("``", '"').replace("''", '"')
    text = re.sub(r"\s+", " ", text.lower()).strip()
    return text.strip(" .,;:!?\"'")


def check(span: str, context_norm: str) -> tuple[str, float]:
    """('verified'|'near_miss'|'unverified', score 0..100) for one quoted span."""
    needle = normalise(span)
    if not needle:
        return "unverified", 0.0
    if needle in context_norm:
        return "verified", 100.0
    from rapidfuzz import fuzz  # only for a near miss: not imported before the first call
    score = fuzz.partial_ratio(needle, context_norm)
    return ("near_miss" if score >= NEAR_MISS else "unverified"), round(score, 1)


def verify(text: str, context: str | None) -> tuple[str, list[dict]]:
    """Return (text as the judge sees it, per-quote results)."""
    context_norm = normalise(context or "")
    results: list[dict] = []
    marked: list[str] = []

    def mark(match: re.Match) -> str:
        span = _strip_tags(match.group(1))
        status, score = check(span, context_norm) if context else ("unverified", 0.0)
        results.append({"text": span, "status": status, "score": score})
        tag = "v_quote" if status == "verified" else "u_quote"
        marked.append(f"<{tag}>{span}</{tag}>")
        return f"\x00{len(marked) - 1}\x00"

    # Placeholders first, so that a lone or unmatched tag left in the agent's text can be
    # stripped before the system's own marks go back in.
    text = unicodedata.normalize("NFKC", text).translate(_BRACKETS).replace("\x00", "")
    body = _QUOTE.sub(mark, text)
    body = _strip_tags(body)
    return re.sub("\x00(\\d+)\x00", lambda m: marked[int(m.group(1))], body), results
