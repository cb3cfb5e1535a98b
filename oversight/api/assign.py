"""Assignment schedules: which answer each advocate argues for, seeded and reproducible.

A schedule maps (item, advocate roles, rng) to a list of Assignments; the runner makes one
episode per assignment. The assignment is stored as ground truth so detection can be scored.
"""

from __future__ import annotations

import random
from typing import Callable

from pydantic import BaseModel, ConfigDict

from ..tasks.items import Item


class Assignment(BaseModel):
    """`answers[role]` is the choice index that role must argue for."""

    model_config = ConfigDict(frozen=True)

    label: str  # stable name used in the episode key, e.g. "a_correct"
    answers: dict[str, int] = {}

    def for_item(self, item: Item) -> dict[str, dict]:
        return {r: {"answer": i, "correct": i == item.answer_index} for r, i in self.answers.items()}


Schedule = Callable[[Item, tuple[str, ...], random.Random], list[Assignment]]


def _distractor(item: Item, rng: random.Random) -> int:
    """One seeded wrong answer (the only one when there are two choices)."""
    wrong = [i for i in range(len(item.choices)) if i != item.answer_index]
    return rng.choice(wrong)


def judge_only(item: Item, advocates: tuple[str, ...], rng: random.Random) -> list[Assignment]:
    """No advocates: one episode per item."""
    return [Assignment(label="none")]


def two_sided(item: Item, advocates: tuple[str, ...], rng: random.Random) -> list[Assignment]:
    """Both orders of (correct, distractor) across two advocates: cancels position bias."""
    a, b = advocates
    right, wrong = item.answer_index, _distractor(item, rng)
    return [Assignment(label="a_correct", answers={a: right, b: wrong}),
            Assignment(label="b_correct", answers={a: wrong, b: right})]


def single_advocate(item: Item, advocates: tuple[str, ...], rng: random.Random) -> list[Assignment]:
    """One advocate, arguing for the correct answer in one episode and a wrong one in the other."""
    (role,) = advocates
    return [Assignment(label="correct", answers={role: item.answer_index}),
            Assignment(label="incorrect", answers={role: _distractor(item, rng)})]


SCHEDULES: dict[str, Schedule] = {f.__name__: f for f in (judge_only, two_sided, single_advocate)}
