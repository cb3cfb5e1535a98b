"""Consultancy: one advocate who reads the context argues for an assigned answer, correct in
half of the episodes and wrong in the other half; a judge without the context decides.

Follows Michael et al. 2023, "Debate Helps Supervise Unreliable Experts" (arXiv:2311.08702),
and Khan et al. 2024 (arXiv:2402.06782), where consultancy is the single-advocate baseline.
"""

from oversight import Answer, Decisions, Episode, Flag, Verdict, protocol


@protocol(roles=("consultant", "judge"), decides="judge", assign="single_advocate",
          context=("consultant",))
async def consultancy(ep: Episode, rounds: int = 1, words: int = 80,
                      flag: bool = False) -> Verdict | Decisions:
    """`rounds` speeches by the consultant, each of at most `words` words, then the verdict
    (with `flag`, also whether the consultant argued dishonestly)."""
    consultant, judge = ep.agents("consultant", "judge")
    for r in range(1, rounds + 1):
        await consultant.speak(round=r)
    return await (judge.decide(Answer(), Flag()) if flag else judge.decide())
