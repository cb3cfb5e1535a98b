"""analysis.intervals / calibration / position / ratings: each figure against a value computed
by hand (the arithmetic is in the comments)."""

import itertools
import json
import math

import numpy as np
import pytest

from oversight.analysis.base import Frozen, cluster_key, factorize, proportion, wilson
from oversight.analysis.calibration import calibration, ece_of, selective_accuracy
from oversight.analysis.intervals import (
    accuracy_interval,
    agreement,
    mcnemar_exact,
    paired_difference,
    sign_flip_test,
)
from oversight.analysis.position import position_bias
from oversight.analysis.ratings import Match, bradley_terry, matches, win_rates

_ids = itertools.count()


def row(item, correct=True, *, doc=None, status="done", parsed=True, chosen=0, target=None,
        probs=None, assignment=None, models=None, variant="v", run="r"):
    """A Store.results()-shaped row."""
    return {"id": next(_ids), "run_id": run, "variant": variant, "protocol": "p",
            "status": status, "item_id": item, "document": doc, "parsed": parsed,
            "chosen": chosen, "correct": correct, "target": target, "probabilities": probs,
            "assignment": assignment, "role_models": models or {}, "treatment": None,
            "tokens_in": 1, "tokens_out": 1, "cost_usd": None}


# --- accuracy_interval ---

def test_wilson_at_100_and_0_percent_is_not_zero_width():
    # Wilson(3/3), z = 1.959964: centre (1 + z²/6)/(1 + z²/3) = 0.71926, half 0.28074
    res = accuracy_interval([row(f"q{i}") for i in range(3)])
    assert (res.mean, res.n, res.clusters, res.design_effect) == (1.0, 3, 3, 1.0)
    assert res.lo == pytest.approx(0.43850, abs=1e-4) and res.hi == 1.0
    zero = accuracy_interval([row(f"q{i}", False) for i in range(3)])
    assert zero.mean == 0.0 and zero.lo == 0.0
    assert zero.hi == pytest.approx(1 - 0.43850, abs=1e-4)


def test_one_item_three_episodes_is_one_effective_observation():
    # every episode of the one cluster alike: deff = Σn_g²/n = 9/3 = 3, n_eff = 1;
    # Wilson(1/1): centre (1 + z²/2)/(1 + z²) = 0.60327, half 0.39673 → lo 0.20654
    res = accuracy_interval([row("q") for _ in range(3)])
    assert res.design_effect == 3.0 and res.n_eff == 1.0 and res.clusters == 1
    assert res.lo == pytest.approx(0.20654, abs=1e-4) and res.hi == 1.0
    assert res.lo == pytest.approx(wilson(1.0, 1.0)[0])


def test_worst_case_design_effect_weighs_big_clusters():
    # 4/4: one document of 3 episodes + one item: Kish deff = (3² + 1²)/4 = 2.5, n_eff = 1.6
    # (n/G = 2 would claim 2 independent observations; the big document dominates)
    res = accuracy_interval([row(f"q{i}", doc="D") for i in range(3)] + [row("x")])
    assert (res.clusters, res.design_effect, res.n_eff) == (2, 2.5, 1.6)
    assert res.lo == pytest.approx(wilson(1.0, 1.6)[0])


def test_clustered_interval_is_wider_than_independent():
    # 10 documents × 5 episodes, 5 documents all right and 5 all wrong: p̂ = ½,
    # V_cluster = 10/9 · 10·2.5² / 50² = 0.027778, V_iid = ¼/49 → deff = 49/9, n_eff = 450/49;
    # independent: V_cluster = 50/49 · 50·¼ / 50² = V_iid → deff = 1
    clustered = [row(f"q{d}-{e}", d < 5, doc=f"d{d}") for d in range(10) for e in range(5)]
    independent = [row(f"q{i}", i % 2 == 0) for i in range(50)]
    c, i = accuracy_interval(clustered), accuracy_interval(independent)
    assert c.mean == i.mean == 0.5
    assert c.design_effect == pytest.approx(49 / 9) and i.design_effect == pytest.approx(1.0)
    assert c.clusters == 10 and i.clusters == 50
    assert (c.hi - c.lo) > 2 * (i.hi - i.lo)
    assert (c.lo, c.hi) == pytest.approx(wilson(0.5, 450 / 49))
    assert (i.lo, i.hi) == pytest.approx(wilson(0.5, 50))


