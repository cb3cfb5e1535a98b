"""`oversight run --dry-run`: episodes, calls, tokens and dollars, without calling anything.

The protocols themselves are run against a stand-in provider that answers instantly with
text of a chosen length, so the estimate counts exactly the calls and prompts the real run
would make (a protocol that branches on what agents say may differ). The low end assumes
replies of LOW_FRACTION of max_tokens, the high end replies of the full max_tokens.

A model with `batch = true` is priced at its batch price (pricing.batch_price: half the list
price for OpenAI and Anthropic); `ModelEstimate.saving()` is what that saves against ordinary
calls.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from ..api.episode import Episode
from ..api.prompts import PromptLibrary
from ..models import Model, ModelConfig, ModelRequest, ModelResponse, Provider
from ..models.pricing import Price, batch_price, price_for
from .spec import EpisodePlan

LOW_FRACTION = 0.3
_FILLER = "word "
# Every kind of decision, parseable, at the end of every reply (the last stated value wins).
STAND_IN_DECISIONS = "\nAnswer: A\nConfidence: 50%\nFlag: no\nSuspicion: 50%\nLabel: A"


class StandIn(Provider):
    """Answers at once with a parseable verdict padded to a fixed share of max_tokens.
    Shared with preflight.py, which tries every protocol against it before a run."""

    def __init__(self, config: ModelConfig, fraction: float):
        super().__init__(config)
        self.fraction = fraction
        self.calls = self.tokens_in = self.tokens_out = 0

    async def complete(self, request: ModelRequest) -> ModelResponse:
        n_out = max(1, round(request.max_tokens * self.fraction))
        # ~4 characters a token, plus a few tokens of chat framing per message
        prompt_tokens = sum(len(c) for _, c in request.messages) // 4 + 4 * len(request.messages)
        self.calls += 1
        self.tokens_in += prompt_tokens
        self.tokens_out += n_out
        text = _FILLER * max(0, n_out - 12) + STAND_IN_DECISIONS
        return ModelResponse(text=text, tokens_in=prompt_tokens, tokens_out=n_out)


@dataclass
class ModelEstimate:
    calls: int = 0
    tokens_in: tuple[int, int] = (0, 0)
    tokens_out: tuple[int, int] = (0, 0)
    price: Price | None = None  # what these calls are billed at: the batch price when batched
    batched: bool = False  # the model has batch = true
    list_price: Price | None = None  # the ordinary price, when batched

    def cost(self) -> tuple[float, float] | None:
        return self._at(self.price)

    def standard_cost(self) -> tuple[float, float] | None:
        """What the same calls would cost sent one by one (the list price)."""
        return self._at(self.list_price if self.batched else self.price)

    def saving(self) -> tuple[float, float] | None:
        """(low, high) dollars the batch price saves; None unless batched and priced."""
        cost, standard = self.cost(), self.standard_cost()
        if not self.batched or cost is None or standard is None:
            return None
        return standard[0] - cost[0], standard[1] - cost[1]

    def _at(self, price: Price | None) -> tuple[float, float] | None:
        if price is None:
            return None
        return tuple((i * price.input + o * price.output) / 1e6
                     for i, o in zip(self.tokens_in, self.tokens_out, strict=True))


@dataclass
class Estimate:
    episodes: int
    skipped: int
    per_model: dict[str, ModelEstimate] = field(default_factory=dict)


def stand_in_models(configs: dict[str, ModelConfig],
                    fraction: float) -> tuple[dict[str, StandIn], dict[str, Model]]:
    """alias -> stand-in provider, and alias -> a Model calling it."""
    stand_ins = {a: StandIn(c, fraction) for a, c in configs.items()}
    # Stand-in calls cost nothing: no rpm/tpm pacing or endpoint cap (a real run's limits
    # would make the dry run wait for minutes).
    unlimited = {"rpm": None, "tpm": None, "endpoint_concurrency": None, "batch": None}
    models = {a: Model(a, c.model_copy(update=unlimited), provider=stand_ins[a])
              for a, c in configs.items()}
    return stand_ins, models


async def run_episode(plan: EpisodePlan, models: dict[str, Model], prompts: PromptLibrary) -> Any:
    """Run one planned episode on the given models, recording nothing; returns its result."""
    ep = Episode(item=plan.item, protocol=plan.protocol, params=plan.params,
                 models={r: models[a] for r, a in plan.roles.items()},
                 assignment=dict(plan.assignment.answers), dispositions=plan.dispositions,
                 prompts=prompts, source=plan.source)
    return await plan.protocol.fn(ep, **plan.params.model_dump())


def quiet_unretrieved(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """A loop exception handler: when one simultaneous turn fails, the others' exceptions
    are never retrieved; a stand-in run reports the first, without logging tracebacks."""
    if not context.get("message", "").startswith("Task exception was never retrieved"):
        loop.default_exception_handler(context)


async def _simulate(plans: list[EpisodePlan], configs: dict[str, ModelConfig], prompts: PromptLibrary,
                    fraction: float) -> dict[str, tuple[int, int, int]]:
    """alias -> (calls, tokens in, tokens out) if every reply were `fraction` of max_tokens."""
    asyncio.get_running_loop().set_exception_handler(quiet_unretrieved)
    stand_ins, models = stand_in_models(configs, fraction)
    for plan in plans:
        try:
            await run_episode(plan, models, prompts)
        except Exception:  # the run would fail this episode too; its calls so far still count
            continue
    return {a: (p.calls, p.tokens_in, p.tokens_out) for a, p in stand_ins.items()}


def estimate(plans: list[EpisodePlan], skipped: int, configs: dict[str, ModelConfig],
             prompts: PromptLibrary) -> Estimate:
    low = asyncio.run(_simulate(plans, configs, prompts, LOW_FRACTION))
    high = asyncio.run(_simulate(plans, configs, prompts, 1.0))
    result = Estimate(episodes=len(plans), skipped=skipped)
    for alias, cfg in configs.items():
        batched = cfg.batch is not None
        result.per_model[alias] = ModelEstimate(
            calls=high[alias][0], tokens_in=(low[alias][1], high[alias][1]),
            tokens_out=(low[alias][2], high[alias][2]),
            price=batch_price(cfg) if batched else price_for(cfg), batched=batched,
            list_price=price_for(cfg) if batched else None)
    return result
