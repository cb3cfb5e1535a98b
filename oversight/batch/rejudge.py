"""Re-judging: a stored run's transcripts judged again by another model, as a run of its own.

`load_rejudge` plans one episode of the built-in `rejudge` protocol per finished episode of
the source run in which the role decided. Each new episode points to its source
(`episodes.source_episode_id`), keeps the source's item, variant, assignment, treatment and
truths, and asks the new judge for the decisions the old one made, over the transcript the
old one saw. Nothing of the source run is touched. The result is an ordinary run: resumable,
leased, cached, budgeted, reported and compared like any other.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..api.decisions import Answer, Flag, Label, Score
from ..api.episode import Message, Source
from ..api.prompts import PromptLibrary
from ..api.registry import ProtocolDef
from ..api.treatments import Assignment
from ..errors import SpecError
from ..tasks.items import Item
from .identity import code_identity
from .plans import EpisodePlan, key_hash
from .spec import BatchSpec, DataSpec, LoadedSpec, ProtocolSpec, _resolve_models

PROTOCOL = "rejudge"


def selection(variants: list[str] | None, where: dict[str, Any] | None) -> list[str]:
    """What a re-judging chose, as it is recorded in its spec (part of the run's identity)."""
    out = [f"variant:{v}" for v in sorted(variants or [])]
    return out + [f"where:{k}={json.dumps(v, sort_keys=True)}" for k, v in sorted((where or {}).items())]


def item_of(row: dict) -> Item:
    """The Item a stored items row was made from."""
    prefix = f"{row['dataset']}/"
    return Item(id=row["id"][len(prefix):] if row["id"].startswith(prefix) else row["id"],
                input=row["input"], choices=tuple(row["choices"]) if row["choices"] else None,
                target=row["target"], context=row["context"], label=row["label"],
                labels=tuple(row["labels"]) if row["labels"] else None,
                bad_labels=tuple(row["bad_labels"] or ()), source=row["source"] or "",
                license=row["license"] or "", dataset=row["dataset"], meta=row["meta"] or {},
                fields=row["fields"] or {})


def asks_of(decisions: list[dict], role: str) -> tuple[Any, ...]:
    """The decisions `role` made, once each by kind and name in the order first made."""
    seen: dict[tuple[str, str], Any] = {}
    for d in decisions:
        if d["role"] != role or (d["kind"], d["name"]) in seen:
            continue
        kind, name = d["kind"], d["name"]
        if kind == "answer":
            seen[(kind, name)] = Answer(name=name)
        elif kind == "flag":
            seen[(kind, name)] = Flag(name=name)
        elif kind == "score":
            lo, hi = d["scale_lo"], d["scale_hi"]
            seen[(kind, name)] = Score(lo=0.0 if lo is None else lo,
                                       hi=100.0 if hi is None else hi, name=name)
        elif kind == "label":
            seen[(kind, name)] = Label(name=name)
    return tuple(seen.values())


def transcript_for(messages: list[dict], role: str) -> tuple[Message, ...]:
    """The stored messages `role` could see, in order, as the new judge will see them."""
    seen = [m for m in messages if m["visible_to"] is None or role in m["visible_to"]
            or m["role"] == role]
    return tuple(Message(idx=i, role=m["role"], content=m["content"], shown=m["shown"],
                         kind=m["kind"], round=m["round"], quotes=list(m["quotes"] or []),
                         model=m["model"]) for i, m in enumerate(seen))


def original_transcript(store, episode_id: int) -> tuple[Message, ...]:
    """What the deciding role of the episode a re-judging judged saw (followed back to the
    episode that ran its protocol: a re-judging stores only its own decision)."""
    for _ in range(100):  # a chain of re-judgings, never a cycle (ids only point back)
        stored = store.episode(episode_id)
        ep = stored["episode"]
        if ep["source_episode_id"] is None:
            return transcript_for(stored["messages"], ep["decides"] or "")
        episode_id = ep["source_episode_id"]
    raise ValueError(f"episode {episode_id}: re-judgings nested over 100 deep")


def load_rejudge(store, source_run: dict, role: str, model: str,
                 registry: dict[str, ProtocolDef], prompts: PromptLibrary,
                 command: str, concurrency: int = 16, variants: list[str] | None = None,
                 where: dict[str, Any] | None = None, limit: int | None = None) -> LoadedSpec:
    """Plan the re-judging of `source_run`'s `role` by `model` (an alias of the source run's
    spec, or "provider/model"): its finished episodes in `variants` (all when None) whose
    params hold `where`, the first `limit` of them by id. SpecError when there is nothing to
    judge or the model is unusable; nothing is written."""
    where_ = f"rejudge {source_run['id']}"
    protocol = registry.get(PROTOCOL)
    if protocol is None:
        raise SpecError(where_, "--role", "the built-in rejudge protocol is not registered")
    source_models = (source_run.get("spec") or {}).get("models") or {}
    spec = BatchSpec(
        name=f"{source_run['name']}.rejudge", concurrency=concurrency,
        description=f"{role} of run {source_run['id']} judged again by {model}",
        data=DataSpec(datasets=[f"run:{source_run['id']}:{role}", *selection(variants, where)],
                      limit=limit),
        models={a: c for a, c in source_models.items() if a == model},
        protocols=[ProtocolSpec(name=PROTOCOL, roles={"judge": model})])
    models = _resolve_models(Path(where_), spec)
    plans, items = [], {}
    for stored in store.judged(source_run["id"], role):
        ep, row = stored["episode"], stored["item"]
        params = ep["params"] or {}
        if (variants and (ep["variant"] or ep["protocol"]) not in variants) or \
                any(k not in params or params[k] != v for k, v in (where or {}).items()):
            continue
        if limit is not None and len(plans) >= limit:
            break
        asks = asks_of(stored["decisions"], role)
        if not asks:
            continue
        item = items.setdefault(row["id"], item_of(row))
        answers = {r: a["answer"] for r, a in (ep["assignment"] or {}).items()}
        seen = transcript_for(stored["messages"], role)
        if ep["source_episode_id"] is not None:  # a re-judging judged again: the original's
            seen = original_transcript(store, ep["source_episode_id"])
        plans.append(EpisodePlan(
            key=key_hash({"source": ep["id"], "role": role}), protocol=protocol,
            variant=ep["variant"] or ep["protocol"], params=protocol.params(), item=item,
            assignment=Assignment(label=ep["treatment"] or "none", answers=answers),
            roles={"judge": model}, dispositions=dict(ep["dispositions"] or {}),
            seed=ep["seed"], source=Source(episode_id=ep["id"], role=role,
                                           transcript=seen,
                                           asks=asks, outcome=ep["outcome"])))
    if not plans:
        chosen = " among the episodes chosen" if variants or where else ""
        raise SpecError(where_, "--role", f"no finished episode of run {source_run['id']} has a "
                        f"decision by role {role!r}{chosen}")
    code = code_identity([protocol], prompts)
    return LoadedSpec(Path(where_), command, spec, models, plans, list(items.values()), code)
