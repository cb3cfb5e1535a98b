"""Re-judging: a stored transcript judged again by another judge (`oversight rejudge`).

The debaters' turns are the stored ones; only the deciding role runs, asked for the same
decisions the original one made, over the transcript that role saw. Debaters are expensive,
judges are not: this is the cheap experiment of debate research (Michael et al. 2023 judged
stored debates offline too).
"""

from oversight import Decisions, Episode, protocol


@protocol(roles=("judge",))
async def rejudge(ep: Episode) -> Decisions:
    """The decisions the stored episode's deciding role made, asked of this judge."""
    if ep.source is None:
        raise ValueError("rejudge judges a stored transcript: run it with `oversight rejudge "
                         "RUN --role ROLE --model MODEL`, not from a spec")
    ep.outcome = ep.source.outcome  # the same artefact as the stored episode
    return await ep.agent("judge").decide(*ep.source.asks)
