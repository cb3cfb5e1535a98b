"""Dollar cost of a call from a versioned price table (prices.json), overridable per model.

Unknown prices give cost None — never 0 — so a report can say what it could not price.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib.resources import files

from .base import ModelConfig, ModelResponse, Price


@lru_cache(maxsize=1)
def price_table() -> dict:
    return json.loads(files("oversight.models").joinpath("prices.json").read_text())


def price_for(config: ModelConfig) -> Price | None:
    if config.price is not None:
        return config.price
    models = price_table()["models"]
    name = config.model
    # litellm names carry their own provider prefix: litellm/anthropic/claude-… -> anthropic/claude-…
    keys = [f"{config.provider}/{name}", name, f"{config.provider}/*"]
    for key in keys:
        if key in models:
            return Price(**models[key])
    # Dated snapshots (gpt-4o-mini-2024-07-18, claude-haiku-4-5-20251001) price like their family.
    for key in sorted(models, key=len, reverse=True):
        if keys[0].startswith(key) or name.startswith(key) or name.startswith(key.split("/", 1)[-1]):
            return Price(**models[key])
    return None


def cost_usd(response: ModelResponse, price: Price | None) -> float | None:
    if price is None or response.tokens_in is None or response.tokens_out is None:
        return None
    cached = response.tokens_cached or 0
    cached_rate = price.cached_input if price.cached_input is not None else price.input
    return ((response.tokens_in - cached) * price.input + cached * cached_rate
            + response.tokens_out * price.output) / 1e6
