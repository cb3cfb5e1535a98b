"""`oversight import nyu-debate DIR`: the released study of Michael et al. 2023, "Debate Helps
Supervise Unreliable Experts" (arXiv:2311.08702; github.com/julianmichael/debate, branch
2023-nyu-experiments, `pub/`; CC-BY-4.0), as one ordinary run.

What becomes what (every row goes into the existing tables; nothing here is a new schema):

- **run** `nyu-debate-2023-<10 hex>`: the hex is the sha256 of the room files and the metadata
  file the import read, and of `FORMAT` (a changed conversion is a new run, never a silent
  no-op); status `finished`; the spec names the source folder and the release's commit (from
  the MANIFEST.md beside the folder, when there is one).
- **items**, one per (QuALITY article, question): id `nyu-debate-2023/<articleId>-<10 hex of
  sha1("<articleId>|<question>")>` (the suffix of the `quality_hard` dataset's ids, so the two
  join), choices = the two answers in the order of the earliest room on the question, target =
  the correct one, `document` = `quality/<articleId>`, context = the story rebuilt from its
  tokens (`render_story`). Four articles were served in two tokenisations (an early
  sentence-chunked or space-split one, and CoreNLP's); the item's context is CoreNLP's, and
  quotes from rooms that read the other are located in it (`params.story_tokens` marks them).
- **episodes**, one per room (all 631, key = the room's name): protocol `debate` or
  `consultancy`, variant `debate[human]`, `debate[gpt-4]`, `consultancy[human]`,
  `consultancy[gpt-4]`; roles `Debater A`, `Debater B` (a consultant is whichever of the two
  the room had) and `Judge`, each bound to `human:<name>` or `gpt-4` (gpt-4-32k, the paper's
  model); assignment, dispositions (`honest` / `dishonest`), intent (the dishonest debater),
  treatment (`a_correct` / `b_correct`, `consultant_correct` / `consultant_incorrect`),
  decides = `Judge`; outcome = the final judgement was wrong. A room with a final judgement by
  its live judge is `done`; any other (unfinished, or judged by offline judges only) is
  `failed`, with the reason. Answer indices everywhere are the item's; the room's own order is
  `params.room_answer_to_choice` (room answer i is item choice [i]). `params` also hold the
  judge's name, `included_in_paper`, `speech_rounds` (Table 1's "Rounds"), the rules, the
  offline judges, and `stand_ins`: people who spoke for a role assigned to someone else (the
  message's `model` is who actually spoke).
- **messages**: every speech in order (simultaneous speeches by debater, sequential ones as
  spoken), the judge's non-empty comments as role `Judge`; `round` counts speech rounds (0 =
  before the first). `content` is the text with each quote written `<quote>…</quote>` (the
  release's own text form, as its readable export and GPT-4 prompts had it); `shown` marks
  them `<v_quote>`: a quote is a span of the story, so it is verified by construction and
  resolved to the exact text of the item's context (`quotes` entries add `span`, the token
  span as released, and `start`/`end`, its characters in the context; a span past the story's
  end is cut at it, as the release's own renderer does). Anything a participant typed that
  looks like a quote tag is checked like a model's (oversight.api.quotes.verify).
- **decisions**: the live judge's distribution after each of its turns, role `Judge`, kind
  and name `answer`, source `stated`, probabilities in the item's order, choice = argmax (None
  on an exact tie), correct = probability on the correct answer > 0.5 (so a 50/50 final is
  wrong, as in the paper), raw = the distribution as released (room order), rationale = the
  judge's comment; the last one is the final judgement. Offline judges' judgements follow, as
  the same kind of decision by role `Offline judge <name>` (their mode, stepped or timed, is in
  `params.offline_judges`; a stepped judge's k-th judgement has round k).

Left out: the post-debate surveys (`feedback`: they include participants' guesses at one
another's real identities), debaters' private scratchpads, and end-of-debate votes.

Everything is read and checked before anything is written; a malformed release raises
ImportFailed naming the file, the key and what was expected. The rows go in one transaction,
each insert-or-ignore: importing again adds nothing and returns the same run id.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from .. import __version__
from ..api import quotes as quote_check
from ..errors import OversightError
from ..store import (
    Store,
    _insert_ignore,
    decisions,
    episodes,
    items,
    messages,
    runs,
    safe_url,
    storable_text,
    utcnow,
)
from .nyu_story import Stories, Story, tokenisation

NAME = DATASET = "nyu-debate-2023"
FORMAT = 1  # the conversion's version: part of the run id, bumped when its rows change
LICENSE = "CC-BY-4.0"
RELEASE = "github.com/julianmichael/debate (branch 2023-nyu-experiments) : pub/"
AI_MODEL = "gpt-4-32k"  # Michael et al. 2023, Sec. 3 and App. G
ROOMS_DIR = Path("debates") / "official"
METADATA = ("debates-metadata.json", "debates-metadata.jsonl")
DEBATERS = ("Debater A", "Debater B")
JUDGE = "Judge"
SPEECHES = ("SimultaneousSpeeches", "SequentialSpeeches")
ROUND_KINDS = (*SPEECHES, "JudgeFeedback", "NegotiateEnd", "OfflineJudgments")


class ImportFailed(OversightError, ValueError):
    """The release is not as expected: names the file, the key and what was expected."""

    def __init__(self, file: str | Path, key: str, expected: str, found: Any = ...):
        self.file, self.key, self.expected = str(file), key, expected
        message = f"{file}: {key}: expected {expected}"
        if found is not ...:
            shown = json.dumps(found, ensure_ascii=False) if not isinstance(found, str) else found
            message += f", found {shown[:80]}{'…' if len(shown) > 80 else ''}"
        super().__init__(message)


# -- reading and checking the release -------------------------------------------------------

def _need(file: Path, path: str, obj: Any, key: str | int, kind: type | tuple[type, ...],
          expected: str) -> Any:
    """obj[key], of type `kind`; ImportFailed naming the file and the key otherwise."""
    where = f"{path}.{key}" if path else str(key)
    try:
        value = obj[key]
    except (KeyError, IndexError, TypeError):
        found = "nothing" if isinstance(obj, dict) else None
        raise ImportFailed(file, where, expected, found) from None
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in
                                       (kind if isinstance(kind, tuple) else (kind,))):
        raise ImportFailed(file, where, expected, value)
    return value


def _one_key(file: Path, path: str, obj: Any, allowed: tuple[str, ...]) -> tuple[str, Any]:
    if not isinstance(obj, dict) or len(obj) != 1 or next(iter(obj)) not in allowed:
        raise ImportFailed(file, path, "an object with one key of " + ", ".join(allowed),
                           obj if not isinstance(obj, dict) else sorted(obj))
    (key, value), = obj.items()
    return key, value


@dataclass
class Turn:
    """One event of a room, in order: a speech, a judge's turn, offline judgements."""

    kind: str  # speech | judge | offline
    round: int
    role: str = ""
    speaker: str = ""
    time: int | None = None
    segments: list[tuple] = field(default_factory=list)  # ("text", s) | ("quote", begin, end)
    distribution: list[float] | None = None
    offline: list[tuple[str, str, list[Turn]]] = field(default_factory=list)  # name, mode, turns


