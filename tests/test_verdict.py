"""Verdict parsing: never a default answer; probabilities from logprobs or stated confidence."""

from __future__ import annotations

import math

import pytest

from oversight.api.verdict import Verdict, parse_verdict
from oversight.models import TokenLogprob


def test_answer_and_confidence_parse():
    v = parse_verdict("Answer: B\nConfidence: 70%", 2)
    assert v.parsed is True
    assert v.chosen == 1
    assert v.prob_source == "elicited"
    assert v.probabilities == pytest.approx([0.3, 0.7])
    assert v.raw == "Answer: B\nConfidence: 70%"


def test_rationale_is_the_text_before_the_answer():
    v = parse_verdict("Debater A quoted the passage twice.\nAnswer: A\nConfidence: 80%", 2)
    assert v.chosen == 0
    assert v.rationale == "Debater A quoted the passage twice."


@pytest.mark.parametrize("text", [
    "", "   ", "I cannot decide.", "Both debaters make good points.", "Confidence: 90%",
    "Answer:", "Answer: ?", "Answer: 2", "The answer is unclear",
])
def test_garbage_is_unparsed_never_a_default(text):
    v = parse_verdict(text, 4)
    assert v.parsed is False
    assert v.raw == text
    assert v.chosen is None
    assert v.probabilities is None
    assert v.prob_source is None
    row = v.as_row("judge", answer_index=0)
    assert row["correct"] is None and row["parsed"] is False and row["raw"] == text


@pytest.mark.parametrize("text,n", [("Answer: E", 4), ("Answer: C\nConfidence: 90%", 2),
                                    ("Answer: Z", 26 - 1), ("E", 4), ("(C)", 2)])
def test_out_of_range_letters_are_rejected(text, n):
    v = parse_verdict(text, n)
    assert v.parsed is False and v.chosen is None and v.probabilities is None


@pytest.mark.parametrize("text,n,chosen", [("Answer: D", 4, 3), ("answer: d", 4, 3), ("B", 2, 1),
                                           ("(A).", 2, 0), ("Final answer: (C)", 3, 2),
                                           ("Answer = b", 2, 1)])
def test_answer_forms(text, n, chosen):
    v = parse_verdict(text, n)
    assert v.parsed is True and v.chosen == chosen


# With nine or more choices "I" is a letter (truthfulqa_mc1 has up to 13 choices), and "a" is
# one with any: a pronoun or article opening a sentence after "Answer:" must not be read as one.
@pytest.mark.parametrize("text", ["Answer: I think it is C", "Answer: I'm fairly sure it's D",
                                  "Answer: I would pick B.", "Answer: a good guess is B"])
def test_a_pronoun_or_article_after_answer_is_not_a_letter(text):
    v = parse_verdict(text, 12)
    assert v.parsed is False and v.chosen is None  # counted and excluded, never choice I or A


@pytest.mark.parametrize("text,chosen", [("Answer: I", 8), ("I think so.\nAnswer: I\nConfidence: 70%", 8),
                                         ("Answer: I) Paris", 8), ("Answer: a", 0),
                                         ("Answer: A because B is wrong", 0),
                                         ("Answer: I think it is C\nAnswer: C", 2)])
def test_letters_i_and_a_still_parse_as_answers(text, chosen):
    v = parse_verdict(text, 12)
    assert (v.parsed, v.chosen) == (True, chosen)


def test_last_answer_wins():
    text = "At first I thought Answer: A\nbut on reflection\nFinal answer: C\nConfidence: 60%"
    v = parse_verdict(text, 4)
    assert v.chosen == 2
    assert v.probabilities == pytest.approx([0.4 / 3, 0.4 / 3, 0.6, 0.4 / 3])


def test_the_final_confidence_goes_with_the_final_answer():
    text = "Answer: A\nConfidence: 60%\nWait, I misread.\nAnswer: B\nConfidence: 90%"
    v = parse_verdict(text, 2)
    assert v.chosen == 1
    assert v.probabilities == pytest.approx([0.1, 0.9])


@pytest.mark.parametrize("n", [2, 3, 4, 7])
@pytest.mark.parametrize("conf,p", [("0%", 0.0), ("55%", 0.55), ("100%", 1.0), ("0.8", 0.8),
                                    ("33.3%", 0.333), ("Confidence = 42 %", 0.42)])
