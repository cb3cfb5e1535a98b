"""Analysis: pure functions from store rows to metrics (read only; no protocol knowledge)."""

from .metrics import (
    Estimate,
    accuracy,
    assignment_label,
    bootstrap_ci,
    by_label,
    summarise,
    to_dataframe,
)

__all__ = ["Estimate", "accuracy", "assignment_label", "bootstrap_ci", "by_label", "summarise",
           "to_dataframe"]
