"""analysis.metrics: bootstrap CIs, accuracy over parsed verdicts only, grouping."""

import sys

import numpy as np
import pytest

from oversight.analysis import (
    accuracy,
    assignment_label,
    bootstrap_ci,
    by_label,
    summarise,
    to_dataframe,
)


def row(i, *, parsed=True, correct=True, status="done", run="r1", variant="debate",
        assignment=None, tokens=(10, 2)):
    """A result row shaped like Store.results(); parsed=None means no verdict (failed)."""
    has = parsed is not None and status == "done"
    return {"id": i, "run_id": run, "protocol": variant.split("[")[0], "variant": variant,
            "item_id": f"d/{i}", "assignment": assignment or {}, "roles": {}, "status": status,
            "n_calls": 1, "tokens_in": tokens[0], "tokens_out": tokens[1], "duration_s": 0.1,
            "parsed": parsed if has else None, "chosen": 0 if has and parsed else None,
            "correct": (correct if parsed else None) if has else None, "probabilities": None,
            "flagged": None, "suspicion": None}


def test_ci_contains_mean_and_is_ordered():
    values = np.random.default_rng(1).integers(0, 2, 60)
    lo, hi = bootstrap_ci(values)
    assert lo <= values.mean() <= hi
    assert 0.0 <= lo < hi <= 1.0


def test_ci_shrinks_with_n():
    rng = np.random.default_rng(2)
    widths = []
    for n in (20, 200, 2000):
        lo, hi = bootstrap_ci(rng.random(n) < 0.7)
        widths.append(hi - lo)
    assert widths[0] > widths[1] > widths[2]


def test_ci_reproducible_with_seed():
    values = np.random.default_rng(3).random(40)
    assert bootstrap_ci(values, seed=7) == bootstrap_ci(values, seed=7)
    assert bootstrap_ci(values, seed=7) != bootstrap_ci(values, seed=8)


def test_ci_edge_cases_and_other_stats():
    assert bootstrap_ci([]) == (None, None)
    assert bootstrap_ci([1.0]) == (1.0, 1.0)
    lo, hi = bootstrap_ci([1, 2, 3, 4, 100], stat=np.median)
    assert 1 <= lo <= 3 <= hi <= 100
    # Many values: resamples are drawn in chunks; still seeded and sensible.
    big = np.random.default_rng(4).random(300_000)
    a = bootstrap_ci(big, n_resamples=50)
    assert a == bootstrap_ci(big, n_resamples=50)
    assert a[0] < big.mean() < a[1] and a[1] - a[0] < 0.01


def test_accuracy_counts_and_excludes_unparsed():
    rows = [row(1, correct=True), row(2, correct=False), row(3, parsed=False),
            row(4, parsed=False), row(5, status="failed", parsed=None)]
    est = accuracy(rows)
    assert (est.mean, est.n, est.unparsed) == (0.5, 2, 2)  # not 1/4: unparsed are never scored
    assert est.lo <= 0.5 <= est.hi


def test_all_unparsed_has_no_accuracy_not_zero():
    est = accuracy([row(1, parsed=False), row(2, parsed=False)])
    assert est.mean is None and est.lo is None and est.hi is None
    assert (est.n, est.unparsed) == (0, 2)
    assert accuracy([]).mean is None


def test_assignment_labels():
    assert assignment_label({}) is None
    assert assignment_label(None) is None
    assert assignment_label({"consultant": {"answer": 1, "correct": False}}) == "consultant incorrect"
    assert assignment_label({"consultant": {"answer": 0, "correct": True}}) == "consultant correct"
    two = {"debater_a": {"answer": 0, "correct": False}, "debater_b": {"answer": 1, "correct": True}}
    assert assignment_label(two) == "debater_b correct"
    none = {k: {"answer": 2, "correct": False} for k in ("x", "y")}
    assert assignment_label(none) == "none correct"


def test_summarise_groups_by_run_and_variant_with_labels():
    right = {"consultant": {"answer": 0, "correct": True}}
    wrong = {"consultant": {"answer": 1, "correct": False}}
    rows = [row(1, variant="consultancy", assignment=right, correct=True),
            row(2, variant="consultancy", assignment=wrong, correct=False),
            row(3, variant="consultancy", assignment=wrong, parsed=False),
            row(4, variant="direct", parsed=False),
            row(5, variant="direct", status="failed", parsed=None, tokens=(5, 0)),
            row(6, run="r2", variant="direct", correct=True)]
    out = summarise(rows)
    assert [(s["run_id"], s["variant"]) for s in out] == [("r1", "consultancy"), ("r1", "direct"),
                                                          ("r2", "direct")]
    cons, direct, other = out
    assert (cons["episodes"], cons["done"], cons["parsed"], cons["unparsed"]) == (3, 3, 2, 1)
    assert cons["accuracy"] == 0.5
    labels = {b["label"]: b for b in cons["by_label"]}
    assert labels["consultant correct"]["accuracy"] == 1.0
    assert labels["consultant incorrect"]["accuracy"] == 0.0
    assert labels["consultant incorrect"]["unparsed"] == 1
    # all verdicts unparsed (and one failed): no accuracy at all
    assert direct["accuracy"] is None and direct["unparsed"] == 1 and direct["failed"] == 1
    assert direct["tokens_in"] == 15 and direct["tokens_in_mean"] == 7.5
    assert direct["by_label"] == []  # no advocates, no split
    assert other["accuracy"] == 1.0
    assert cons["cost_usd"] is None  # rows without prices: unknown, not $0
    assert by_label(rows[:3])[0]["label"] == "consultant correct"


def test_cost_only_when_every_episode_is_priced():
    rows = [{**row(1), "cost_usd": 0.01}, {**row(2, correct=False), "cost_usd": 0.03}]
    (s,) = summarise(rows)
    assert s["cost_usd"] == pytest.approx(0.04) and s["cost_per_correct"] == pytest.approx(0.04)
    (s,) = summarise([*rows, {**row(3), "cost_usd": None}])
    assert s["cost_usd"] is None and s["cost_per_correct"] is None


def test_to_dataframe_without_pandas_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # makes `import pandas` fail
    with pytest.raises(ImportError, match="pip install .oversight\[analysis\]."):
        to_dataframe([row(1)])


def test_to_dataframe_with_pandas():
    import pandas as pd
    df = to_dataframe([row(1, assignment={"consultant": {"answer": 0, "correct": True}})])
    assert isinstance(df, pd.DataFrame)
    assert df.loc[0, "assignment_label"] == "consultant correct"


def test_binary_fast_path_matches_the_resampling_bootstrap():
    import numpy as np

    from oversight.analysis.metrics import bootstrap_ci
    values = [1.0] * 70 + [0.0] * 30
    fast = bootstrap_ci(values, n_resamples=20_000, seed=1)
    # Any stat other than np.mean itself takes the general path: resample the rows.
    slow = bootstrap_ci(values, stat=lambda a, axis: np.mean(a, axis=axis), n_resamples=20_000, seed=1)
    assert abs(fast[0] - slow[0]) <= 0.02 and abs(fast[1] - slow[1]) <= 0.02
    assert fast[0] < 0.7 < fast[1]
