"""The response cache, kept in the store (table response_cache), and why a request missed it.

Keys are computed in oversight.models.model.cache_key from the full request, the settings
that change the output, and a sample index; this module only stores and explains them.
"""

from __future__ import annotations

from ..models import ModelConfig, ModelRequest, ModelResponse, cache_key
from ..models.base import TokenLogprob
from ..store import Store, Writer, utcnow

MAX_SAMPLES_SEARCHED = 64  # how far to look for the sample index of a repeated request


class StoreCache:
    """Reads see entries still queued in the run's writer; writes go through it."""

    def __init__(self, store: Store, writer: Writer | None = None, models: list[str] | None = None):
        self.store, self.writer = store, writer
        # The keys already stored for these models, read once: a run of new requests then
        # costs no query per call (an entry another process adds meanwhile is only a miss).
        # Held as the int of each key's first 15 hex digits (a 64-character string each would
        # be ~150 bytes a call held for the whole run): a collision only costs a store read.
        self.keys = {_short(k) for k in store.cache_keys(models)} if models is not None else None

    async def get(self, key: str) -> ModelResponse | None:
        row = self.writer.pending_cache.get(key) if self.writer is not None else None
        if row is None and (self.keys is None or _short(key) in self.keys):
            row = self.store.cache_get(key)
        if row is None:
            return None
        lps = row.get("logprobs")
        return ModelResponse(**{**row, "logprobs": [TokenLogprob(**t) for t in lps] if lps else None})

    async def put(self, key: str, config: ModelConfig, request: ModelRequest, response: ModelResponse) -> None:
        row = {"key": key, "provider": config.provider, "model": config.model,
               "request": {**request.as_dict(), "base_url": config.base_url,
                           "options": config.output_options()},
               "response": _as_row(response), "created_at": utcnow()}
        if self.keys is not None:
            self.keys.add(_short(key))
        if self.writer is not None:
            self.writer.cache(row)
        else:
            self.store.cache_put(row)


def _short(key: str) -> int:
    try:
        return int(key[:15], 16)
    except ValueError:  # not a hex digest: its hash serves as well
        return hash(key)


def _as_row(response: ModelResponse) -> dict:
    """The response as JSON-able data; shallow, where dataclasses.asdict deep-copies `raw`."""
    row = dict(vars(response))
    if response.logprobs:
        row["logprobs"] = [vars(t) for t in response.logprobs]
    return row


def _request_of(call: dict, config: ModelConfig) -> ModelRequest:
    r = call["request"]
    return ModelRequest(messages=tuple((m["role"], m["content"]) for m in r["messages"]),
                        max_tokens=r["max_tokens"], temperature=r["temperature"],
                        logprobs=r["logprobs"], top_logprobs=r["top_logprobs"], stop=tuple(r["stop"]))


def _diff(mine: dict, other: dict) -> list[str]:
    out = []
    for field in ("base_url", "options", "max_tokens", "temperature", "logprobs", "top_logprobs", "stop"):
        if mine.get(field) != other.get(field):
            out.append(f"{field}: {mine.get(field)!r} here, {other.get(field)!r} cached")
    a, b = mine["messages"], other["messages"]
    if len(a) != len(b):
        out.append(f"messages: {len(a)} here, {len(b)} cached")
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            at = next((j for j, (p, q) in enumerate(zip(x["content"], y["content"], strict=False)) if p != q),
                      min(len(x["content"]), len(y["content"])))
            out.append(f"messages[{i}] ({x['role']}): first difference at character {at}: "
                       f"{x['content'][at:at + 40]!r} here, {y['content'][at:at + 40]!r} cached")
    return out


def explain(store: Store, call_id: int) -> list[str]:
    """Plain sentences on whether and why one recorded call missed the cache."""
    call = store.call(call_id)
    if call is None:
        return [f"no model call {call_id} in this store"]
    if call["cache_hit"]:
        return [f"call {call_id} was served from the cache (key {call['cache_key'][:16]}…); no request was sent"]
    if call["cache_key"] is None:
        return [f"call {call_id} did not use the cache (the run was started with --no-cache)"]
    config = ModelConfig(**call["model_config"])
    request = _request_of(call, config)
    sample = next((s for s in range(MAX_SAMPLES_SEARCHED)
                   if cache_key(config, request, s) == call["cache_key"]), None)
    lines = [f"call {call_id} ({config.provider}/{config.model}, role {call['role']}) missed the "
             f"cache: no entry with key {call['cache_key'][:16]}… existed when it was made."]
    if sample:
        lines.append(f"It was sample {sample} of this exact request in its episode: repeated "
                     "requests are sampled afresh, so it could only match an earlier run's "
                     f"sample {sample}.")
    mine = {**call["request"], "base_url": config.base_url, "options": config.output_options()}
    candidates = [e for e in store.cache_entries(config.provider, config.model, before=call["created_at"])
                  if e["key"] != call["cache_key"]]
    if not candidates:
        lines.append(f"The cache held no earlier response from {config.provider}/{config.model} at all.")
        return lines
    diffs = sorted(((_diff(mine, e["request"]), e["key"]) for e in candidates), key=lambda d: len(d[0]))
    best, key = diffs[0]
    if not best and sample:
        lines.append(f"The nearest entry ({key[:16]}…) is the same request as a different sample.")
    else:
        lines.append(f"The nearest of {len(candidates)} earlier entries for this model ({key[:16]}…) differs in:")
        lines += [f"  - {d}" for d in best] or ["  - nothing in the request: it is another sample of it"]
    return lines