def test_exclusions_are_counted_never_scored():
    rows = [row("a"), row("b", False), row("c", None, parsed=False), row("d", None),
            row("e", None, parsed=None), row("f", True, status="failed"),
            row("g", True, status="pending")]
    res = accuracy_interval(iter(rows))  # any iterable
    assert (res.n, res.mean) == (2, 0.5)
    assert (res.unparsed, res.no_gold, res.no_answer, res.not_done) == (1, 1, 1, 2)


def test_all_unparsed_and_no_gold_have_no_accuracy():
    res = accuracy_interval([row(f"q{i}", None, parsed=False) for i in range(4)])
    assert (res.mean, res.lo, res.hi, res.n, res.unparsed) == (None, None, None, 0, 4)
    res = accuracy_interval([row(f"q{i}", None) for i in range(3)])
    assert (res.mean, res.n, res.no_gold, res.design_effect) == (None, 0, 3, None)
    assert accuracy_interval([]).mean is None


def test_fast_path_matches_the_vectorised_core():
    rng = np.random.default_rng(3)
    docs = rng.integers(12, size=500)  # odd documents are easy, even ones hard
    rows = [row(f"q{rng.integers(40)}", bool(rng.random() < (0.9 if d % 2 else 0.2)),
                doc=None if rng.random() < 0.3 else f"d{d}") for d in docs]
    res = accuracy_interval(rows)
    codes, g = factorize([cluster_key(r) for r in rows])
    ref = proportion([r["correct"] for r in rows], codes)
    assert res.clusters == g == ref["clusters"]
    assert (res.mean, res.lo, res.hi) == pytest.approx((ref["mean"], ref["lo"], ref["hi"]))
    assert res.design_effect > 1.5  # outcomes are alike within a document


def test_document_and_item_with_one_name_are_different_clusters():
    res = accuracy_interval([row("x", doc=None), row("y", doc="x")])
    assert res.clusters == 2


# --- paired_difference ---

def test_mcnemar_exact_value():
    # 8 vs 2 discordant: 2·P(X ≤ 2), X ~ Bin(10, ½) = 2·(1 + 10 + 45)/1024 = 0.109375
    assert mcnemar_exact(8, 2) == pytest.approx(0.109375, rel=1e-12)
    assert mcnemar_exact(0, 0) == 1.0 and mcnemar_exact(3, 3) == 1.0
    assert mcnemar_exact(5, 0) == pytest.approx(2 / 32)
    import scipy.stats as scipy_stats  # a test dependency: the reference for the hand-written test
    for b, c in [(8, 2), (0, 7), (13, 31), (400, 460)]:
        assert mcnemar_exact(b, c) == pytest.approx(scipy_stats.binomtest(b, b + c).pvalue)


def test_paired_difference_uses_mcnemar_on_single_episode_pairs():
    # 10 items: a right & b wrong on 8, a wrong & b right on 2, both right on 5 more
    a = [row(f"q{i}", i < 8 or i >= 10) for i in range(15)] + [row("only_a")]
    b = [row(f"q{i}", 8 <= i) for i in range(15)] + [row("only_b1"), row("only_b2")]
    res = paired_difference(a, b, n_resamples=2000)
    assert (res.shared, res.only_a, res.only_b) == (15, 1, 2)
    assert (res.a_right_b_wrong, res.a_wrong_b_right) == (8, 2)
    assert res.test == "mcnemar exact" and res.p_value == pytest.approx(0.109375)
    assert res.difference == pytest.approx(6 / 15)
    assert (res.accuracy_a, res.accuracy_b) == pytest.approx((13 / 15, 7 / 15))
    assert res.lo < res.difference < res.hi