@dataclass
class Room:
    name: str
    file: Path
    article_id: str
    title: str
    tokens: list[str]
    question: str
    answers: list[str]
    correct: int
    roles: dict[str, str]
    created: int
    turns: list[Turn]
    meta: dict
    status: str  # Complete | InProgress | WaitingToBegin
    final: list[float] | None  # the live judge's final judgement
    finished: int | None
    ended_by: str | None
    judging: dict = field(default_factory=dict)  # judgeReward, numContinues
    rounds_total: int = 0
    rules: dict = field(default_factory=dict)  # turn structure and limits, as released


def _segments(file: Path, path: str, content: Any, story_len: int) -> list[tuple]:
    if not isinstance(content, list):
        raise ImportFailed(file, path, "a list of speech segments", content)
    out: list[tuple] = []
    for k, seg in enumerate(content):
        kind, body = _one_key(file, f"{path}[{k}]", seg, ("Text", "Quote"))
        if kind == "Text":
            out.append(("text", _need(file, f"{path}[{k}].Text", body, "text", str, "a string")))
            continue
        span = _need(file, f"{path}[{k}].Quote", body, "span", list, "a token span [begin, end]")
        if (len(span) != 2 or not all(isinstance(x, int) and not isinstance(x, bool) for x in span)
                or not 0 <= span[0] <= span[1] or span[0] > story_len):
            raise ImportFailed(file, f"{path}[{k}].Quote.span",
                               f"[begin, end] token indices with 0 <= begin <= end, begin <= "
                               f"{story_len} (the story's tokens)", span)
        out.append(("quote", span[0], span[1]))
    return out


def _distribution(file: Path, path: str, value: Any, n: int) -> list[float]:
    if (not isinstance(value, list) or len(value) != n
            or not all(isinstance(p, (int, float)) and not isinstance(p, bool)
                       and -1e-9 <= p <= 1 + 1e-9 for p in value)
            or abs(sum(value) - 1.0) > 1e-6):
        raise ImportFailed(file, path, f"a probability distribution over the {n} answers", value)
    return [float(p) for p in value]


