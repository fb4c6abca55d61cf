"""Turning a model's free-text answer into the label a benchmark scores: yes / no for POPE and MME (each with
the rule its standard evaluation uses), and an option letter for ScienceQA and MMBench.

An answer that cannot be parsed is not guessed: the MME parser and the letter parser return None, which the
metrics count as wrong. (LLaVA's ScienceQA script picks a random option for an unparsable answer; this code
does not, so its scores are deterministic and never higher for a model that does not follow the format.)
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from typing import Literal

YesNo = Literal["yes", "no"]

_WORDS = re.compile(r"[a-z]+")


def parse_yes_no_pope(text: str) -> YesNo:
    """POPE's rule (LLaVA's ``eval_pope.py``): "no" when the first sentence has the word "no" or "not".

    Only the text before the first period counts; any other answer, including an empty one, is "yes". LLaVA
    splits on spaces after deleting commas and matches "No", "no" and "not"; here the words are lower-cased
    and split on anything that is not a letter, so "Not really" and "No!" read as "no" too.

    Examples: "No, there is no dog." -> "no"; "There is not a dog" -> "no"; "Yes" -> "yes";
    "Yes. No other animals." -> "yes" (second sentence ignored); "nothing" -> "yes" (not a whole word).
    """
    first_sentence = text.split(".", 1)[0]
    words = set(_WORDS.findall(first_sentence.lower()))
    return "no" if {"no", "not"} & words else "yes"


def parse_yes_no_mme(text: str) -> YesNo | None:
    """MME's rule (its ``calculation.py``): lower-case; "yes" or "no" exactly, else look at the first 4 characters.

    If the first 4 characters of the lower-cased answer contain "yes" it is "yes", else if they contain "no" it
    is "no", else the answer is unparsable (None, always wrong). The answer is not stripped first.

    Examples: "Yes" -> "yes"; "No, it is not." -> "no"; "yes." -> "yes"; "The answer is yes" -> None;
    " no" -> "no"; "Not" -> "no"; "nope" -> "no".
    """
    answer = text.lower()
    if answer in ("yes", "no"):
        return answer  # type: ignore[return-value]
    head = answer[:4]
    if "yes" in head:
        return "yes"
    if "no" in head:
        return "no"
    return None


def option_letters(num_options: int) -> str:
    """The letters of the first ``num_options`` options: 4 -> "ABCD"."""
    if not 1 <= num_options <= 26:
        raise ValueError(f"num_options must be in 1..26, got {num_options}")
    return string.ascii_uppercase[:num_options]


_LONE_LETTER = re.compile(r"^[(\[]?\s*([A-Z])\s*[)\]]?\s*[.:,]?$")
_LEADING_LETTER = re.compile(r"^[(\[]?([A-Z])(?:[)\]][.:]?|[.:])(?:\s|$)")
_ANSWER_IS = re.compile(r"\b(?i:answer(?:\s+is)?)\s*:?\s*[(\[]?([A-Z])(?![A-Za-z])")


def parse_option_letter(text: str, num_options: int = 26, options: Sequence[str] | None = None) -> str | None:
    """Read the option letter out of a multiple-choice answer, or None when there is none.

    Rules, tried in order on the stripped text; letters are upper-case and must be among the first
    ``num_options`` letters, else the answer is unparsable:

    1. the whole answer is one letter, optionally in brackets and followed by ".", ":" or ",":
       "B", "B.", "(B)", "[B]", "B)".
    2. the answer starts with a letter and a separator, then a space or the end: "B. Louisiana", "(B) Louisiana",
       "B) Louisiana", "B: Louisiana".
    3. "answer is X" or "answer: X" anywhere ("answer is" in any case, X an upper-case letter not followed by
       another letter, optionally in brackets); the first one counts: "The answer is B.", "Answer: (C)",
       "I think the correct answer is D". "The answer is blue" does not match.
    4. when ``options`` (the option texts in letter order) are given, an answer equal to exactly one option
       text (ignoring case and a final period) gives that option's letter: "louisiana" -> "B".

    An answer such as "A dog" matches none of these (an article is not a letter) and gives None.

    Args:
        text: the model's answer.
        num_options: how many options the question has.
        options: the option texts, in letter order; enables rule 4.
    """
    valid = option_letters(num_options if options is None else len(options))
    answer = text.strip()
    for pattern in (_LONE_LETTER, _LEADING_LETTER):
        match = pattern.match(answer)
        if match:
            return match.group(1) if match.group(1) in valid else None
    match = _ANSWER_IS.search(answer)
    if match:
        return match.group(1) if match.group(1) in valid else None
    if options is not None:
        wanted = answer.lower().rstrip(".").strip()
        hits = [letter for letter, option in zip(valid, options) if option.strip().lower().rstrip(".") == wanted]
        if len(hits) == 1:
            return hits[0]
    return None
