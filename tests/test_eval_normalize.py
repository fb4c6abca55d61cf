"""The VQA answer normalisation, step by step, and GQA's exact-match normalisation."""

import pytest

from vl_mamba.eval.normalize import (
    CONTRACTIONS,
    NUMBER_WORDS,
    clean_whitespace,
    normalize_exact_match,
    normalize_vqa_answer,
    normalize_words,
    strip_punctuation,
)


def test_whitespace_newlines_and_tabs_become_spaces_and_ends_are_stripped():
    assert clean_whitespace("  red\nand\tblue \n") == "red and blue"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("black/white", "black white"),  # a mark touching no space becomes a space
        ("red,blue", "red blue"),
        ("yes , sir", "yes  sir"),  # a mark touching a space is deleted
        ("(yes)", " yes "),  # brackets touch no space here: spaces
        ("yes (sir)", "yes sir "),  # " (" touches a space: "(" deleted; ")" touches none: space
        ('"quoted"', " quoted "),
        ("a-b_c", "a b c"),
        ("why?!", "why  "),
        ("semi;colon", "semi colon"),
    ],
)
def test_punctuation_marks_are_deleted_or_become_spaces(text, expected):
    assert strip_punctuation(text) == expected


def test_comma_between_digits_deletes_every_mark():
    assert strip_punctuation("1,000") == "1000"
    # once the text has digit,digit, every mark is deleted rather than spaced, even away from the number
    assert strip_punctuation("1,000 black/white") == "1000 blackwhite"
    assert strip_punctuation("1, 2") == "1 2"  # no digit-comma-digit; the comma touches a space: deleted


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2.5", "2.5"),  # decimal point kept
        (".5", ".5"),
        ("yes.", "yes"),
        ("a.m.", "am"),
        ("5.", "5"),  # the official rule, in effect, removes a period after a digit too
        ("3:00", "3:00"),  # colons are not in the mark list
        ("don't", "don't"),  # nor apostrophes
    ],
)
def test_periods_are_removed_unless_a_digit_follows(text, expected):
    assert strip_punctuation(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("RED Car", "red car"),  # lower-cased
        ("two", "2"),
        ("Ten", "10"),
        ("zero", "0"),
        ("none", "0"),  # the manual map sends "none" to "0"
        ("eleven", "eleven"),  # beyond the map
        ("a dog", "dog"),  # articles dropped
        ("the an a", ""),
        ("an apple and the pear", "apple and pear"),
        ("dont", "don't"),  # contractions get their apostrophe
        ("isnt it", "isn't it"),
        ("youre", "you're"),
        ("whats that", "what's that"),
        ("yall'll", "y'all'll"),
        ("somebody'd", "somebodyd"),  # the official table's odd entry
        ("im", "im"),  # the official "Im" entry never matches lower-cased words
        ("  many   spaces ", "many spaces"),
    ],
)
def test_words_numbers_articles_contractions(text, expected):
    assert normalize_words(text) == expected


def test_tables():
    assert NUMBER_WORDS == {str(w): str(d) for w, d in NUMBER_WORDS.items()}
    assert [NUMBER_WORDS[w] for w in "zero one two three four five six seven eight nine ten none".split()] == [
        "0",
        "1",
        "2",
        "3",
        "4",
        "5",
        "6",
        "7",
        "8",
        "9",
        "10",
        "0",
    ]
    assert CONTRACTIONS["cant"] == "can't" and CONTRACTIONS["wouldnt've"] == "wouldn't've"
    assert all(key == key.lower() for key in CONTRACTIONS)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The Two dogs, aren't they?", "2 dogs aren't they"),
        ("  Yes.\n", "yes"),
        ("1,000 people", "1000 people"),
        ("A cat's toy", "cat's toy"),
        ("black and white.", "black and white"),
        ("Two.", "2"),
    ],
)
def test_full_vqa_normalisation(text, expected):
    assert normalize_vqa_answer(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [(" Yes. ", "yes"), ("Left", "left"), ("a.m.", "a.m"), ("3.5", "3.5"), ("the left", "the left")],
)
def test_exact_match_normalisation(text, expected):
    assert normalize_exact_match(text) == expected
