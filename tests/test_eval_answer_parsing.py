"""Yes/no parsing (POPE's and MME's rules) and option-letter parsing, one worked example per rule."""

import pytest

from vl_mamba.eval.answer_parsing import option_letters, parse_option_letter, parse_yes_no_mme, parse_yes_no_pope


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Yes", "yes"),
        ("No", "no"),
        ("no", "no"),
        ("No, there is no dog.", "no"),
        ("There is not a dog in the image.", "no"),  # "not" anywhere in the first sentence
        ("Not really", "no"),
        ("No!", "no"),
        ("Yes. There is no other animal.", "yes"),  # only the first sentence counts
        ("Yes, there is a dog", "yes"),
        ("nothing", "yes"),  # whole words only
        ("", "yes"),  # anything else is "yes"
        ("I cannot tell", "yes"),
    ],
)
def test_pope_yes_no(text, expected):
    assert parse_yes_no_pope(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("yes", "yes"),
        ("Yes", "yes"),  # lower-cased first
        ("NO", "no"),
        ("Yes, it is.", "yes"),  # "yes" in the first 4 characters
        ("No, it is not.", "no"),
        ("nope", "no"),
        ("Not", "no"),
        (" no", "no"),  # not stripped: " no" still has "no" in its first 4 characters
        ("The answer is yes", None),  # neither in the first 4 characters: unparsable
        ("   yes", None),
        ("", None),
    ],
)
def test_mme_yes_no(text, expected):
    assert parse_yes_no_mme(text) == expected


def test_option_letters():
    assert option_letters(4) == "ABCD"
    with pytest.raises(ValueError):
        option_letters(0)


@pytest.mark.parametrize(
    "text, expected",
    [
        # rule 1: the whole answer is a letter
        ("B", "B"),
        ("B.", "B"),
        (" (C) ", "C"),
        ("[D]", "D"),
        ("A)", "A"),
        ("C:", "C"),
        # rule 2: a leading letter with a separator
        ("B. Louisiana", "B"),
        ("(B) Louisiana", "B"),
        ("B) Louisiana", "B"),
        ("C: red", "C"),
        # rule 3: "answer is X" / "answer: X"
        ("The answer is B.", "B"),
        ("Answer: (C)", "C"),
        ("I think the correct answer is D", "D"),
        ("ANSWER IS A", "A"),
        # no rule
        ("the answer is blue", None),  # "b" of "blue" is not an upper-case letter on its own
        ("A dog", None),  # an article, not an option
        ("A.M. radio", None),
        ("b", None),  # letters are upper-case
        ("", None),
        # letters beyond the options are unparsable
        ("E", None),
        ("The answer is E.", None),
    ],
)
def test_option_letter_rules(text, expected):
    assert parse_option_letter(text, num_options=4) == expected


def test_option_letter_from_option_text():
    options = ["West Virginia", "Louisiana", "Arizona"]
    assert parse_option_letter("louisiana", options=options) == "B"  # rule 4: the text of exactly one option
    assert parse_option_letter("Arizona.", options=options) == "C"
    assert parse_option_letter("Texas", options=options) is None
    assert parse_option_letter("D", options=options) is None  # 3 options: only A-C
    assert parse_option_letter("red", options=["red", "Red"]) is None  # ambiguous
    assert parse_option_letter("louisiana", num_options=3) is None  # no option texts, no rule 4
