"""A scripted test double, usable from TOML: for logic above the HTTP layer only.

options.script: a list of replies used in turn (cycled); or options.rules: a list of
{"match": substring, "reply": text} checked against the last user message first.
Every request is kept in `calls` so a test can see exactly what each role was shown.
"""

from __future__ import annotations

import asyncio
import itertools

from ..errors import ModelError
from .base import ModelConfig, ModelRequest, ModelResponse, Provider


class MockProvider(Provider):
    def __init__(self, config: ModelConfig):
        super().__init__(config)
        script = config.options.get("script") or ["Answer: A\nConfidence: 70%"]
        self._replies = itertools.cycle(list(script))
        self._rules = list(config.options.get("rules", []))
        self._delay = float(config.options.get("delay", 0.0))
        self._fail = str(config.options.get("fail_on", "")) or None
        self.calls: list[ModelRequest] = []

    async def complete(self, request: ModelRequest) -> ModelResponse:
        self.calls.append(request)
        if self._delay:
            await asyncio.sleep(self._delay)
        prompt = "\n".join(c for _, c in request.messages)
        if self._fail and self._fail in prompt:
            raise ModelError(f"mock failure (prompt contains {self._fail!r})", status=400)
        text = next((r["reply"] for r in self._rules if r["match"] in prompt), None)
        if text is None:
            text = next(self._replies)
        return ModelResponse(text=text, model=self.config.model or "mock",
                             tokens_in=sum(len(c.split()) for _, c in request.messages),
                             tokens_out=len(text.split()), finish_reason="stop")