def _timestamp(file: Path, path: str, obj: dict, key: str) -> int:
    return _need(file, path, obj, key, int, "a time in milliseconds since the epoch")


def _judgement(file: Path, path: str, obj: Any, n: int, story_len: int) -> Turn:
    if not isinstance(obj, dict):
        raise ImportFailed(file, path, "a judge's turn (distribution, feedback)", obj)
    feedback = _need(file, path, obj, "feedback", dict, "the judge's feedback")
    return Turn(kind="judge", round=0, role=JUDGE,
                speaker=_need(file, f"{path}.feedback", feedback, "speaker", str, "a name"),
                time=_timestamp(file, f"{path}.feedback", feedback, "timestamp"),
                segments=_segments(file, f"{path}.feedback.content", feedback.get("content"),
                                   story_len),
                distribution=_distribution(file, f"{path}.distribution",
                                           obj.get("distribution"), n))


def _read_json(file: Path, data: bytes) -> Any:
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ImportFailed(file, "(file)", f"JSON ({exc})") from None


def _parse_room(file: Path, doc: Any, meta: dict, meta_file: Path) -> Room:
    if not isinstance(doc, dict):
        raise ImportFailed(file, "(file)", "a debate room object", type(doc).__name__)
    setup = _need(file, "", doc, "setup", dict, "the room's setup")
    _, material = _one_key(file, "setup.sourceMaterial", setup.get("sourceMaterial"),
                           ("QuALITYSourceMaterial",))
    where = "setup.sourceMaterial.QuALITYSourceMaterial"
    tokens = _need(file, where, material, "contents", list, "the story as a list of tokens")
    if not tokens or not set(map(type, tokens)) <= {str}:
        raise ImportFailed(file, f"{where}.contents", "a non-empty list of string tokens")
    answers = _need(file, "setup", setup, "answers", list, "the room's answers")
    if len(answers) != 2 or not all(isinstance(a, str) and a.strip() for a in answers):
        raise ImportFailed(file, "setup.answers", "two non-empty answers", answers)
    correct = _need(file, "setup", setup, "correctAnswerIndex", int, "0 or 1")
    if correct not in (0, 1):
        raise ImportFailed(file, "setup.correctAnswerIndex", "0 or 1", correct)
    roles = _need(file, "setup", setup, "roles", dict, "role -> participant")
    if (not set(roles) <= {*DEBATERS, JUDGE} or not set(roles) & set(DEBATERS)
            or not all(isinstance(v, str) and v for v in roles.values())):
        raise ImportFailed(file, "setup.roles", "Debater A and/or Debater B (and a Judge), each "
                           "a participant's name", roles)
    room = Room(
        name=file.stem, file=file,
        article_id=_need(file, where, material, "articleId", str, "the QuALITY article id"),
        title=_need(file, where, material, "title", str, "the story's title"), tokens=tokens,
        question=_need(file, "setup", setup, "question", str, "the question"),
        answers=answers, correct=correct, roles=dict(roles),
        created=_timestamp(file, "setup", setup, "creationTime"), turns=[], meta=meta,
        status="", final=None, finished=None, ended_by=None,
        rules=setup["rules"] if isinstance(setup.get("rules"), dict) else {})
    n, size = len(answers), len(tokens)
    rounds = _need(file, "", doc, "rounds", list, "the room's rounds")
    number = 0
    for r, rnd in enumerate(rounds):
        kind, body = _one_key(file, f"rounds[{r}]", rnd, ROUND_KINDS)
        path = f"rounds[{r}].{kind}"
        if kind in SPEECHES:
            number += 1
            speeches = _need(file, path, body, "speeches", dict, "debater index -> speech")
            said = []
            for idx, speech in speeches.items():
                if idx not in ("0", "1") or not isinstance(speech, dict):
                    raise ImportFailed(file, f"{path}.speeches", 'keys "0" (Debater A) or "1" '
                                       '(Debater B), each a speech', idx)
                said.append(Turn(
                    kind="speech", round=number, role=DEBATERS[int(idx)],
                    speaker=_need(file, f"{path}.speeches.{idx}", speech, "speaker", str, "a name"),
                    time=_timestamp(file, f"{path}.speeches.{idx}", speech, "timestamp"),
                    segments=_segments(file, f"{path}.speeches.{idx}.content",
                                       speech.get("content"), size)))
            # simultaneous speeches by debater; sequential ones as they were spoken
            said.sort(key=lambda t: t.role if kind == SPEECHES[0] else (t.time, t.role))
            room.turns.extend(said)
        elif kind == "JudgeFeedback":
            turn = _judgement(file, path, body, n, size)
            turn.round = number
            room.turns.append(turn)
        elif kind == "OfflineJudgments":
            judged = _need(file, path, body, "judgments", dict, "judge -> judgements")
            turn = Turn(kind="offline", round=number)
            for who, sessions in judged.items():
                mode = _need(file, f"{path}.judgments.{who}", sessions, "mode", str,
                             "stepped or timed")
                made = _need(file, f"{path}.judgments.{who}", sessions, "judgments", list,
                             "a list of judgements")
                steps = [_judgement(file, f"{path}.judgments.{who}.judgments[{k}]", j, n, size)
                         for k, j in enumerate(made)]
                turn.offline.append((who, mode, steps))
            room.turns.append(turn)
    room.rounds_total = number
    for turn in room.turns:
        for _who, mode, steps in turn.offline:
            for k, step in enumerate(steps):  # stepped: one judgement per round seen
                step.round = min(k, number) if mode == "stepped" else number
    _parse_status(room, meta, meta_file)
    return room