def test_sign_flip_exact_case():
    # per-item differences 1, 1, 1, ½ (q3 has two episodes in a, so not McNemar) and 0:
    # |Σ| = 3.5 is reached only by all + or all −: 2 of 2⁴ sign vectors → p = 0.125
    a = [row("q0"), row("q1"), row("q2"), row("q3"), row("q3", False), row("q4")]
    b = [row("q0", False), row("q1", False), row("q2", False), row("q3", False), row("q4")]
    res = paired_difference(a, b)
    assert res.test == "sign-flip exact" and res.p_value == pytest.approx(0.125)
    assert res.difference == pytest.approx(3.5 / 5)
    assert res.a_right_b_wrong is None
    assert sign_flip_test(np.array([2.0, -1.0, 0.0])) == (1.0, "sign-flip exact")  # |±2 ± 1| ≥ 1


def test_sign_flip_monte_carlo_beyond_twenty_differences():
    # 25 equal positive differences: only ±all reach |Σ| (2/2²⁵); R = 999 draws find none
    # → (0 + 1)/(999 + 1)
    p, test = sign_flip_test(np.ones(25), n_resamples=999, seed=1)
    assert test == "sign-flip monte carlo" and p == pytest.approx(0.001)


def test_paired_difference_without_shared_items_and_single_cluster():
    res = paired_difference([row("a")], [row("b")])
    assert res.difference is None and res.p_value is None and (res.only_a, res.only_b) == (1, 1)
    res = paired_difference([row("q1", doc="D"), row("q2", doc="D")],
                            [row("q1", False, doc="D"), row("q2", doc="D")])
    assert res.difference == 0.5 and res.clusters == 1
    assert res.lo is None and res.hi is None  # one document: a bootstrap has no spread


def test_paired_bootstrap_resamples_documents():
    # 4 documents × 5 items, a − b = 1 on documents 0, 1 and 0 on 2, 3: the clustered
    # bootstrap mean of 4 cluster draws takes few values, item-level would take many
    a = [row(f"q{d}-{i}", doc=f"D{d}") for d in range(4) for i in range(5)]
    b = [row(f"q{d}-{i}", d >= 2, doc=f"D{d}") for d in range(4) for i in range(5)]
    res = paired_difference(a, b, n_resamples=4000, seed=3)
    assert res.clusters == 4 and res.difference == 0.5
    assert res.lo == pytest.approx(0.0) and res.hi == pytest.approx(1.0)  # 0/4 and 4/4 draws
    again = paired_difference(a, b, n_resamples=4000, seed=3)
    assert (again.lo, again.hi) == (res.lo, res.hi)


# --- agreement ---

def test_cohens_kappa_hand_case():
    # both 0: 4, a0 b1: 1, a1 b0: 1, both 1: 4 → p_o = 0.8, p_e = ½·½ + ½·½ = 0.5, κ = 0.6
    pairs = [(0, 0)] * 4 + [(0, 1), (1, 0)] + [(1, 1)] * 4
    a = [row(f"q{i}", chosen=x) for i, (x, _) in enumerate(pairs)]
    b = [row(f"q{i}", chosen=y) for i, (_, y) in enumerate(pairs)]
    b += [row("q0", chosen=1), row("extra")]  # q0 now ambiguous on b; "extra" only in b
    res = agreement(a, b)
    assert (res.items, res.agree, res.disagree, res.ambiguous, res.only_b) == (9, 7, 2, 1, 1)
    res = agreement(a, [row(f"q{i}", chosen=y) for i, (_, y) in enumerate(pairs)])
    assert res.rate == pytest.approx(0.8) and res.flip_rate == pytest.approx(0.2)
    assert res.kappa == pytest.approx(0.6)


