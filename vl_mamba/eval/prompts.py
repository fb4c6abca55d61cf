"""Prompt suffixes and prompt layout for the benchmarks, as LLaVA-1.5 (and so VL-Mamba) evaluates them.

Short-answer benchmarks (VQAv2, GQA, TextVQA, POPE, MME, vqa-jsonl) end the prompt with
``SHORT_ANSWER_SUFFIX``; multiple-choice ones (ScienceQA, MMBench) list the options as "A. text" lines and end
with ``OPTION_LETTER_SUFFIX``; MM-Vet takes the bare question. The suffix goes on its own line.
"""

from __future__ import annotations

from collections.abc import Sequence

from vl_mamba.eval.answer_parsing import option_letters

SHORT_ANSWER_SUFFIX = "Answer the question using a single word or phrase."
OPTION_LETTER_SUFFIX = "Answer with the option's letter from the given choices directly."
KNOWN_SUFFIXES: tuple[str, ...] = (SHORT_ANSWER_SUFFIX, OPTION_LETTER_SUFFIX)


def build_prompt(body: str, suffix: str) -> str:
    """``body`` then ``suffix`` on its own line; an empty suffix leaves the body alone."""
    body = body.strip()
    return f"{body}\n{suffix}" if suffix else body


def strip_known_suffix(text: str) -> str:
    """Remove a trailing ``KNOWN_SUFFIXES`` line, as found in LLaVA's eval jsonl files, so a prompt can be rebuilt
    with the configured suffix: "What is it?\\nAnswer the question using a single word or phrase." ->
    "What is it?"."""
    text = text.strip()
    for suffix in KNOWN_SUFFIXES:
        if text.endswith(suffix):
            return text[: -len(suffix)].strip()
    return text


def format_options(options: Sequence[str]) -> str:
    """Options as LLaVA lists them, one per line: ["red", "blue"] -> "A. red\\nB. blue"."""
    return "\n".join(f"{letter}. {option}" for letter, option in zip(option_letters(len(options)), options))


def multiple_choice_body(question: str, options: Sequence[str], hint: str | None = None) -> str:
    """Hint (when there is one), question, then the lettered options, each on its own line."""
    parts = [hint.strip()] if hint and hint.strip() else []
    parts += [question.strip(), format_options(options)]
    return "\n".join(parts)
