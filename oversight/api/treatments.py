"""Treatments: which answer each advocate argues for, and which roles are told to misbehave.

A protocol's answer schedule maps (item, advocates, rng) to Assignments (answers); a treatment
schedule adds arms that set dispositions (paired: each item honest once and attacked once; an
attack rate: each item attacked with probability p; a full cross). Everything is seeded by
the spec's seed and the item, so a run's episodes are reproducible. Each episode stores its
treatment label and its truths (who was told to misbehave; whether the artefact was bad).
"""

from __future__ import annotations

import itertools
import random
from typing import Callable

from pydantic import BaseModel, ConfigDict

from ..tasks.items import Item


class Assignment(BaseModel):
    """`answers[role]`: the choice index that role must argue for; `dispositions[role]`: how
    a treatment arm told that role to behave (roles not named keep the spec's)."""

    model_config = ConfigDict(frozen=True)

    label: str  # stable name used in the episode key, e.g. "a_correct", "attack"
    answers: dict[str, int] = {}
    dispositions: dict[str, str] = {}

    def for_item(self, item: Item) -> dict[str, dict]:
        return {r: {"answer": i, "correct": i == item.answer_index} for r, i in self.answers.items()}

    def key(self) -> dict:
        """What identifies it in an episode key (dispositions only when an arm set some, so
        keys of runs from before treatments are unchanged)."""
        out = {"label": self.label, "answers": dict(self.answers)}
        if self.dispositions:
            out["dispositions"] = dict(self.dispositions)
        return out


Schedule = Callable[[Item, tuple[str, ...], random.Random], list[Assignment]]


def _distractor(item: Item, rng: random.Random) -> int:
    """One seeded wrong answer (the only one when there are two choices)."""
    wrong = [i for i in range(len(item.choices)) if i != item.answer_index]
    return rng.choice(wrong)


def _arity(n: int):
    def mark(fn):
        fn.advocates = n  # how many advocates the schedule assigns answers to
        return fn
    return mark


@_arity(0)
def judge_only(item: Item, advocates: tuple[str, ...], rng: random.Random) -> list[Assignment]:
    """No advocates: one episode per item."""
    return [Assignment(label="none")]


@_arity(2)
def two_sided(item: Item, advocates: tuple[str, ...], rng: random.Random) -> list[Assignment]:
    """Both orders of (correct, distractor) across two advocates: cancels position bias."""
    a, b = advocates
    right, wrong = item.answer_index, _distractor(item, rng)
    return [Assignment(label="a_correct", answers={a: right, b: wrong}),
            Assignment(label="b_correct", answers={a: wrong, b: right})]


@_arity(1)
def single_advocate(item: Item, advocates: tuple[str, ...], rng: random.Random) -> list[Assignment]:
    """One advocate, arguing for the correct answer in one episode and a wrong one in the other."""
    (role,) = advocates
    return [Assignment(label="correct", answers={role: item.answer_index}),
            Assignment(label="incorrect", answers={role: _distractor(item, rng)})]


SCHEDULES: dict[str, Schedule] = {f.__name__: f for f in (judge_only, two_sided, single_advocate)}
NEEDS_CHOICES = {"two_sided", "single_advocate"}  # they assign choices: items must have some


# -- treatment arms (dispositions) ----------------------------------------------------------

Arm = tuple[str, dict[str, str]]  # (label, role -> disposition)


def paired(role: str, disposition: str) -> Callable[[random.Random], list[Arm]]:
    """Each item twice: once honest, once with `role` told to be `disposition`."""
    return lambda rng: [("honest", {}), ("attack", {role: disposition})]


def attack_rate(role: str, disposition: str, rate: float) -> Callable[[random.Random], list[Arm]]:
    """Each item once, attacked with probability `rate` (a seeded draw per item)."""
    return lambda rng: [("attack", {role: disposition}) if rng.random() < rate else ("honest", {})]


def cross(options: dict[str, list[str]]) -> Callable[[random.Random], list[Arm]]:
    """Every combination of the listed dispositions per role."""
    roles = sorted(options)

    def arms(rng: random.Random) -> list[Arm]:
        out = []
        for combo in itertools.product(*(options[r] for r in roles)):
            chosen = {r: d for r, d in zip(roles, combo, strict=True) if d != "honest"}
            out.append(("+".join(f"{r}={d}" for r, d in sorted(chosen.items())) or "honest", chosen))
        return out
    return arms


TREATMENTS = ("none", "paired", "attack_rate", "cross")


def treat(assignments: list[Assignment], arms: list[Arm]) -> list[Assignment]:
    """Every assignment under every arm (labels joined: "a_correct/attack")."""
    if arms == [("honest", {})] or not arms:
        return assignments
    return [Assignment(label=f"{a.label}/{label}" if a.label != "none" else label,
                       answers=a.answers, dispositions={**a.dispositions, **dispositions})
            for a in assignments for label, dispositions in arms]


def arm_rng(seed: int, item: Item) -> random.Random:
    """The treatment's own seeded stream, independent of the answer schedule's draws."""
    return random.Random(f"{seed}:{item.key}:treatment")
