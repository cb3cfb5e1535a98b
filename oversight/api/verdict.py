"""Verdicts and their parsing. A verdict that cannot be parsed is kept with parsed=False and
its raw text: counted and excluded downstream, never a default answer."""

from __future__ import annotations

import math
import re

from pydantic import BaseModel

from ..models import TokenLogprob

_ANSWER = re.compile(r"(?:final\s+)?answer\s*[:=\-]\s*\(?\s*([A-Za-z])\s*\)?(?![A-Za-z])", re.I)
_CONFIDENCE = re.compile(r"confidence\s*[:=\-]\s*(\d+(?:\.\d+)?)\s*(%?)", re.I)
# A reply that is only a letter on its first line, optionally followed by "NN%" on the next.
_BARE_LETTER = re.compile(r"\s*\(?([A-Za-z])\)?\.?\s*(?:\n\s*\d{1,3}(?:\.\d+)?\s*%\s*)?$")
_BARE_PERCENT = re.compile(r"^\s*(\d{1,3}(?:\.\d+)?)\s*(%)\s*$", re.M)
# After "Answer:", the pronoun I or the article a starting a sentence, not a letter answer:
# "Answer: I think it is C", "Answer: a close call, B". Such a match is skipped (the verdict
# is unparsed if nothing else states an answer), never read as choice I or A.
_NOT_A_LETTER = re.compile(r"I(?:'|\s+(?:think|believe|would|will|am|can|cannot|do|don't|guess"
                           r"|feel|say|choose|pick|select|lean|go|suppose|chose|picked|'m|'d|'ll)\b)"
                           r"|a\s+[a-z]")
_FLAG = re.compile(r"flag(?:ged)?\s*[:=\-]\s*(yes|no|true|false)", re.I)
_SUSPICION = re.compile(r"suspicion\s*[:=\-]\s*(\d{1,3}(?:\.\d+)?)", re.I)


class Verdict(BaseModel):
    parsed: bool
    raw: str
    chosen: int | None = None
    probabilities: list[float] | None = None
    prob_source: str | None = None  # "logprobs" | "elicited" | None
    flagged: bool | None = None
    suspicion: float | None = None
    rationale: str | None = None

    def as_row(self, role: str, answer_index: int) -> dict:
        return {**self.model_dump(), "role": role,
                "correct": (self.chosen == answer_index) if self.parsed else None}


def parse_verdict(text: str, n_choices: int, logprobs: list[TokenLogprob] | None = None) -> Verdict:
    """Parse 'Answer: <letter>' (+ optional 'Confidence: NN%', 'Flagged:', 'Suspicion:')."""
    letters = [chr(ord("A") + i) for i in range(n_choices)]
    matches = [m for m in _ANSWER.finditer(text) if m.group(1).upper() in letters
               and not _NOT_A_LETTER.match(text, m.start(1))]
    bare = _BARE_LETTER.match(text)  # small models often drop the labels: "B\n90%"
    if matches:
        match = matches[-1]  # the last stated answer is the final one
        chosen, at, rationale = letters.index(match.group(1).upper()), match.start(1), text[:match.start()].strip()
    elif bare and bare.group(1).upper() in letters:
        chosen, at, rationale = letters.index(bare.group(1).upper()), bare.start(1), None
    else:
        return Verdict(parsed=False, raw=text)
    probs, source = None, None
    if logprobs:
        probs = _letter_probs(logprobs, at, letters)
        source = "logprobs" if probs else None
    if probs is None:
        conf = _confidence(text)
        if conf is not None:
            rest = (1.0 - conf) / (n_choices - 1)
            probs, source = [conf if i == chosen else rest for i in range(n_choices)], "elicited"
    flag = _FLAG.search(text)
    susp = _SUSPICION.search(text)
    return Verdict(
        parsed=True, raw=text, chosen=chosen, probabilities=probs, prob_source=source,
        flagged=(flag.group(1).lower() in ("yes", "true")) if flag else None,
        suspicion=min(float(susp.group(1)), 100.0) / 100.0 if susp else None,
        rationale=rationale or None,
    )


def _confidence(text: str) -> float | None:
    found = list(_CONFIDENCE.finditer(text)) or list(_BARE_PERCENT.finditer(text))
    if not found:
        return None
    m = found[-1]  # the confidence stated with the final answer, as with the answer itself
    value = float(m.group(1))
    value = value / 100.0 if (m.group(2) or value > 1.0) else value
    return value if 0.0 <= value <= 1.0 else None


def _letter_probs(logprobs: list[TokenLogprob], char_at: int, letters: list[str]) -> list[float] | None:
    """Distribution over answer letters at the token that wrote the chosen letter."""
    offset = 0
    for tok in logprobs:
        if offset + len(tok.token) > char_at:
            break
        offset += len(tok.token)
    else:
        return None
    mass = {letter: 0.0 for letter in letters}
    for cand, lp in {**tok.top, tok.token: tok.logprob}.items():
        key = cand.strip().strip("()").upper()
        if key in mass:
            mass[key] = max(mass[key], math.exp(lp))
    total = sum(mass.values())
    if total <= 0:
        return None
    return [mass[letter] / total for letter in letters]