def _parse_status(room: Room, meta: dict, meta_file: Path) -> None:
    where = f"[{room.name}]"
    status, body = _one_key(meta_file, f"{where}.status", meta.get("status"),
                            ("Complete", "InProgress", "WaitingToBegin"))
    room.status = status
    if status != "Complete":
        return
    result = _need(meta_file, f"{where}.status.Complete", body, "result", dict,
                   "the room's result")
    room.finished = _timestamp(meta_file, f"{where}.status.Complete.result", result,
                               "timestamp")
    ended, _ = _one_key(meta_file, f"{where}.status.Complete.result.endedBy",
                        result.get("endedBy"), ("JudgeDecided", "MutualAgreement", "TimeUp"))
    room.ended_by = ended
    info = result.get("judgingInfo")
    if info is None:
        return
    path = f"{where}.status.Complete.result.judgingInfo"
    room.final = _distribution(meta_file, f"{path}.finalJudgement",
                               info.get("finalJudgement") if isinstance(info, dict) else None,
                               len(room.answers))
    room.judging = {k: info[k] for k in ("judgeReward", "numContinues") if k in info}
    live = [t for t in room.turns if t.kind == "judge"]
    if not live or live[-1].distribution != room.final:
        raise ImportFailed(room.file, "rounds", "the last JudgeFeedback to be the final judgement "
                           f"of the metadata ({path}.finalJudgement)",
                           live[-1].distribution if live else None)
    if info.get("correctAnswerIndex", room.correct) != room.correct:
        raise ImportFailed(meta_file, f"{path}.correctAnswerIndex",
                           f"the room's setup.correctAnswerIndex ({room.correct})",
                           info.get("correctAnswerIndex"))


@dataclass
class Release:
    folder: Path
    rooms: list[Room]
    digest: str
    commit: str | None
    ai: set[str]  # participants that are models


def _commit(folder: Path) -> str | None:
    """The release's commit, from the datasets' MANIFEST.md beside the folder."""
    manifest = folder.parent / "MANIFEST.md"
    try:
        text = manifest.read_text(encoding="utf-8")
    except OSError:
        return None
    at = text.find(f"`{folder.name}/`")
    found = re.search(r"`([0-9a-f]{40})`", text[at:] if at >= 0 else "")
    return found.group(1) if found else None


