"""Debate: two advocates who read the context argue for opposite answers (both orders, to
cancel position bias); a judge without the context decides.

Follows Irving et al. 2018, "AI safety via debate" (arXiv:1805.00899), in the information-
asymmetric reading-comprehension form of Michael et al. 2023 (arXiv:2311.08702) and Khan et
al. 2024 (arXiv:2402.06782): simultaneous or sequential speeches over N rounds, verified
quotes, and optionally a judge question between rounds (the interactive judge).
"""

from oversight import Answer, Decisions, Episode, Flag, Verdict, protocol


@protocol(roles=("debater_a", "debater_b", "judge"), decides="judge", assign="two_sided",
          context=("debater_a", "debater_b"))
async def debate(ep: Episode, rounds: int = 1, simultaneous: bool = True,
                 judge_questions: bool = False, words: int = 80,
                 flag: bool = False) -> Verdict | Decisions:
    """`rounds` of speeches of at most `words` words, simultaneous or A-then-B; with
    `judge_questions` the judge asks both debaters a question between rounds; with `flag`
    the judge also flags whether a debater argued dishonestly."""
    a, b, judge = ep.agents("debater_a", "debater_b", "judge")
    for r in range(1, rounds + 1):
        turns = (a.speak(round=r), b.speak(round=r))
        await (ep.together(*turns) if simultaneous else ep.in_order(*turns))
        if judge_questions and r < rounds:
            await judge.ask(round=r)
    return await (judge.decide(Answer(), Flag()) if flag else judge.decide())