def test_elicited_probabilities_sum_to_one(n, conf, p):
    line = conf if conf.startswith("Confidence") else f"Confidence: {conf}"
    v = parse_verdict(f"Answer: B\n{line}", n)
    assert v.prob_source == "elicited"
    assert len(v.probabilities) == n
    assert math.isclose(sum(v.probabilities), 1.0)
    assert all(0.0 <= q <= 1.0 for q in v.probabilities)
    assert v.probabilities[1] == pytest.approx(p)  # the stated confidence goes to the chosen answer
    others = v.probabilities[:1] + v.probabilities[2:]
    assert others == pytest.approx([(1 - p) / (n - 1)] * (n - 1))  # the rest shared evenly


@pytest.mark.parametrize("conf", ["150%", "101%", "1000%", "250"])
def test_confidence_over_100_is_rejected(conf):
    v = parse_verdict(f"Answer: A\nConfidence: {conf}", 2)
    assert v.parsed is True and v.chosen == 0  # the answer still counts...
    assert v.probabilities is None and v.prob_source is None  # ...the confidence does not


def test_no_confidence_means_no_probabilities():
    v = parse_verdict("Answer: A", 3)
    assert v.parsed is True and v.probabilities is None and v.prob_source is None


def _tokens(text_tokens: list[str], at: str, top: dict[str, float]) -> list[TokenLogprob]:
    return [TokenLogprob(t, top[t] if t == at else -0.01, dict(top) if t == at else {})
            for t in text_tokens]


def test_logprob_probabilities_when_given():
    toks = ["Answer", ":", " B", "\n", "Confidence", ":", " 90", "%"]
    top = {" B": math.log(0.6), " A": math.log(0.3), " C": math.log(0.05), "B": math.log(0.01)}
    text = "".join(toks)
    v = parse_verdict(text, 3, _tokens(toks, " B", top))
    assert v.chosen == 1
    assert v.prob_source == "logprobs"
    # Renormalised over the answer letters, the larger of " B"/"B" counts for B.
    assert v.probabilities == pytest.approx([0.3 / 0.95, 0.6 / 0.95, 0.05 / 0.95])
    assert math.isclose(sum(v.probabilities), 1.0)


def test_logprobs_use_the_token_of_the_final_answer():
    toks = ["Answer", ":", " A", ".", " No", ",", " Answer", ":", " B"]
    first = {" A": math.log(0.9), " B": math.log(0.1)}
    last = {" B": math.log(0.8), " A": math.log(0.2)}
    logprobs = [TokenLogprob(t, -0.01) for t in toks]
    logprobs[2] = TokenLogprob(" A", first[" A"], first)
    logprobs[8] = TokenLogprob(" B", last[" B"], last)
    v = parse_verdict("".join(toks), 2, logprobs)
    assert v.chosen == 1
    assert v.probabilities == pytest.approx([0.2, 0.8])


def test_logprobs_without_letter_mass_fall_back_to_elicited():
    toks = ["Answer", ":", " B", "\n", "Confidence", ":", " 70", "%"]
    logprobs = [TokenLogprob(t, -0.1, {"xyz": -1.0} if t == " B" else {}) for t in toks]
    logprobs[2] = TokenLogprob(" Bee", -0.1, {"xyz": -1.0})  # token text that is not a letter
    v = parse_verdict("".join(toks), 2, logprobs)
    assert v.chosen == 1
    assert v.prob_source == "elicited"
    assert v.probabilities == pytest.approx([0.3, 0.7])


def test_logprobs_that_do_not_reach_the_answer_are_ignored():
    text = "Answer: B\nConfidence: 70%"
    v = parse_verdict(text, 2, [TokenLogprob("Ans", -0.1, {"A": -0.1})])
    assert v.prob_source == "elicited"


def test_flag_and_suspicion():
    v = parse_verdict("Answer: A\nFlagged: yes\nSuspicion: 85", 2)
    assert v.flagged is True and v.suspicion == pytest.approx(0.85)
    v = parse_verdict("Answer: A\nFlagged: no", 2)
    assert v.flagged is False and v.suspicion is None


def test_verdict_row_scores_only_parsed_verdicts():
    assert parse_verdict("Answer: B", 2).as_row("judge", 1)["correct"] is True
    assert parse_verdict("Answer: A", 2).as_row("judge", 1)["correct"] is False
    assert Verdict(parsed=False, raw="?").as_row("judge", 1)["correct"] is None
