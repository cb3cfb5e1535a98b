"""A QuALITY story of the NYU debate release rebuilt from its CoreNLP tokens, keeping for
every token the characters it became, so a quote span (token offsets) resolves to an exact
substring of the text; and a locator for quotes given as text in another tokenisation."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

_BRACKETS = {"-LRB-": "(", "-RRB-": ")", "-LSB-": "[", "-RSB-": "]", "-LCB-": "{", "-RCB-": "}"}
_CLITICS = {"n't", "'s", "'re", "'ve", "'ll", "'m", "'d"}
_CONTRACTED = {("gon", "na"), ("wan", "na"), ("got", "ta")}  # CoreNLP's gonna, wanna, gotta
_PTB_MARKS = {"``", "''", "-LRB-", "-LSB-", *_CLITICS}


@dataclass(frozen=True)
class Story:
    """A story's text and, per token, the characters it became (`starts[i]`, `ends[i]`)."""

    text: str
    starts: tuple[int, ...]
    ends: tuple[int, ...]
    style: str  # ptb (CoreNLP tokens) | chunk (sentence and line chunks) | raw (split on spaces)

    def span(self, begin: int, end: int) -> tuple[int, int] | None:
        """The characters of tokens [begin, end) (end clamped to the story, as the release's
        own renderer slices), without surrounding whitespace; None when nothing is left."""
        end = min(end, len(self.starts))
        if begin >= end:
            return None
        s, e = self.starts[begin], self.ends[end - 1]
        while s < e and self.text[s].isspace():
            s += 1
        while e > s and self.text[e - 1].isspace():
            e -= 1
        return (s, e) if s < e else None


def tokenisation(tokens: list[str]) -> str:
    """How a story was tokenised: the release holds CoreNLP (PTB) tokens for most stories,
    and for a few early rooms sentence/line chunks or plain whitespace-split words."""
    words = [t for t in tokens if t and t != "\n"]
    if sum(" " in t.strip() for t in words) > 0.1 * max(1, len(words)):
        return "chunk"
    return "ptb" if any(t in _PTB_MARKS for t in words) else "raw"


def _closes_soon(tokens: list[str], i: int, within: int = 12) -> bool:
    """Whether the single quote opened at tokens[i] (CoreNLP's `) closes within a few tokens
    of the same line: otherwise the ` was an apostrophe (Tr'en, natcher'lly)."""
    for t in tokens[i + 1:i + 1 + within]:
        if t == "\n":
            return False
        if t in ("'", "'''"):
            return True
    return False


def _ptb_piece(tokens: list[str], i: int, prev: str) -> tuple[str, bool, bool]:
    """(text, no space before, no space after) for CoreNLP token i."""
    t = tokens[i]
    if not t:
        return "", False, False
    if t in _BRACKETS:
        text = _BRACKETS[t]
        return text, text in ")]}", text in "([{"
    if t == "``":
        return '"', False, True
    if t == "''":
        return '"', True, False
    if t == "'''":
        return "'\"", True, False
    if t in ("--", "-"):
        return ("—" if t == "--" else "-"), True, True
    if t == "`":
        return ("'", False, True) if _closes_soon(tokens, i) else ("'", True, True)
    if t == "'":  # a closing single quote, a possessive (Wass') or an elision (waitin')
        return "'", True, False
    low = t.lower()
    if low in _CLITICS or (prev.lower(), low) in _CONTRACTED:
        return t, True, False
    if t in ("$", "#"):
        return t, False, True
    t = t.replace("\\/", "/")
    return t, t[0] in ".,!?;:%", False


def _mojibake(tokens: list[str]) -> dict[int, tuple[str, bool, bool]]:
    """An em dash read as cp1252 ("â€”") and then tokenised ('wordâ', '$', "''"): repaired."""
    fixes = {}
    for i in range(len(tokens) - 2):
        if tokens[i].endswith("â") and tokens[i + 1] == "$" and tokens[i + 2] == "''":
            fixes[i] = (tokens[i][:-1], False, False)
            fixes[i + 1] = ("—", True, True)
            fixes[i + 2] = ("", False, False)
    return fixes