def test_kappa_undefined_when_both_always_pick_one_choice():
    res = agreement([row("q1"), row("q2")], [row("q1"), row("q2")])
    assert res.rate == 1.0 and res.kappa is None
    res = agreement([row("q1", parsed=False, chosen=None)], [row("q1")])
    assert (res.items, res.rate, res.kappa, res.only_b) == (0, None, None, 1)


# --- calibration ---

def test_ece_hand_table():
    # bin 9: 4 at 0.9, 3 right → |0.75 − 0.9|·4/7; bin 6: 2 at 0.6, 1 right → 0.1·2/7;
    # bin 3: 1 at 0.3, wrong → 0.3/7.  ECE = (0.6 + 0.2 + 0.3)/7
    rel = ece_of([0.9] * 4 + [0.6] * 2 + [0.3], [1, 1, 1, 0, 1, 0, 0])
    assert rel.ece == pytest.approx(1.1 / 7) and rel.forecasts == 7
    assert [b.n for b in rel.bins] == [0, 0, 0, 1, 0, 0, 2, 0, 0, 4]
    assert rel.bins[9].accuracy == 0.75 and rel.bins[9].confidence == pytest.approx(0.9)
    assert rel.bins[0].accuracy is None and rel.bins[0].confidence is None
    assert (rel.bins[3].lo, rel.bins[3].hi) == (0.3, 0.4)
    # edges: 1.0 is in the closed last bin; 0.5 starts the upper of two bins; 0.29 is in 29
    assert [b.n for b in ece_of([0.0, 0.5, 1.0], [0, 1, 1], bins=2).bins] == [1, 2]
    assert ece_of([0.29], [1], bins=100).bins[29].n == 1
    assert ece_of([], []).ece is None
    with pytest.raises(ValueError):
        ece_of([1.2], [1])


def _cal_rows():
    # d1 chose 0 with [0.8, 0.2], gold 0; d2 chose 0 with [0.6, 0.4], gold 1
    return [row("q1", True, chosen=0, target=0, probs=[0.8, 0.2]),
            row("q2", False, chosen=0, target=1, probs=[0.6, 0.4])]


def test_calibration_chosen_and_each_and_brier():
    rows = _cal_rows() + [row("q3", True), row("q4", True, probs=[float("nan"), 1.0]),
                          row("q5", None, parsed=False, probs=[1.0, 0.0])]
    # chosen, 2 bins: both in [0.5, 1]: conf 0.7, accuracy 0.5 → ECE 0.2
    res = calibration(rows, bins=2)
    assert (res.n, res.forecasts, res.ece) == (2, 2, pytest.approx(0.2))
    assert (res.without_probabilities, res.invalid_probabilities, res.unparsed) == (1, 1, 1)
    # Brier: (0.8−1)² + 0.2² = 0.08; 0.6² + (0.4−1)² = 0.72 → 0.4
    assert res.brier == pytest.approx(0.4) and res.brier_n == 2
    # each: forecasts 0.8✓ 0.2✗ 0.6✗ 0.4✓; bin [0.5,1]: conf 0.7 acc ½; [0,0.5): 0.3 vs ½
    each = calibration(rows, bins=2, confidence="each")
    assert (each.n, each.forecasts, each.ece) == (2, 4, pytest.approx(0.2))
    assert [b.n for b in each.bins] == [2, 2]
    assert each.bins[0].confidence == pytest.approx(0.3) and each.bins[0].accuracy == 0.5
    # 10 bins: chosen |1 − 0.8|, |0 − 0.6| → 0.4; each: 0.2, 0.2, 0.6, 0.6 over 4 → 0.4
    assert calibration(rows).ece == pytest.approx(0.4)
    with pytest.raises(ValueError):
        calibration(rows, confidence="gold")


def test_confidence_is_the_probability_of_the_chosen_answer():
    # chose 1 with [0.6, 0.4] and was right: confidence 0.4 (not the max 0.6) → ECE 0.6;
    # no chosen index: the max, 0.7, wrong → 0.7
    res = calibration([row("q1", True, chosen=1, probs=[0.6, 0.4])])
    assert res.bins[4].n == 1 and res.ece == pytest.approx(0.6)
    res = calibration([row("q1", False, chosen=None, probs=[0.3, 0.7])])
    assert res.bins[7].n == 1 and res.ece == pytest.approx(0.7)


