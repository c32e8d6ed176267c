"""Multiple-choice answer extraction against the cases of VLMEvalKit's matcher (the V*/HR-Bench protocol)."""

from __future__ import annotations

import pytest

from agent_grpo.rewards import COMPARATORS
from agent_grpo.rewards.choice import choice_letter, extract_choice, options_of

# An HR-Bench row's options (A-D), as in the TSV's A, B, C, D columns.
HR = {"A": "the red car", "B": "the blue truck", "C": "a green bicycle", "D": "no vehicle"}


@pytest.mark.parametrize(
    ("answer", "letter"),
    [
        ("(B)", "B"),  # letter in parentheses
        ("B", "B"),  # bare letter
        ("B.", "B"),
        ("b", "B"),
        ("**C**", "C"),
        ("Answer: B", "B"),
        ("The answer is (D).", "D"),
        ("the answer is c.", "C"),
        ("B. the blue truck", "B"),  # labelled option
        ("(A) the red car", "A"),
        ("the blue truck", "B"),  # the option's text, after normalisation
        ("The Blue Truck!", "B"),
        ("It is the blue truck, parked on the left.", "B"),  # VLMEvalKit's can_infer_text
        ("I think C is right", "C"),  # VLMEvalKit's can_infer_option: one letter alone
        ("<think>A or B?</think> <answer>B</answer>", "B"),  # answer tags (an API model's raw reply)
        ("<answer>(C) a green bicycle</answer>", "C"),
        ("so \\boxed{D}", "D"),
        ("A red car stands there, so the answer is A", "A"),  # explicit statement wins over the article
        ("A red car", "A"),  # the article, then the text rule finds option A's text
    ],
)
def test_extracts_the_protocols_cases(answer, letter):
    assert extract_choice(answer, HR) == letter


@pytest.mark.parametrize(
    "answer",
    [
        "A or B",  # two letters: ambiguous, wrong (VLMEvalKit returns False)
        "(A) and (B)",  # a labelled start with another letter after it stays ambiguous
        "The answer is B, or maybe C",
        "A car, so B",  # VLMEvalKit refuses a lone letter next to the article "A"
        "the red car or the blue truck",  # two option texts
        "E",  # not an option
        "a vehicle is not visible",  # "no vehicle" is not inside "not visible": whole words only
        "",
        "   ",
        None,
        "I cannot tell from this image.",
        "the blue truck " * 20,  # a long reply mentioning an option in passing: VLMEvalKit's length guard
    ],
)
def test_ambiguous_or_unreadable_answers_pick_nothing(answer):
    assert extract_choice(answer, HR) is None


def test_without_options_any_capital_letter_counts_and_texts_do_not():
    assert extract_choice("(c)") == "C"
    assert extract_choice("the blue truck") is None
    assert extract_choice("I think B") is None  # "I" is a letter too when every letter A-Z is an option


def test_options_in_order_or_labelled():
    assert options_of(["red", "B. blue"]) == {"A": "red", "B": "blue"}
    assert options_of({"(a)": "red"}) == {"A": "red"}
    with pytest.raises(ValueError, match="choices must be"):
        options_of("AB")


def test_choice_letter_scores_against_the_reference_and_checks_it():
    assert choice_letter("<answer>the blue truck</answer>", "(B)", choices=HR) == 1.0
    assert choice_letter("A or B", "B", choices=HR) == 0.0
    with pytest.raises(ValueError, match="option letter"):
        choice_letter("B", "F", choices=HR)


def test_the_choice_reward_uses_the_same_extractor():
    assert COMPARATORS["choice"] is choice_letter
