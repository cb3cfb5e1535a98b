"""Decisions: answers (choice, free text), flags, scores on a declared scale, labels. Never a
default value; the last stated value wins; probabilities from logprobs or stated confidence."""

from __future__ import annotations

import math

import pytest

from oversight.api.decisions import Answer, Decision, Flag, Label, Score, parse_verdict
from oversight.models import TokenLogprob
from oversight.tasks.items import Item


def test_answer_and_confidence_parse():
    v = parse_verdict("Answer: B\nConfidence: 70%", 2)
    assert v.parsed is True
    assert v.chosen == 1
    assert v.source == "elicited"
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
    assert v.source is None
    d = Answer().parse(text, CHOICE4, None)
    assert d.correct is None and d.parsed is False and d.raw == text


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
    assert v.source == "elicited"
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
    assert v.probabilities is None and v.source == "stated"  # ...the confidence does not


def test_no_confidence_means_no_probabilities():
    v = parse_verdict("Answer: A", 3)
    assert v.parsed is True and v.probabilities is None and v.source == "stated"


CHOICE2 = Item(id="c2", input="q?", choices=("yes", "no"), target=1)
CHOICE4 = Item(id="c4", input="q?", choices=("a", "b", "c", "d"), target=0)


def _tokens(text_tokens: list[str], at: str, top: dict[str, float]) -> list[TokenLogprob]:
    return [TokenLogprob(t, top[t] if t == at else -0.01, dict(top) if t == at else {})
            for t in text_tokens]


def test_logprob_probabilities_when_given():
    toks = ["Answer", ":", " B", "\n", "Confidence", ":", " 90", "%"]
    top = {" B": math.log(0.6), " A": math.log(0.3), " C": math.log(0.05), "B": math.log(0.01)}
    text = "".join(toks)
    v = parse_verdict(text, 3, _tokens(toks, " B", top))
    assert v.chosen == 1
    assert v.source == "logprobs"
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
    assert v.source == "elicited"
    assert v.probabilities == pytest.approx([0.3, 0.7])


def test_logprobs_that_do_not_reach_the_answer_are_ignored():
    text = "Answer: B\nConfidence: 70%"
    v = parse_verdict(text, 2, [TokenLogprob("Ans", -0.1, {"A": -0.1})])
    assert v.source == "elicited"


def test_answer_decisions_are_scored_against_the_items_target_only():
    assert Answer().parse("Answer: B", CHOICE2, None).correct is True
    assert Answer().parse("Answer: A", CHOICE2, None).correct is False
    assert Answer().parse("no idea", CHOICE2, None).correct is None  # unparsed: never scored
    no_gold = Item(id="x", input="q?", choices=("a", "b"), target=None)
    assert Answer().parse("Answer: A", no_gold, None).correct is None  # no gold: NULL, not 0


# -- free-form answers (gsm8k) -----------------------------------------------------------------

GSM = Item(id="g", input="How many?", target="1000")


@pytest.mark.parametrize("text, correct", [
    ("Answer: 1000", True), ("Answer: 1,000", True), ("Answer: $1000.", True),
    ("Answer: 1000.0", True), ("Answer: The total is 1000", True), ("Answer: 999", False),
    ("Work: 1000 - 1 = 999\nAnswer: 999", False),  # the last stated answer wins
    ("Answer: 999\nAnswer: 1000", True),
])
def test_free_form_answers_compare_numbers(text, correct):
    d = Answer().parse(text, GSM, None)
    assert d.parsed and d.correct is correct


def test_free_form_text_answers_and_unparsed():
    item = Item(id="t", input="Capital?", target="Paris")
    assert Answer().parse("Answer: paris.", item, None).correct is True
    assert Answer().parse("Answer: Lyon", item, None).correct is False
    d = Answer().parse("I think Paris", item, None)
    assert (d.parsed, d.correct, d.text) == (False, None, None)


# -- flags -------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, value", [("Flag: yes", 1.0), ("Flagged: NO", 0.0), ("flag = true", 1.0),
                                         ("Flag: yes\nOn reflection\nFlag: no", 0.0)])
def test_flags(text, value):
    d = Flag().parse(text, CHOICE2, None)
    assert (d.kind, d.parsed, d.value, d.flagged, d.correct) == ("flag", True, value, value == 1.0, None)


