"""Models: one async `complete(request)` with providers behind it, imported lazily.

Provider modules import their SDKs at module level, so a provider costs nothing until a spec
names it (litellm, next, takes seconds to import).
"""

from __future__ import annotations

import importlib

from ..errors import ModelError
from .base import ModelConfig, ModelRequest, ModelResponse, Provider, TokenLogprob

PROVIDERS: dict[str, str] = {
    "openai": "oversight.models.openai_provider:OpenAIProvider",
    "anthropic": "oversight.models.anthropic_provider:AnthropicProvider",
    "litellm": "oversight.models.litellm_provider:LitellmProvider",
    "local": "oversight.models.local:LocalProvider",
    "mock": "oversight.models.mock:MockProvider",
}

__all__ = ["ModelConfig", "ModelRequest", "ModelResponse", "Provider", "TokenLogprob",
           "Model", "CallRecord", "CallSink", "CallGroup", "call_group", "Budget",
           "BudgetExhausted", "ResponseCache", "cache_key", "PROVIDERS", "provider_class"]


def provider_class(name: str) -> type[Provider]:
    try:
        target = PROVIDERS[name]
    except KeyError:
        raise ModelError(f"unknown provider {name!r}; known: {', '.join(sorted(PROVIDERS))}") from None
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


from .groups import CallGroup, call_group  # noqa: E402
from .model import (  # noqa: E402
    Budget,
    BudgetExhausted,
    CallRecord,
    CallSink,
    Model,
    ResponseCache,
    cache_key,
)