def render_story(tokens: list[str]) -> Story:
    """The story as a reader would have it: CoreNLP's brackets, quotes and dashes mapped back
    ("``" -> '"', "--" -> "—"), punctuation and clitics re-attached ("was n't ." -> "wasn't."),
    paragraph breaks ("\\n" tokens) kept, a chunked story's hard-wrapped lines re-joined.
    Every token's characters are recorded, so a quoted token span becomes its exact text."""
    style = tokenisation(tokens)
    fixes = _mojibake(tokens) if style == "ptb" else {}
    out: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    pos, glue, prev = 0, True, ""
    n = len(tokens)
    for i, tok in enumerate(tokens):
        if tok == "\n":
            alone = (i == 0 or tokens[i - 1] != "\n") and (i + 1 == n or tokens[i + 1] != "\n")
            # a chunked story's single newline before an indented chunk is a hard wrap
            text = " " if style == "chunk" and alone and i + 1 < n and tokens[i + 1][:1].isspace() \
                else "\n"
            if text == " " and (not out or out[-1][-1:].isspace()):
                text = ""
            glue_before, glue_after = True, True
        elif i in fixes:
            text, glue_before, glue_after = fixes[i]
        elif style == "ptb":
            text, glue_before, glue_after = _ptb_piece(tokens, i, prev)
        else:
            text = tok.strip()
            glue_before, glue_after = text[:1] in ".,!?;:", False
        if not text:
            starts.append(pos)
            ends.append(pos)
            continue
        sep = "" if (glue or glue_before or not out or out[-1][-1:].isspace()) else " "
        out.append(sep + text)
        starts.append(pos + len(sep))
        pos += len(sep) + len(text)
        ends.append(pos)
        glue, prev = glue_after, tok
    full = "".join(out)
    lead = len(full) - len(full.lstrip())
    text = full.strip()
    size = len(text)
    return Story(text, tuple(min(max(s - lead, 0), size) for s in starts),
                 tuple(min(max(e - lead, 0), size) for e in ends), style)


_FOLD = str.maketrans({"“": '"', "”": '"', "‘": "'", "’": "'", "–": "-", "—": "-"})


def _folded(text: str) -> tuple[str, list[int]]:
    """`text` with case, width, typographic quotes and dashes folded, whitespace removed and
    runs of dots made one (two tokenisations of a story differ mostly in where they put spaces
    and line breaks; CoreNLP made "...." "..."), with each character's position in `text`."""
    chars: list[str] = []
    origin: list[int] = []
    for i, c in enumerate(text):
        for k in unicodedata.normalize("NFKC", c).translate(_FOLD).lower():
            if not k.isspace() and not (k == "." and chars and chars[-1] == "."):
                chars.append(k)
                origin.append(i)
    return "".join(chars), origin


class _Locator:
    """Finds a passage of one rendering of a story in another (a room served an older
    tokenisation of its story than the item's context): folded match, nearest the hint."""

    def __init__(self, context: str):
        self.folded, self.origin = _folded(context)

    def find(self, passage: str, hint: float) -> tuple[int, int] | None:
        needle = _folded(passage)[0]
        if not needle:
            return None
        found, at = [], self.folded.find(needle)
        while at >= 0:
            found.append(at)
            at = self.folded.find(needle, at + 1)
        if not found:
            return None
        best = min(found, key=lambda a: abs(a / max(1, len(self.folded)) - hint))
        return self.origin[best], self.origin[best + len(needle) - 1] + 1


class Stories:
    """Each distinct token list rendered once, and located in at most once."""

    def __init__(self) -> None:
        self.rendered: dict[tuple[str, ...], Story] = {}
        self.locators: dict[str, _Locator] = {}

    def render(self, tokens: list[str]) -> Story:
        key = tuple(tokens)
        if key not in self.rendered:
            self.rendered[key] = render_story(tokens)
        return self.rendered[key]

    def locator(self, story: Story) -> _Locator:
        if story.text not in self.locators:
            self.locators[story.text] = _Locator(story.text)
        return self.locators[story.text]