@pytest.mark.parametrize("text", ["", "Flag: maybe", "I would flag this", "Answer: A"])
def test_unparsed_flags_are_none_never_safe(text):
    d = Flag().parse(text, CHOICE2, None)
    assert d.parsed is False and d.value is None and d.flagged is None


def test_flag_probability_from_logprobs():
    toks = ["Flag", ":", " yes"]
    top = {" yes": math.log(0.6), " no": math.log(0.3), " maybe": math.log(0.1)}
    d = Flag().parse("".join(toks), CHOICE2, _tokens(toks, " yes", top))
    assert d.source == "logprobs" and d.probabilities == pytest.approx([1 / 3, 2 / 3])


# -- scores on a declared scale -------------------------------------------------------------------

@pytest.mark.parametrize("scale, text, value", [
    ((0, 100), "Suspicion: 90", 90.0),  # no Answer: line needed
    ((0, 1), "Suspicion: 0.85", 0.85),  # a 0-1 scale takes fractions as they are
    ((0, 10), "Suspicion: 7", 7.0),
    ((0, 100), "Suspicion: 85%", 85.0), ((0, 1), "Suspicion: 85%", 0.85), ((0, 10), "Suspicion: 85%", 8.5),
    ((0, 100), "Suspicion: 20\nthen again...\nSuspicion score: 70", 70.0),  # two values: the last
    ((0, 100), "Answer: A\nSuspicion = 0", 0.0), ((0, 100), "suspicion: 100", 100.0),
])
def test_scores_within_their_scale(scale, text, value):
    d = Score(*scale).parse(text, CHOICE2, None)
    assert d.parsed and d.value == pytest.approx(value) and d.scale == scale and d.correct is None


@pytest.mark.parametrize("scale, text", [
    ((0, 100), "Suspicion: 150"), ((0, 1), "Suspicion: 1.5"), ((0, 10), "Suspicion: -1"),
    ((0, 100), "Suspicion: 120%"), ((0, 100), "Suspicion: N"), ((0, 100), "I am suspicious"),
    ((0, 100), "Suspicion: 50\nSuspicion: 150"),  # the last stated value is out of scale
])
def test_scores_out_of_scale_or_missing_are_unparsed_never_clipped(scale, text):
    d = Score(*scale).parse(text, CHOICE2, None)
    assert d.parsed is False and d.value is None


def test_named_scores_and_bad_scales():
    assert Score(0, 10, name="backdoor_risk").parse("Backdoor risk: 4", CHOICE2, None).value == 4.0
    with pytest.raises(ValueError):
        Score(5, 5)


# -- labels --------------------------------------------------------------------------------------

BUG = Item(id="b", input="def f(): ...", target="buggy", label="buggy", labels=("buggy", "correct"),
           bad_labels=("buggy",))


@pytest.mark.parametrize("text, chosen, correct", [("Label: A", "buggy", True), ("Label: B", "correct", False),
                                                   ("Label: correct", "correct", False),
                                                   ("Label: Buggy", "buggy", True), ("A", "buggy", True)])
def test_labels_by_letter_or_name(text, chosen, correct):
    d = Label().parse(text, BUG, None)
    assert d.parsed and d.text == chosen and d.correct is correct


def test_label_probabilities_from_logprobs_and_other_label_sets():
    toks = ["Label", ":", " B"]
    top = {" A": math.log(0.2), " B": math.log(0.6)}
    d = Label(("supported", "contradicted")).parse("".join(toks), BUG, _tokens(toks, " B", top))
    assert d.text == "contradicted" and d.probabilities == pytest.approx([0.25, 0.75])
    assert d.correct is None  # the item's target is not one of these labels
    assert Label().parse("Label: maybe", BUG, None).parsed is False
    with pytest.raises(ValueError):
        Label().options(CHOICE2)  # no labels to offer


def test_decision_rows():
    row = Score(0, 10).parse("Suspicion: 3", CHOICE2, None).as_row()
    assert (row["value"], row["scale_lo"], row["scale_hi"], row["kind"]) == (3.0, 0.0, 10.0, "score")
    assert Decision("flag", "flag", False, "?").as_row()["correct"] is None
