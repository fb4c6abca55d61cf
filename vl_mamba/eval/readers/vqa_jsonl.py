"""The project's own VQA layout, ``vqa-jsonl``: a folder with ``questions.jsonl``, ``answers.jsonl`` and images.

``questions.jsonl`` has one JSON object per line: ``question_id``, ``image`` (a path relative to the folder,
usually under ``images/``), ``text`` (the question) and optionally ``category``. ``answers.jsonl`` has
``question_id``, ``answers`` (a list of reference answers; a single string is taken as a list of one) and
optionally ``category``. It is scored with ``VQAAccuracy`` (see ``vqa_score`` for fewer than 10 answers),
broken down by category: a question's category is the one in ``questions.jsonl``, else the one in
``answers.jsonl``, else none.
"""

from __future__ import annotations

from pathlib import Path

from vl_mamba.eval.prompts import SHORT_ANSWER_SUFFIX, build_prompt, strip_known_suffix
from vl_mamba.eval.readers._io import PathLike, locate, read_jsonl
from vl_mamba.eval.records import EvalSample


def read_vqa_jsonl(
    root: PathLike,
    prompt_suffix: str = SHORT_ANSWER_SUFFIX,
    questions_file: PathLike = "questions.jsonl",
    answers_file: PathLike | None = "answers.jsonl",
) -> list[EvalSample]:
    """Read a vqa-jsonl folder.

    Args:
        root: the folder.
        prompt_suffix: appended to each question on its own line.
        questions_file: relative to ``root``.
        answers_file: relative to ``root``; None to read questions only (the samples then have no answers).

    Raises:
        KeyError: a question has no line in the answers file.
    """
    root = Path(root)
    questions = read_jsonl(locate(root, questions_file, [], "vqa-jsonl questions"))
    answers = {}
    if answers_file is not None:
        answers = {row["question_id"]: row for row in read_jsonl(locate(root, answers_file, [], "vqa-jsonl answers"))}
    samples = []
    for row in questions:
        question_id, question = row["question_id"], strip_known_suffix(row["text"])
        sample = EvalSample(
            question_id=question_id,
            prompt=build_prompt(question, prompt_suffix),
            image=root / row["image"] if row.get("image") else None,
            question=question,
            category=row.get("category"),
        )
        if answers_file is not None:
            if question_id not in answers:
                raise KeyError(f"vqa-jsonl question {question_id!r} has no line in {root / answers_file}")
            refs = answers[question_id]["answers"]
            sample.answers = [refs] if isinstance(refs, str) else list(refs)
            sample.category = sample.category or answers[question_id].get("category")
        samples.append(sample)
    return samples