def read_release(path: str | Path) -> Release:
    """Read and check the whole release (no store involved): ImportFailed if malformed."""
    folder = Path(path)
    if not folder.is_dir():
        raise ImportFailed(folder, "(folder)", "the release's folder (README.md, "
                           "debates-metadata.json, debates/official/*.json)")
    room_dir = folder / ROOMS_DIR
    files = sorted(room_dir.glob("*.json")) if room_dir.is_dir() else []
    if not files:
        raise ImportFailed(room_dir, "(folder)", "one <room>.json file per debate room")
    meta_file = next((folder / m for m in METADATA if (folder / m).is_file()), None)
    if meta_file is None:
        raise ImportFailed(folder / METADATA[0], "(file)", "the rooms' metadata (a JSON array, "
                           f"or {METADATA[1]} with one object a line)")
    digest = hashlib.sha256(f"oversight nyu-debate import, format {FORMAT}\n".encode())
    raw_meta = meta_file.read_bytes()
    if meta_file.name.endswith(".jsonl"):
        entries = [_read_json(meta_file, line) for line in raw_meta.splitlines() if line.strip()]
    else:
        entries = _read_json(meta_file, raw_meta)
    if not isinstance(entries, list):
        raise ImportFailed(meta_file, "(file)", "a JSON array of room metadata")
    metas: dict[str, dict] = {}
    for k, entry in enumerate(entries):
        name = _need(meta_file, f"[{k}]", entry, "name", str, "the room's name")
        if name in metas:
            raise ImportFailed(meta_file, f"[{k}].name", "each room once", name)
        for key, kind, what in (("setting", dict, "{isHuman, isDebate}"),
                                ("includedInPaper", bool, "true or false")):
            _need(meta_file, f"[{name}]", entry, key, kind, what)
        for key in ("isHuman", "isDebate"):
            _need(meta_file, f"[{name}].setting", entry["setting"], key, bool, "true or false")
        metas[name] = entry
    names = {f.stem for f in files}
    if missing := sorted(set(metas) - names):
        raise ImportFailed(room_dir / f"{missing[0]}.json", "(file)",
                           f"the room named in {meta_file.name} ({len(missing)} missing)")
    if extra := sorted(names - set(metas)):
        raise ImportFailed(meta_file, f"[{extra[0]}]", f"metadata for every room file "
                           f"({len(extra)} without)")
    rooms = []
    digest.update(f"{meta_file.name}\0{len(raw_meta)}\0".encode() + raw_meta)
    for file in files:
        data = file.read_bytes()
        digest.update(f"{ROOMS_DIR.as_posix()}/{file.name}\0{len(data)}\0".encode() + data)
        rooms.append(_parse_room(file, _read_json(file, data), metas[file.stem], meta_file))
    ai = {"GPT-4"}
    profiles = room_dir.parent / "profiles.json"
    if profiles.is_file():
        found = _read_json(profiles, profiles.read_bytes())
        if isinstance(found, dict):
            ai |= {who for who, p in found.items() if isinstance(p, dict) and "AI" in p}
    for room in rooms:
        _check_setting(room, ai, meta_file)
    return Release(folder, rooms, digest.hexdigest(), _commit(folder), ai)


def _check_setting(room: Room, ai: set[str], meta_file: Path) -> None:
    setting = room.meta["setting"]
    debaters = [room.roles[r] for r in DEBATERS if r in room.roles]
    if setting["isDebate"] != (len(debaters) == 2):
        wanted = "two debaters" if setting["isDebate"] else "one consultant"
        raise ImportFailed(room.file, "setup.roles", f"{wanted} (the metadata's setting.isDebate "
                           f"is {str(setting['isDebate']).lower()})", sorted(room.roles))
    if setting["isHuman"] == any(d in ai for d in debaters):
        raise ImportFailed(room.file, "setup.roles", f"{'human' if setting['isHuman'] else 'AI'} "
                           "debaters, as the metadata's setting.isHuman says", debaters)
    ultimate = room.meta.get("ultimateRoles")
    if isinstance(ultimate, dict):
        for i, role in enumerate(DEBATERS):
            if role in room.roles:
                side = "Honest Debater" if i == room.correct else "Dishonest Debater"
                if ultimate.get(side) != room.roles[role]:
                    raise ImportFailed(meta_file, f"[{room.name}].ultimateRoles.{side}",
                                       f"{room.roles[role]} ({role}, arguing answer {i}; the "
                                       f"correct one is {room.correct})", ultimate.get(side))


# -- rows -------------------------------------------------------------------------------------

def item_id(article_id: str, question: str) -> str:
    """`nyu-debate-2023/<articleId>-<hex>`: the hex is that of the quality_hard dataset's ids."""
    digest = hashlib.sha1(f"{article_id}|{question}".encode()).hexdigest()[:10]
    return f"{DATASET}/{article_id}-{digest}"


def _iso(ms: int | None) -> str | None:
    if ms is None or ms <= 0:
        return None
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="milliseconds")


def _alias(who: str, ai: set[str]) -> str:
    return "gpt-4" if who in ai else f"human:{who}"


def _model(who: str, ai: set[str]) -> dict:
    return {"provider": "openai", "model": AI_MODEL} if who in ai else \
        {"provider": "human", "model": who}


@dataclass
class _Item:
    id: str
    article_id: str
    question: str
    choices: list[str]
    target: int
    story: Story
    tokens: list[str]
    rooms: list[Room]


def _canonical(rooms: list[Room]) -> list[str]:
    """The tokenisation of an article the item's context is rebuilt from: CoreNLP's when the
    article has it, then the one most rooms used, then the longest."""
    versions: dict[tuple, list[Room]] = {}
    for room in rooms:
        versions.setdefault(tuple(room.tokens), []).append(room)
    best = max(versions.items(), key=lambda kv: (tokenisation(list(kv[0])) == "ptb", len(kv[1]),
                                                 len(kv[0]), -min(r.created for r in kv[1])))
    return list(best[0])


