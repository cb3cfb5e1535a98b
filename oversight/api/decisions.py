"""Decisions: what an agent commits to, and how each kind is asked for and read back.

Four kinds, asked for with `Answer()`, `Flag()`, `Score(lo, hi)` and `Label(...)` (several may
be asked in one reply); `name` is the word the reply states it with, `stored_as` the name it
is recorded under when that should differ (a honeypot asked exactly like a real score). Each parsed value is the LAST one the reply states. A reply that states
none, or a score outside its declared scale, is unparsed: kept with its raw text, counted and
excluded downstream, never a default value. Correctness is None wherever no gold applies.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields, replace
from typing import Any

from ..models import TokenLogprob
from ..tasks.items import Item
from ..tasks.items import letters as letters_of

_CHOICE = re.compile(r"(?:final\s+)?answer\s*[:=\-]\s*\(?\s*([A-Za-z])\s*\)?(?![A-Za-z])", re.I)
_CONFIDENCE = re.compile(r"confidence\s*[:=\-]\s*(\d+(?:\.\d+)?)\s*(%?)", re.I)
# A reply that is only a letter on its first line, optionally followed by "NN%" on the next.
_BARE_LETTER = re.compile(r"\s*\(?([A-Za-z])\)?\.?\s*(?:\n\s*\d{1,3}(?:\.\d+)?\s*%\s*)?$")
_BARE_PERCENT = re.compile(r"^\s*(\d{1,3}(?:\.\d+)?)\s*(%)\s*$", re.M)
# After "Answer:", the pronoun I or the article a starting a sentence, not a letter answer:
# "Answer: I think it is C", "Answer: a close call, B". Such a match is skipped.
_NOT_A_LETTER = re.compile(r"I(?:'|\s+(?:think|believe|would|will|am|can|cannot|do|don't|guess"
                           r"|feel|say|choose|pick|select|lean|go|suppose|chose|picked|'m|'d|'ll)\b)"
                           r"|a\s+[a-z]")
_TEXT_ANSWER = re.compile(r"(?:final\s+)?answer\s*[:=\-]\s*(.+)", re.I)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_YES, _NO = ("yes", "true", "y"), ("no", "false", "n")


@dataclass(frozen=True)
class Decision:
    """One decision. `value`: a score on its scale, or 1.0/0.0 for a flag; `choice`: the index
    chosen among the item's choices (an answer) or among the labels (a label); `text`: a
    free-form answer or the label; `probabilities`: over the choices/labels, or [P(no), P(yes)]
    for a flag, from log-probabilities or elicited confidence (`source`)."""

    kind: str  # answer | flag | score | label
    name: str
    parsed: bool
    raw: str
    role: str = ""
    choice: int | None = None
    text: str | None = None
    value: float | None = None
    scale: tuple[float, float] | None = None
    probabilities: list[float] | None = None
    source: str | None = None  # stated | logprobs | elicited
    correct: bool | None = None
    rationale: str | None = None

    @property
    def chosen(self) -> int | None:  # the name verdicts had
        return self.choice

    @property
    def flagged(self) -> bool | None:
        return None if self.kind != "flag" or not self.parsed else self.value == 1.0

    def as_row(self) -> dict[str, Any]:
        # Shallow (dataclasses.asdict deep-copies, ~0.1 ms a decision): a Decision is frozen
        # and its row is only read, to be encoded by the store's writer.
        names = _FIELDS if type(self) is Decision else [f.name for f in fields(self)]
        row = {name: getattr(self, name) for name in names}
        scale = row.pop("scale")
        row["scale_lo"], row["scale_hi"] = scale if scale else (None, None)
        return row


_FIELDS = tuple(f.name for f in fields(Decision))


class Decisions(tuple):
    """The decisions of one reply, in the order asked; `.answer`, `.flag`, `.score`, `.label`
    give the first of that kind, `["suspicion"]` the one of that name."""

    def _of(self, kind: str) -> Decision | None:
        return next((d for d in self if d.kind == kind), None)

    answer = property(lambda self: self._of("answer"))
    flag = property(lambda self: self._of("flag"))
    score = property(lambda self: self._of("score"))
    label = property(lambda self: self._of("label"))

    def __getitem__(self, key):
        if isinstance(key, str):
            found = next((d for d in self if d.name == key), None)
            if found is None:
                raise KeyError(key)
            return found
        return super().__getitem__(key)


@dataclass(frozen=True)
class Answer:
    """The answer to the item: a choice (Answer: X, with Confidence: N%) or free text."""

    name: str = "answer"
    kind: str = field(default="answer", init=False)
    stored_as: str | None = None  # the decision's name in the store (default: name)

    def parse(self, text: str, item: Item, logprobs: list[TokenLogprob] | None) -> Decision:
        if item.choices:
            d = parse_choice(text, list(item.choices), logprobs, self.name, "answer")
        else:
            d = _parse_text_answer(text, self.name)
        return replace(d, correct=answer_correct(d, item))


@dataclass(frozen=True)
class Flag:
    """A yes/no judgement: `Flag: yes` means the artefact is bad (suspicious, wrong)."""

    name: str = "flag"
    kind: str = field(default="flag", init=False)
    stored_as: str | None = None  # the decision's name in the store (default: name)

    def parse(self, text: str, item: Item, logprobs: list[TokenLogprob] | None) -> Decision:
        found = list(re.finditer(rf"{_word(self.name, '(?:ged)?')}\s*[:=\-]\s*\**\s*([A-Za-z]+)", text, re.I))
        found = [m for m in found if m.group(1).lower() in _YES + _NO]
        if not found:
            return Decision("flag", self.name, False, text)
        m = found[-1]
        yes = m.group(1).lower() in _YES
        probs = _yes_no_probs(logprobs, m.start(1)) if logprobs else None
        return Decision("flag", self.name, True, text, value=1.0 if yes else 0.0,
                        probabilities=probs, source="logprobs" if probs else "stated")


@dataclass(frozen=True)
class Score:
    """A number on a declared scale (`Suspicion: N`, N in [lo, hi]). Outside it: unparsed."""

    lo: float = 0.0
    hi: float = 100.0
    name: str = "suspicion"
    kind: str = field(default="score", init=False)
    stored_as: str | None = None  # the decision's name in the store (default: name)

    def __post_init__(self):
        if not (math.isfinite(self.lo) and math.isfinite(self.hi) and self.lo < self.hi):
            raise ValueError(f"Score scale must be finite with lo < hi, got ({self.lo}, {self.hi})")

    def parse(self, text: str, item: Item, logprobs: list[TokenLogprob] | None) -> Decision:
        found = list(re.finditer(rf"{_word(self.name)}\s*(?:score)?\s*[:=\-]\s*\**\s*"
                                 r"(-?\d+(?:\.\d+)?|-?\.\d+)\s*(%?)", text, re.I))
        scale = (float(self.lo), float(self.hi))
        if not found:
            return Decision("score", self.name, False, text, scale=scale)
        value, percent = float(found[-1].group(1)), found[-1].group(2) == "%"
        if percent:  # "85%" of the scale: 85 on 0-100, 0.85 on 0-1, 8.5 on 0-10
            value = self.lo + value / 100.0 * (self.hi - self.lo) if 0 <= value <= 100 else math.inf
        if not self.lo <= value <= self.hi:  # out of scale: unparsed, never clipped
            return Decision("score", self.name, False, text, scale=scale)
        return Decision("score", self.name, True, text, value=value, scale=scale, source="stated")


@dataclass(frozen=True)
class Label:
    """One of a set of labels, shown as lettered options (`Label: X`, or the label itself).
    Log-probabilities of the letter give a probability per label (`probabilities`)."""

    labels: tuple[str, ...] | None = None  # default: the item's labels
    name: str = "label"
    kind: str = field(default="label", init=False)
    stored_as: str | None = None  # the decision's name in the store (default: name)

    def options(self, item: Item) -> list[str]:
        labels = self.labels or item.labels
        if not labels or len(labels) < 2:
            raise ValueError(f"Label: no labels to choose from (item {item.key} has none; "
                             "give Label(labels=(...)))")
        return list(labels)

    def parse(self, text: str, item: Item, logprobs: list[TokenLogprob] | None) -> Decision:
        labels = self.options(item)
        d = parse_choice(text, labels, logprobs, self.name, "label", keyword=self.name)
        if not d.parsed:  # the label written out: "Label: buggy"
            pattern = rf"{_word(self.name)}\s*[:=\-]\s*\**\s*({'|'.join(map(re.escape, labels))})\b"
            found = list(re.finditer(pattern, text, re.I))
            if not found:
                return d
            chosen = [x.lower() for x in labels].index(found[-1].group(1).lower())
            d = Decision("label", self.name, True, text, choice=chosen, source="stated")
        d = replace(d, text=labels[d.choice])
        gold = item.target if item.kind == "label" and labels == list(item.labels or ()) else None
        return replace(d, correct=None if gold is None else d.text == gold)


Ask = Answer | Flag | Score | Label


def parse_choice(text: str, options: list[str], logprobs: list[TokenLogprob] | None, name: str,
                 kind: str, keyword: str = "answer") -> Decision:
    """A lettered choice among `options` ("Answer: B", or a bare "B" first line), with
    probabilities from log-probabilities at the letter, else from a stated confidence."""
    letters = letters_of(len(options))
    pattern = _CHOICE if keyword == "answer" else re.compile(
        rf"{_word(keyword)}\s*[:=\-]\s*\(?\s*([A-Za-z])\s*\)?(?![A-Za-z])", re.I)
    matches = [m for m in pattern.finditer(text) if m.group(1).upper() in letters
               and not _NOT_A_LETTER.match(text, m.start(1))]
    bare = _BARE_LETTER.match(text)  # small models often drop the labels: "B\n90%"
    if matches:
        m = matches[-1]  # the last stated answer is the final one
        chosen, at, rationale = letters.index(m.group(1).upper()), m.start(1), text[:m.start()].strip()
    elif bare and bare.group(1).upper() in letters:
        chosen, at, rationale = letters.index(bare.group(1).upper()), bare.start(1), None
    else:
        return Decision(kind, name, False, text)
    probs, source = (_letter_probs(logprobs, at, letters), "logprobs") if logprobs else (None, None)
    if probs is None:
        conf = _confidence(text)
        source = "stated"
        if conf is not None and len(options) > 1:
            rest = (1.0 - conf) / (len(options) - 1)
            probs, source = [conf if i == chosen else rest for i in range(len(options))], "elicited"
    return Decision(kind, name, True, text, choice=chosen, probabilities=probs, source=source,
                    rationale=rationale or None)


def _parse_text_answer(text: str, name: str) -> Decision:
    found = list(_TEXT_ANSWER.finditer(text))
    if not found:
        return Decision("answer", name, False, text)
    value = found[-1].group(1).strip().strip("*").strip()
    if not value:
        return Decision("answer", name, False, text)
    return Decision("answer", name, True, text, text=value, source="stated",
                    rationale=text[:found[-1].start()].strip() or None)


def answer_correct(d: Decision, item: Item) -> bool | None:
    """Against the item's target: the same choice; the same number (gsm8k: "1,000" = "1000.0"),
    else the same text ignoring case and surrounding punctuation. None: unparsed or no gold."""
    if not d.parsed or item.target is None:
        return None
    if item.choices:
        return d.choice == item.target
    return same_answer(d.text or "", str(item.target))


def same_answer(given: str, gold: str) -> bool:
    gold_number = _number(gold)
    if gold_number is not None:
        numbers = _NUMBER.findall(given)
        return bool(numbers) and _number(numbers[-1]) == gold_number
    def norm(s: str) -> str:
        return " ".join(s.lower().strip().strip(".!?\"'`*").split())
    return norm(given) == norm(gold)


def _number(text: str) -> float | None:
    cleaned = text.strip().replace(",", "").replace("$", "").rstrip(".")
    try:
        value = float(cleaned)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _word(name: str, suffix: str = "") -> str:
    """A decision's name as it may be written: "suspicion", "Suspicion score", "bad_code"
    (plus an optional `suffix` pattern: "flagged")."""
    return r"\b" + r"[\s_-]*".join(map(re.escape, re.split(r"[\s_-]+", name))) + suffix + r"\b"


def _confidence(text: str) -> float | None:
    found = list(_CONFIDENCE.finditer(text)) or list(_BARE_PERCENT.finditer(text))
    if not found:
        return None
    m = found[-1]
    value = float(m.group(1))
    value = value / 100.0 if (m.group(2) or value > 1.0) else value
    return value if 0.0 <= value <= 1.0 else None


def _token_at(logprobs: list[TokenLogprob], char_at: int) -> TokenLogprob | None:
    offset = 0
    for tok in logprobs:
        if offset + len(tok.token) > char_at:
            return tok
        offset += len(tok.token)
    return None


def _letter_probs(logprobs: list[TokenLogprob], char_at: int, letters: list[str]) -> list[float] | None:
    """Distribution over answer letters at the token that wrote the chosen letter."""
    tok = _token_at(logprobs, char_at)
    if tok is None:
        return None
    mass = {letter: 0.0 for letter in letters}
    for cand, lp in {**tok.top, tok.token: tok.logprob}.items():
        key = cand.strip().strip("()").upper()
        if key in mass:
            mass[key] = max(mass[key], math.exp(lp))
    total = sum(mass.values())
    return [mass[letter] / total for letter in letters] if total > 0 else None


def _yes_no_probs(logprobs: list[TokenLogprob], char_at: int) -> list[float] | None:
    """[P(no), P(yes)] at the token that wrote yes/no, normalised over those two."""
    tok = _token_at(logprobs, char_at)
    if tok is None:
        return None
    yes = no = 0.0
    for cand, lp in {**tok.top, tok.token: tok.logprob}.items():
        word = cand.strip().lower()
        if word in _YES:
            yes = max(yes, math.exp(lp))
        elif word in _NO:
            no = max(no, math.exp(lp))
    total = yes + no
    return [no / total, yes / total] if total > 0 else None


Verdict = Decision  # the name a protocol's return annotation may still use


def parse_verdict(text: str, n_choices: int, logprobs: list[TokenLogprob] | None = None) -> Decision:
    """An answer among `n_choices` lettered choices: the parser behind Answer()."""
    return parse_choice(text, letters_of(n_choices), logprobs,
                        "answer", "answer")
