"""Dollar cost of a call from a versioned price table (prices.json), overridable per model.

Unknown prices give cost None — never 0 — so a report can say what it could not price.
Calls sent through a provider's batch API (a model with `batch = true`) cost `batch_price`:
the model's batch_* prices where given, else the provider's published batch discount (the
table's "batch" section: half, for OpenAI and Anthropic) applied to its list prices.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from importlib.resources import files

from .base import ModelConfig, ModelResponse, Price

_DATED = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{8})$")


@lru_cache(maxsize=1)
def price_table() -> dict:
    return json.loads(files("oversight.models").joinpath("prices.json").read_text())


def price_for(config: ModelConfig) -> Price | None:
    if config.price is not None:
        return config.price
    if config.provider in ("openai", "anthropic") and config.base_url:
        return None  # another server speaking the API: the vendor's list price does not apply
    models = price_table()["models"]
    name = config.model
    # A dated snapshot (gpt-4o-mini-2024-07-18, claude-haiku-4-5-20251001) prices like its
    # family; any other suffix (o3-pro, gpt-5-pro) is a different model: no price, not a guess.
    base = _DATED.sub("", name)
    # litellm names carry their own provider prefix: anthropic/claude-… is a key as it stands.
    for key in (f"{config.provider}/{name}", name, f"{config.provider}/{base}", base,
                f"{config.provider}/*"):
        if key in models:
            return Price(**models[key])
    return None


def batch_discount(provider: str) -> float | None:
    """The fraction of the list price a provider's batch API bills (None: no batch API)."""
    value = price_table().get("batch", {}).get(provider)
    return float(value) if isinstance(value, (int, float)) else None


def batch_price(config: ModelConfig) -> Price | None:
    """Prices of a batched call, as a plain Price (input/output/cached_input): the explicit
    batch_* prices, else the provider's discount applied to the list prices. None when the
    model has no price, or neither explicit batch prices nor a provider rule exist."""
    price = price_for(config)
    if price is None:
        return None
    factor = batch_discount(config.provider)
    cached = price.cached_input if price.cached_input is not None else price.input

    def rate(explicit: float | None, listed: float) -> float | None:
        if explicit is not None:
            return explicit
        return None if factor is None else listed * factor

    values = (rate(price.batch_input, price.input), rate(price.batch_output, price.output),
              rate(price.batch_cached_input, cached))
    if values[0] is None or values[1] is None:
        return None
    return Price(input=values[0], output=values[1], cached_input=values[2])


def cost_usd(response: ModelResponse, price: Price | None) -> float | None:
    if price is None or response.tokens_in is None or response.tokens_out is None:
        return None
    cached = response.tokens_cached or 0
    cached_rate = price.cached_input if price.cached_input is not None else price.input
    return ((response.tokens_in - cached) * price.input + cached * cached_rate
            + response.tokens_out * price.output) / 1e6