def _items(release: Release, stories: Stories) -> dict[str, _Item]:
    by_article: dict[str, list[Room]] = {}
    for room in release.rooms:
        by_article.setdefault(room.article_id, []).append(room)
    out: dict[str, _Item] = {}
    for article, rooms in sorted(by_article.items()):
        tokens = _canonical(rooms)
        story = stories.render(tokens)
        by_question: dict[str, list[Room]] = {}
        for room in rooms:
            by_question.setdefault(room.question, []).append(room)
        for question, asked in by_question.items():
            asked.sort(key=lambda r: (r.created, r.name))
            first = asked[0]
            for room in asked[1:]:
                if sorted(room.answers) != sorted(first.answers) or \
                        room.answers[room.correct] != first.answers[first.correct]:
                    raise ImportFailed(room.file, "setup.answers", "the same two answers, and the "
                                       f"same one correct, as room {first.name} on this question",
                                       room.answers)
            key = item_id(article, question)
            out[key] = _Item(key, article, question, list(first.answers), first.correct, story,
                             tokens, asked)
    return out


def _item_row(item: _Item) -> dict:
    first = item.rooms[0]
    meta = {"article_id": item.article_id, "title": first.title,
            "source_material": "QuALITY", "tokenisation": item.story.style,
            "story_tokens": len(item.tokens),
            "quality_hard_id": "quality_hard-" + item.id.split("/", 1)[1],
            "rooms": [r.name for r in item.rooms],
            "included_in_paper": any(r.meta["includedInPaper"] for r in item.rooms)}
    row = {"id": item.id, "dataset": DATASET, "input": item.question, "choices": item.choices,
           "target": item.target, "kind": "choice", "label": None, "labels": None,
           "bad_labels": None, "context": item.story.text, "license": LICENSE,
           "source": f"Michael et al. 2023 (NYU debate), {RELEASE}", "fields": None}
    document = f"quality/{item.article_id}"
    if "document" in items.c:
        row["document"] = document
    else:  # a store schema from before m006
        meta["document"] = document
    row["meta"] = meta
    return row


class _Speech:
    """Renders a turn's segments: `content` with <quote>, `shown` with the system's marks."""

    def __init__(self, item: _Item, room: Room, stories: Stories):
        self.item, self.room = item, room
        self.same = room.tokens == item.tokens
        self.story = item.story if self.same else stories.render(room.tokens)
        self.locator = None if self.same else stories.locator(item.story)

    def quote(self, begin: int, end: int) -> dict | None:
        span = self.story.span(begin, end)
        if span is None:
            return None
        entry: dict[str, Any] = {"text": self.story.text[span[0]:span[1]], "status": "verified",
                                 "score": 100.0, "span": [begin, end]}
        if self.same:
            entry["start"], entry["end"] = span
            return entry
        # the room read another tokenisation of the story: find the passage in the item's
        found = self.locator.find(entry["text"], span[0] / max(1, len(self.story.text)))
        if found is not None:
            entry["text"] = self.item.story.text[found[0]:found[1]]
            entry["start"], entry["end"] = found
        else:
            status, score = quote_check.check(entry["text"],
                                              quote_check.normalise(self.item.story.text))
            entry.update(status=status, score=score, start=None, end=None)
        return entry

    def render(self, segments: list[tuple], reads_context: bool) -> tuple[str, str, list[dict]]:
        content: list[str] = []
        shown: list[str] = []
        found: list[dict] = []
        for seg in segments:
            if seg[0] == "text":
                text = seg[1]
                content.append(text)
                # what a participant typed is checked like a model's reply: a look-alike quote
                # tag is verified again (debaters) or marked unverified (judges), never trusted
                marked, checked = quote_check.verify(text, None)
                if checked and reads_context:  # (the context is only read for typed quotes)
                    marked, checked = quote_check.verify(text, self.item.story.text)
                shown.append(marked)
                found.extend(checked)
                continue
            entry = self.quote(seg[1], seg[2])
            if entry is None:
                continue
            tag = "v_quote" if entry["status"] == "verified" else "u_quote"
            content.append(f"<quote>{entry['text']}</quote>")
            shown.append(f"<{tag}>{entry['text']}</{tag}>")
            found.append(entry)
        return "".join(content), "".join(shown), found


def _answer_row(role: str, turn: Turn, perm: list[int], target: int, rationale: str) -> dict:
    probs = [0.0] * len(perm)
    for i, p in enumerate(turn.distribution or []):
        probs[perm[i]] = p
    top = max(probs)
    best = [i for i, p in enumerate(probs) if p == top]
    return {"role": role, "kind": "answer", "name": "answer", "parsed": True,
            "choice": best[0] if len(best) == 1 else None, "text": None, "value": None,
            "scale_lo": None, "scale_hi": None, "probabilities": probs, "source": "stated",
            "correct": probs[target] > 0.5, "rationale": storable_text(rationale) or None,
            "raw": json.dumps(turn.distribution),
            "created_at": _iso(turn.time) or utcnow()}