def test_calibration_mixes_choice_counts_and_rejects_bad_probabilities():
    # 0.8 of 2 choices, right: |1 − 0.8|; 0.5 of 4 choices, wrong: |0 − 0.5| → ECE 0.35
    rows = [row("q1", True, probs=[0.8, 0.2]), row("q2", False, probs=[0.5, 0.2, 0.2, 0.1]),
            row("q3", True, probs="0.9"), row("q4", True, probs=[0.5, None]),
            row("q5", True, probs=[1.5, -0.5]), row("q6", True, probs=[])]
    res = calibration(rows)
    assert res.ece == pytest.approx(0.35) and res.decisions == 2
    assert (res.invalid_probabilities, res.without_probabilities) == (3, 1)


def test_brier_needs_a_choice_target():
    rows = _cal_rows() + [row("q3", True, chosen=1, target="yes", probs=[0.0, 1.0]),
                          row("q4", False, chosen=0, target=1, probs=[1.0, 0.0])]
    res = calibration(rows)
    assert res.decisions == 4 and res.no_choice_target == 1 and res.brier_n == 3
    assert res.brier == pytest.approx((0.08 + 0.72 + 2.0) / 3)  # q4 is the worst case, 2
    assert calibration(rows, confidence="each").n == 3


def test_selective_accuracy_keeps_ties_together():
    # by confidence 0.9✓ 0.8✓ 0.8✗ 0.8✓ 0.5✗; 30% → top ⌈1.5⌉ = 2 reaches the 0.8 tie → 4
    pts = selective_accuracy([0.8, 0.9, 0.5, 0.8, 0.8], [1, 1, 0, 0, 1])
    got = {round(p.target, 1): (p.n, p.coverage, p.accuracy) for p in pts}
    assert got[0.1] == got[0.2] == (1, 0.2, 1.0)
    assert got[0.3] == (4, 0.8, 0.75) and got[0.8] == (4, 0.8, 0.75)
    assert got[1.0] == (5, 1.0, 0.6) and len(pts) == 10
    assert [p.n for p in selective_accuracy([0.5] * 3, [1, 0, 1])] == [3] * 10
    assert selective_accuracy([], []) == []


def test_nothing_to_measure_is_none_everywhere():
    bare = {"status": "done", "parsed": True, "correct": True, "item_id": "x"}  # minimal row
    assert accuracy_interval([bare]).mean == 1.0
    assert calibration([bare]).without_probabilities == 1
    rows = [row(f"q{i}", None, parsed=False, chosen=None) for i in range(3)]
    cal = calibration(rows)
    assert (cal.ece, cal.brier, cal.selective, cal.unparsed) == (None, None, [], 3)
    assert all(b.n == 0 and b.accuracy is None for b in cal.bins)
    pos = position_bias(rows)
    assert (pos.n, pos.first, pos.by_chosen, pos.by_gold, pos.unparsed) == (0, None, [], [], 3)
    assert paired_difference(rows, rows).shared == 0 and agreement(rows, rows).kappa is None
    got = matches(rows)
    assert got.matches == [] and got.unparsed == 3
    assert win_rates(got) == [] and bradley_terry(got).ratings == []


# --- position ---

def _arm(item, chosen, swapped, **kw):
    a = {"debater_a": {"answer": 1 if swapped else 0, "correct": not swapped},
         "debater_b": {"answer": 0 if swapped else 1, "correct": swapped}}
    return row(item, chosen == 0, chosen=chosen, target=0, assignment=a, **kw)


