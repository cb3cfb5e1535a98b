"""Critique: an answerer answers, a critic reviews the answer, and a judge decides the
question and flags whether the answer looks wrong or dishonest.

Follows Saunders et al. 2022, "Self-critiquing models for assisting human evaluators"
(arXiv:2206.05802), and McAleese et al. 2024, "LLM Critics Help Catch LLM Bugs"
(arXiv:2407.00215). The answerer is the attacker (a schemer or a sycophant answers wrong on
purpose); its last answer is the artefact, bad when wrong against gold. With `refine` it
revises after the critique (decision "revised") and the revision is what the judge sees.
Choice and free-form items (gsm8k).
"""

from oversight import Answer, Decisions, Episode, Flag, protocol


@protocol(roles=("answerer", "critic", "judge"), decides="judge", attacker="answerer",
          artefact="answerer")
async def critique(ep: Episode, refine: bool = False, words: int = 120) -> Decisions:
    """The answerer answers, the critic reviews it in at most `words` words (the answerer
    revises if `refine`), then the judge answers and flags."""
    answerer, critic, judge = ep.agents("answerer", "critic", "judge")
    if ep.item.kind == "label":
        raise ValueError("critique needs items with an answer (choice or free-form)")
    await answerer.decide()
    answer = ep.transcript[-1].shown  # the reply as others are shown it
    await critic.speak(round=1, artefact=answer)
    if refine:
        await answerer.decide(Answer("revised"), purpose="revise", artefact=answer)
        answer = ep.transcript[-1].shown
    return await judge.decide(Answer(), Flag(), artefact=answer)