def _room_rows(room: Room, item: _Item, release: Release, run_id: str,
               stories: Stories) -> tuple[dict, list[dict], list[dict]]:
    """(episode row, its messages, its decisions) — the last two without episode ids yet."""
    ai = release.ai
    perm = [item.choices.index(a) for a in room.answers]
    debate = room.meta["setting"]["isDebate"]
    debaters = "human" if room.meta["setting"]["isHuman"] else "gpt-4"
    protocol = "debate" if debate else "consultancy"
    advocates = [r for r in DEBATERS if r in room.roles]
    assignment = {r: {"answer": perm[DEBATERS.index(r)],
                      "correct": DEBATERS.index(r) == room.correct} for r in advocates}
    dispositions = {r: "honest" if a["correct"] else "dishonest" for r, a in assignment.items()}
    if debate:
        treatment = "a_correct" if room.correct == 0 else "b_correct"
    else:
        honest = assignment[advocates[0]]["correct"]
        treatment = "consultant_correct" if honest else "consultant_incorrect"
    roles = {r: _alias(who, ai) for r, who in room.roles.items()}
    speech = _Speech(item, room, stories)
    msgs: list[dict] = []
    made: list[dict] = []
    stand_ins: dict[str, set[str]] = {}
    for turn in room.turns:
        if turn.kind == "offline":
            continue
        if turn.speaker != room.roles.get(turn.role):
            stand_ins.setdefault(turn.role, set()).add(turn.speaker)
        content, shown, found = speech.render(turn.segments, turn.kind == "speech")
        if turn.kind == "judge":
            made.append(_answer_row(JUDGE, turn, perm, item.target, content))
        if turn.kind == "speech" or content.strip():
            msgs.append({"role": turn.role, "kind": "speech", "round": turn.round,
                         "model": _alias(turn.speaker, ai), "content": storable_text(content),
                         "shown": storable_text(shown), "visible_to": None, "quotes": found,
                         "tokens_in": None, "tokens_out": None, "latency_s": None,
                         "created_at": _iso(turn.time) or utcnow()})
    offline_modes: dict[str, str] = {}
    for turn in room.turns:
        for who, mode, steps in turn.offline:
            offline_modes[who] = mode
            for step in steps:
                rationale = speech.render(step.segments, False)[0]
                made.append(_answer_row(f"Offline judge {who}", step, perm, item.target,
                                        rationale))
    for i, row in enumerate(msgs):
        row["idx"] = i
    for i, row in enumerate(made):
        row["idx"] = i
    judged = room.final is not None
    final = next((d for d in reversed(made) if d["role"] == JUDGE), None) if judged else None
    if room.status != "Complete":
        error = f"the room was not finished in the release (status {room.status})"
    elif not judged:
        error = (f"no judgement by a live judge: the room ended by {room.ended_by} "
                 + (f"and was judged offline only ({len(offline_modes)} offline judges: "
                    "decisions of the 'Offline judge …' roles)" if offline_modes
                    else "and was never judged"))
    else:
        error = None
    params: dict[str, Any] = {
        "debaters": debaters, "judge_id": room.roles.get(JUDGE),
        "included_in_paper": room.meta["includedInPaper"], "room": room.name,
        "room_answer_to_choice": perm, "speech_rounds": room.rounds_total,
        "offline_judges": offline_modes, "rules": room.rules}
    if room.status != "Complete":
        params["status"] = room.status
    else:
        params["ended_by"] = room.ended_by
    if room.judging:
        params["judge_reward"] = room.judging.get("judgeReward")
        params["num_continues"] = room.judging.get("numContinues")
    if stand_ins:
        params["stand_ins"] = {r: sorted(who) for r, who in sorted(stand_ins.items())}
    if not speech.same:
        params["story_tokens"] = len(room.tokens)  # another tokenisation than the item's
    aliases = {**{who: roles[r] for r, who in room.roles.items()},
               **{who: _alias(who, ai) for names in stand_ins.values() for who in names}}
    episode = {
        "run_id": run_id, "key": room.name, "item_id": item.id, "protocol": protocol,
        "variant": f"{protocol}[{debaters}]", "params": params, "assignment": assignment,
        "dispositions": dispositions, "treatment": treatment, "decides": JUDGE,
        "intent": sorted(r for r, d in dispositions.items() if d != "honest"),
        "outcome": (not final["correct"]) if final is not None else None,
        "roles": roles, "models": {a: _model(who, ai) for who, a in sorted(aliases.items())},
        "seed": 0, "status": "done" if error is None else "failed", "error": error,
        "started_at": _iso(room.created), "finished_at": _iso(room.finished),
        "duration_s": (room.finished - room.created) / 1000 if room.finished else None,
        "n_calls": 0, "tokens_in": 0, "tokens_out": 0, "tokens_cached": 0, "cost_usd": None,
        "cache_hits": 0, "lease_owner": None, "lease_expires": None}
    return episode, msgs, made