def test_position_first_choice_and_gold_groups():
    rows = [row("q1", True, chosen=0, target=0), row("q2", False, chosen=0, target=2),
            row("q3", True, chosen=0, target=0), row("q4", True, chosen=1, target=None),
            row("q5", None, parsed=False, chosen=None), row("q6", True, chosen=None)]
    res = position_bias(rows)
    assert (res.n, res.by_chosen, res.first) == (4, [3, 1, 0], 0.75)
    assert res.first_lo < 0.75 < res.first_hi
    assert [(g.position, g.n, g.correct, g.accuracy) for g in res.by_gold] == [
        (0, 2, 2, 1.0), (1, 0, 0, None), (2, 1, 0, 0.0)]
    assert res.by_gold[1].lo is None and res.by_gold[2].hi > 0  # empty; 0/1 not zero width
    assert (res.no_choice_target, res.unparsed, res.no_choice) == (1, 1, 1)
    assert (res.flip_items, res.flip_rate) == (0, None)


def test_position_flip_rate_hand_case():
    rows = [_arm("q1", 0, False), _arm("q1", 1, True),  # followed debater_a: a flip
            _arm("q2", 0, False), _arm("q2", 0, True),  # same answer both ways
            _arm("q3", 0, False), _arm("q3", 0, False), _arm("q3", 1, True),  # 2 pairs, 2 flips
            _arm("q4", 0, False),  # one order only
            _arm("q5", 0, False), _arm("q5", 1, True, variant="w"),  # different variants
            _arm("q6", 0, False), _arm("q6", 1, False)]  # one assignment, written twice:
    rows[-1]["assignment"] = dict(reversed(rows[-1]["assignment"].items()))  # role order differs
    res = position_bias(rows)
    assert (res.flip_items, res.flip_pairs, res.flips) == (3, 4, 3)
    assert res.flip_rate == pytest.approx((1 + 0 + 1) / 3)  # per item, not 3/4


# --- ratings ---

def M(w, lo, cluster="c", wc=None):
    return Match(episode=0, cluster=cluster, winner=w, loser=lo, winner_role="a",
                 loser_role="b", winner_correct=wc, loser_correct=None if wc is None else not wc)


def test_matches_from_rows():
    models = {"debater_a": "gpt", "debater_b": "claude"}
    rows = [_arm("q1", 0, False, models=models), _arm("q2", 0, True, models=models),
            _arm("q3", 2, False, models=models),  # nobody argued choice 2
            _arm("q4", 0, False, models={"debater_a": "gpt", "debater_b": "gpt"}),
            _arm("q5", 0, False, models={"debater_a": "gpt"}),
            row("q6", chosen=0, assignment={"consultant": {"answer": 0, "correct": True}}),
            row("q7", chosen=0, models=models, assignment={
                "debater_a": {"answer": 1}, "debater_b": {"answer": 1}}),
            row("q8", None, parsed=False, chosen=None)]
    got = matches(rows)
    assert [(m.winner, m.loser, m.winner_role, m.winner_correct) for m in got.matches] == [
        ("gpt", "claude", "debater_a", True), ("claude", "gpt", "debater_b", True)]
    assert got.matches[0].cluster == "item:q1"
    assert (got.unargued, got.self_play, got.no_model, got.not_two_advocates,
            got.same_answer, got.unparsed) == (1, 1, 1, 1, 1, 1)


def test_win_rates_split_by_correct_side():
    ms = [M("A", "B", "c1", True), M("A", "B", "c2", False), M("A", "B", "c3", True),
          M("B", "A", "c4", True)]
    a, b = win_rates(ms)
    assert (a.model, a.matches, a.wins, a.win_rate) == ("A", 4, 3, 0.75)
    assert (a.correct_matches, a.correct_wins, a.incorrect_matches, a.incorrect_wins) == (
        2, 2, 2, 1)
    assert (a.correct_win_rate, a.incorrect_win_rate) == (1.0, 0.5)
    assert (b.wins, b.win_rate, b.correct_win_rate, b.incorrect_win_rate) == (1, 0.25, 0.5, 0.0)
    assert a.lo < 0.75 < a.hi


