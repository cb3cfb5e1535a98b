"""Judge with the hidden context: the ceiling a protocol can hope to approach.

The 'expert' condition of Khan et al. 2024 (arXiv:2402.06782) and Michael et al. 2023
(arXiv:2311.08702): the judge reads the passage itself.
"""

from oversight import Episode, Verdict, protocol


@protocol(roles=("judge",), context=("judge",))
async def oracle(ep: Episode) -> Verdict:
    """The judge answers with the passage in front of it."""
    return await ep.agent("judge").decide()