def _spec(release: Release) -> tuple[dict, str]:
    """The run's spec (JSON) and the TOML text describing the import."""
    models: dict[str, dict] = {}
    for room in release.rooms:
        for who in room.roles.values():
            models.setdefault(_alias(who, release.ai), _model(who, release.ai))
    spec = {"import": "nyu-debate", "name": NAME, "source": str(release.folder.resolve()),
            "release": RELEASE, "commit": release.commit, "sha256": release.digest,
            "format": FORMAT, "rooms": len(release.rooms), "dataset": DATASET,
            "license": LICENSE, "models": dict(sorted(models.items()))}
    lines = [
        "# Imported with `oversight import nyu-debate`: the released debates and consultancies of",
        '# Michael et al. 2023, "Debate Helps Supervise Unreliable Experts" (arXiv:2311.08702).',
        f"name = {json.dumps(NAME)}", "", "[import]", 'kind = "nyu-debate"',
        f"source = {json.dumps(spec['source'])}", f"release = {json.dumps(RELEASE)}"]
    if release.commit:
        lines.append(f"commit = {json.dumps(release.commit)}")
    lines += [f"sha256 = {json.dumps(release.digest)}", f"format = {FORMAT}",
              f"rooms = {len(release.rooms)}", f"license = {json.dumps(LICENSE)}", ""]
    return spec, "\n".join(lines)


def _same_items(conn, rows: list[dict], store: Store) -> None:
    """Items are shared by runs and never rewritten: a stored item of the same id must be the
    same item (another version of this importer may have rebuilt its story differently, and
    the quotes' offsets would then point into the wrong text)."""
    stored = {r.id: r for r in conn.execute(
        select(items.c.id, items.c.context, items.c.choices, items.c.target)
        .where(items.c.dataset == DATASET))}
    for row in rows:
        old = stored.get(row["id"])
        if old is not None and (old.context, old.choices, old.target) != \
                (row["context"], row["choices"], row["target"]):
            raise ImportFailed(safe_url(store.url), f"items[{row['id']}]", "the stored item of "
                               "that id to be this one (it was stored by another version of "
                               "the importer: import into a new store)")


def import_nyu_debate(store: Store, path: str | Path) -> str:
    """Import the release in folder `path` (README.md, debates-metadata.json,
    debates/official/*.json) into `store` as one run; returns its id. The whole release is
    read and checked first (ImportFailed names the file and key of anything malformed), then
    written in one transaction of insert-or-ignore statements: importing it again adds
    nothing and returns the same id."""
    release = read_release(path)
    run_id = f"{NAME}-{release.digest[:10]}"
    with store.engine.connect() as conn:
        have = conn.execute(select(func.count()).select_from(episodes)
                            .where(episodes.c.run_id == run_id)).scalar()
    if have == len(release.rooms):
        return run_id
    spec, toml = _spec(release)
    now = utcnow()
    run = {"id": run_id, "name": NAME, "spec_path": str(release.folder), "spec_toml": toml,
           "spec": spec, "spec_hash": release.digest, "status": "finished",
           "package_version": __version__, "created_at": now, "updated_at": now, "code": None}
    stories = Stories()
    found = _items(release, stories)
    by_room = {room.name: item for item in found.values() for room in item.rooms}
    planned = [_room_rows(room, by_room[room.name], release, run_id, stories)
               for room in release.rooms]
    item_rows = [_item_row(i) for i in found.values()]
    with store.engine.begin() as conn:
        _same_items(conn, item_rows, store)
        dialect = conn.dialect.name
        conn.execute(_insert_ignore(runs, dialect), [run])
        conn.execute(_insert_ignore(items, dialect), item_rows)
        conn.execute(_insert_ignore(episodes, dialect), [ep for ep, _, _ in planned])
        ids = dict(conn.execute(select(episodes.c.key, episodes.c.id)
                                .where(episodes.c.run_id == run_id)).all())
        rows_m = [{**m, "episode_id": ids[ep["key"]]} for ep, msgs, _ in planned for m in msgs]
        rows_d = [{**d, "episode_id": ids[ep["key"]]} for ep, _, made in planned for d in made]
        if rows_m:
            conn.execute(_insert_ignore(messages, dialect), rows_m)
        if rows_d:
            conn.execute(_insert_ignore(decisions, dialect), rows_d)
    return run_id