def test_bradley_terry_two_models():
    # A beats B 3 of 4: p_A/p_B = 3 → 400·log10 3 = 190.849, centred ±95.42
    bt = bradley_terry([M("A", "B", f"c{i}") for i in range(3)] + [M("B", "A", "c3")],
                       n_resamples=300)
    a, b = bt.ratings
    assert a.rating - b.rating == pytest.approx(400 * math.log10(3), abs=1e-6)
    assert a.rating == pytest.approx(-b.rating) and bt.converged
    assert bt.resamples_used + bt.resamples_skipped == 300 and bt.resamples_skipped > 0
    assert a.lo <= a.rating <= a.hi and (a.wins, a.matches) == (3, 4)


def test_bradley_terry_chain_and_score_equations():
    # A–B 2:1, B–C 2:1, A and C never meet: the score equations give p_A/p_B = p_B/p_C = 2
    ms = [M("A", "B", "x1"), M("A", "B", "x2"), M("B", "A", "x3"),
          M("B", "C", "y1"), M("B", "C", "y2"), M("C", "B", "y3")]
    got = [r.rating for r in bradley_terry(ms, n_resamples=10).ratings]
    assert got == pytest.approx([400 * math.log10(2), 0, -400 * math.log10(2)], abs=1e-6)
    # a 3-model round robin: W_i = Σ_j n_ij·p_i/(p_i + p_j) at the MLE
    wins = {("A", "B"): 5, ("B", "A"): 2, ("B", "C"): 4, ("C", "B"): 3, ("A", "C"): 1,
            ("C", "A"): 3}
    ms = [M(w, lo, f"{w}{lo}{i}") for (w, lo), n in wins.items() for i in range(n)]
    bt = bradley_terry(ms, n_resamples=10)
    p = {r.model: 10 ** (r.rating / 400) for r in bt.ratings}
    for i in "ABC":
        w_i = sum(n for (w, _), n in wins.items() if w == i)
        expect = sum((wins.get((i, j), 0) + wins.get((j, i), 0)) * p[i] / (p[i] + p[j])
                     for j in "ABC" if j != i)
        assert w_i == pytest.approx(expect, abs=1e-9)
    assert sum(r.rating for r in bt.ratings) == pytest.approx(0, abs=1e-9)


def test_bradley_terry_without_an_mle():
    base = [M("A", "B", f"c{i}") for i in range(3)] + [M("B", "A", "c3")]
    # D never won, E never lost: None with a reason; A and B as without them
    bt = bradley_terry(base + [M("A", "D"), M("B", "D"), M("E", "A")], n_resamples=50)
    r = {x.model: x for x in bt.ratings}
    assert r["D"].rating is None and "never won" in r["D"].reason
    assert r["E"].rating is None and "never lost" in r["E"].reason
    assert r["A"].rating - r["B"].rating == pytest.approx(400 * math.log10(3), abs=1e-6)
    assert r["A"].reason is None and bt.matches == 4
    # two separate groups: the one with more matches is rated, the other is not comparable
    other = [M("C", "D", "d1"), M("D", "C", "d2")]
    r = {x.model: x for x in bradley_terry(base + other, n_resamples=50).ratings}
    assert r["A"].rating is not None and r["C"].rating is None and r["D"].rating is None
    assert "outside the rated group" in r["C"].reason
    # nobody ever lost and won: nothing rated, nothing infinite
    bt = bradley_terry([M("A", "B")], n_resamples=10)
    assert [x.rating for x in bt.ratings] == [None, None] and bt.matches == 0
    assert bradley_terry([]).ratings == []


def test_results_serialise_to_strict_json():
    class X(Frozen):
        v: float

    assert json.loads(X(v=float("inf")).model_dump_json()) == {"v": None}
    with pytest.raises(Exception):  # noqa: B017 - frozen: any pydantic error type
        X(v=1.0).v = 2.0  # type: ignore[misc]
    res = accuracy_interval([])
    assert json.loads(res.model_dump_json())["mean"] is None
