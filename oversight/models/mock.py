"""A scripted test double, usable from TOML: for logic above the HTTP layer only.

options.script: a list of replies used in turn (cycled); options.rules: a list of
{"match": substring, "reply": text}, the first whose substring is in the prompt wins;
options.delay: seconds before each reply; options.fail_on: a substring that makes a call
fail (HTTP 400-like). Options are checked when the spec loads (check_options).
Requests are kept in `calls` so a test can see exactly what each role was shown: the first
KEEP_CALLS of them (a long batch of mock calls, e.g. a memory benchmark, must not hold every
prompt it sent); `n_calls` counts them all.
"""

from __future__ import annotations

import asyncio
import itertools

from ..errors import ModelError
from .base import ModelConfig, ModelRequest, ModelResponse, Provider

_OPTIONS = {"script", "rules", "delay", "fail_on", "timeout"}
KEEP_CALLS = 10_000


def check_options(options: dict) -> tuple[str, str] | None:
    """(key, what was expected) for the first malformed mock option, else None."""
    for name in options:
        if name not in _OPTIONS:
            return name, f"unknown mock option; expected one of {', '.join(sorted(_OPTIONS))}"
    script = options.get("script")
    if script is not None and (not isinstance(script, list) or not script
                               or not all(isinstance(x, str) for x in script)):
        return "script", "expected a non-empty list of reply strings"
    rules = options.get("rules")
    if rules is not None:
        if not isinstance(rules, list):
            return "rules", "expected a list of { match = \"...\", reply = \"...\" } tables"
        for i, rule in enumerate(rules):
            if not isinstance(rule, dict) or set(rule) != {"match", "reply"} \
                    or not all(isinstance(v, str) for v in rule.values()):
                return f"rules[{i}]", "expected { match = \"substring\", reply = \"text\" }"
    delay = options.get("delay")
    if delay is not None and (isinstance(delay, bool) or not isinstance(delay, (int, float))
                              or not 0 <= delay <= 3600):
        return "delay", "expected seconds from 0 to 3600"
    if options.get("fail_on") is not None and not isinstance(options["fail_on"], str):
        return "fail_on", "expected a substring of the prompt"
    return None


class MockProvider(Provider):
    def __init__(self, config: ModelConfig):
        super().__init__(config)
        script = config.options.get("script") or ["Answer: A\nConfidence: 70%"]
        self._replies = itertools.cycle(list(script))
        self._rules = list(config.options.get("rules", []))
        self._delay = float(config.options.get("delay", 0.0))
        self._fail = str(config.options.get("fail_on", "")) or None
        self.calls: list[ModelRequest] = []
        self.n_calls = 0

    async def complete(self, request: ModelRequest) -> ModelResponse:
        self.n_calls += 1
        if len(self.calls) < KEEP_CALLS:
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
