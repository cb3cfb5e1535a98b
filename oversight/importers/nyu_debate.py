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
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from .. import __version__
from ..api import quotes as quote_check
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
from .nyu_release import (
    AI_MODEL,
    DATASET,
    DEBATERS,
    FORMAT,
    JUDGE,
    LICENSE,
    NAME,
    RELEASE,
    ImportFailed,
    Release,
    Room,
    Turn,
    read_release,
)
from .nyu_story import Stories, Story, tokenisation

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


def import_nyu_debate(store: Store, path: str | Path | Release) -> str:
    """Import the release in folder `path` (README.md, debates-metadata.json,
    debates/official/*.json; or a `Release` that `read_release` read) into `store` as one
    run; returns its id. The whole release is read and checked first (ImportFailed names the
    file and key of anything malformed), then written in one transaction of insert-or-ignore
    statements: importing it again adds nothing and returns the same id."""
    release = path if isinstance(path, Release) else read_release(path)
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
