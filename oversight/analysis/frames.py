"""pandas DataFrames of stored runs, for notebooks: one row per episode or per decision.

    from oversight.store import Store
    from oversight.analysis import episodes_frame, decisions_frame
    df = episodes_frame(Store("runs/oversight.db", readonly=True), ["demo"])
    df.groupby(["variant", "model_judge"]).correct.mean()

Columns of `episodes_frame`: every column of `Store.results()` (id, run_id, protocol,
variant, item_id, dataset, document, status, tokens, cost, treatment, intent, outcome, …), and
- `gold`: the item's target (a choice index, a label, a free-form answer; None: no gold);
- `parsed`, `chosen`, `correct`, `probabilities`, `answer_text`: the deciding role's last
  answer (all None when it gave none; `correct` None also when there is no gold);
- `model_<role>`: the model that played each role (None where a variant has no such role);
- `param_<name>`: each protocol parameter (None where a variant has no such parameter);
- `assignment_label`: which advocate argued the correct answer (see `assignment_label`).
Missing values are None/NaN, never 0: filter on `parsed` and `correct.notna()` before taking a
mean, as `accuracy` does.

pandas is not a dependency of oversight: `pip install oversight[analysis]`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from .metrics import assignment_label


def _pandas():
    try:
        import pandas as pd
    except ImportError:
        raise ImportError("DataFrames need pandas, which oversight does not install: "
                          "pip install 'oversight[analysis]'") from None
    return pd


def episode_records(rows: Iterable[dict]) -> list[dict[str, Any]]:
    """Result rows flattened as `episodes_frame` describes (plain dicts, no pandas)."""
    out = []
    for r in rows:
        rec = {k: v for k, v in r.items() if k not in ("role_models", "params", "target")}
        rec["gold"] = r.get("target")
        rec["assignment_label"] = assignment_label(r.get("assignment"))
        for role, model in (r.get("role_models") or {}).items():
            rec[f"model_{role}"] = model
        for name, value in (r.get("params") or {}).items():
            rec[f"param_{name}"] = value
        out.append(rec)
    return out


def _run_ids(store, runs: Sequence[str]) -> list[str]:
    """Run ids, unique id prefixes or names (the latest run of a name), as the CLI takes them."""
    out = []
    for ref in runs:
        run_id = store.find_run(ref)
        if run_id is None:
            raise KeyError(f"no run matches {ref!r}")
        out.append(run_id)
    return out


def episodes_frame(store, runs: Sequence[str]):
    """One row per episode of the runs (ids, id prefixes or names; see the module docstring
    for the columns)."""
    return _pandas().DataFrame(episode_records(store.results(_run_ids(store, runs))))


def decisions_frame(store, runs: Sequence[str]):
    """One row per decision (every answer, flag, score and label, not only the last) with its
    episode's run, protocol, variant, item, treatment and truths (intent, outcome)."""
    return _pandas().DataFrame(store.decisions(_run_ids(store, runs)))


def to_dataframe(rows: Iterable[dict]):
    """A DataFrame of `Store.results()` rows, flattened as `episodes_frame` does."""
    return _pandas().DataFrame(episode_records(rows))
