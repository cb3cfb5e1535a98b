"""Judge alone, no context: the 'naive judge' baseline.

Follows the baseline of Michael et al. 2023, "Debate Helps Supervise Unreliable Experts"
(arXiv:2311.08702) and Khan et al. 2024, "Debating with More Persuasive LLMs Leads to More
Truthful Answers" (arXiv:2402.06782): how well does the judge do on its own?
"""

from oversight import Episode, Verdict, protocol


@protocol(roles=("judge",))
async def direct(ep: Episode) -> Verdict:
    """The judge answers from the question and choices alone."""
    return await ep.agent("judge").decide()
