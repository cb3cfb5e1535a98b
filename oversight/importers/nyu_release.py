"""Reading and checking the NYU debate release (`pub/` of github.com/julianmichael/debate,
branch 2023-nyu-experiments): its room files and metadata into `Room`s, every key checked
before anything is written; a malformed release raises ImportFailed naming the file, the key
and what was expected. nyu_debate.py turns the rooms into rows."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import OversightError

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
