"""What a set of call attempts cost, counted one way everywhere (an episode's row, a run's
summary, the progress bar): real calls and cache hits, failed attempts, tokens, dollars."""

from __future__ import annotations

from dataclasses import dataclass

from .model import CallRecord


@dataclass
class Totals:
    calls: int = 0  # attempts that went to a provider (failed ones included)
    cache_hits: int = 0  # answered from the response cache: free
    errors: int = 0  # attempts that failed (the retry layer may have recovered the call)
    tokens_in: int = 0
    tokens_out: int = 0
    tokens_cached: int = 0
    cost_usd: float = 0.0  # of the answered calls whose price is known
    unpriced: int = 0  # answered calls with no known price (their cost is unknown, not 0)

    def add(self, record: CallRecord) -> None:
        resp = record.response
        if record.cache_hit:
            self.cache_hits += 1
        else:
            self.calls += 1
            if resp is not None and record.cost_usd is None:
                self.unpriced += 1
            elif resp is not None:
                self.cost_usd += record.cost_usd
        if resp is None:
            self.errors += 1
            return
        self.tokens_in += resp.tokens_in or 0
        self.tokens_out += resp.tokens_out or 0
        self.tokens_cached += resp.tokens_cached or 0

    @property
    def known_cost(self) -> float | None:
        """The dollars, or None once any answered call could not be priced."""
        return None if self.unpriced else self.cost_usd
