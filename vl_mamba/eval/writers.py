"""Answer files for the benchmarks scored elsewhere, in the formats their servers and graders take, and a
plain predictions file for any benchmark.

- VQAv2 test-dev (EvalAI): a JSON list ``[{"question_id": int, "answer": str}, ...]``. EvalAI expects an
  answer for every test2015 question, so the questions outside test-dev are filled with "" (as LLaVA does)
  when their ids are given.
- MMBench (OpenCompass): a spreadsheet with ``index``, ``question``, the options ``A``-``D``, ``prediction``
  (the model's raw answer) and, for dev, ``answer``: one row per question and rotation. The server takes
  .xlsx, which ``vl_mamba.eval.xlsx`` writes without extra packages; a .tsv path gives the same table as TSV.
- MM-Vet (GPT grader): a JSON object ``{"v1_0": answer, ...}`` keyed by question id.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

from vl_mamba.eval.answer_parsing import option_letters
from vl_mamba.eval.normalize import normalize_vqa_answer
from vl_mamba.eval.records import EvalSample
from vl_mamba.eval.xlsx import write_xlsx


def _check_unique(question_ids: Sequence[int | str], predictions: Sequence[str]) -> None:
    if len(question_ids) != len(predictions):
        raise ValueError(f"{len(question_ids)} question ids but {len(predictions)} predictions")
    if len(set(question_ids)) != len(question_ids):
        raise ValueError("question ids repeat; give one prediction per question")


def _write_json(path: str | Path, payload: object) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(payload, f, ensure_ascii=False)
    return path


def write_vqav2_submission(
    path: str | Path,
    question_ids: Sequence[int],
    predictions: Sequence[str],
    all_question_ids: Sequence[int] | None = None,
    normalize: bool = True,
) -> Path:
    """Write the EvalAI VQAv2 result file.

    Args:
        path: the .json file to write.
        question_ids: the answered questions.
        predictions: the model's answers, in the same order.
        all_question_ids: every question the server expects (test2015); those not answered get "", in this
            order. None writes the answered questions only.
        normalize: apply ``normalize_vqa_answer`` to each answer first (as LLaVA's converter does).

    Raises:
        ValueError: repeated ids, or ids that ``all_question_ids`` does not hold.
    """
    _check_unique(question_ids, predictions)
    answers = {
        int(qid): normalize_vqa_answer(pred) if normalize else pred.strip()
        for qid, pred in zip(question_ids, predictions)
    }
    order = list(answers) if all_question_ids is None else [int(qid) for qid in all_question_ids]
    stray = set(answers) - set(order)
    if stray:
        raise ValueError(f"{len(stray)} answered questions are not in all_question_ids, e.g. {sorted(stray)[:5]}")
    return _write_json(path, [{"question_id": qid, "answer": answers.get(qid, "")} for qid in order])


def write_mmvet_answers(path: str | Path, question_ids: Sequence[str], predictions: Sequence[str]) -> Path:
    """Write the MM-Vet grader's input: ``{"v1_0": "answer", ...}``.

    Args:
        path: the .json file to write.
        question_ids: the MM-Vet ids ("v1_<n>").
        predictions: the model's answers, in the same order.
    """
    _check_unique(question_ids, predictions)
    return _write_json(path, {str(qid): pred.strip() for qid, pred in zip(question_ids, predictions)})


def mmbench_submission_table(
    samples: Sequence[EvalSample], predictions: Sequence[str]
) -> tuple[list[str], list[list[str | int | None]]]:
    """The header and rows of the MMBench submission (see the module docstring) for samples from ``read_mmbench``."""
    _check_unique([s.question_id for s in samples], predictions)
    num_options = max([4, *(len(s.metadata["options"]) for s in samples)])
    letters = list(option_letters(num_options))
    with_answers = any(s.answers for s in samples)
    header = ["index", "question", *letters, "prediction", *(["answer"] if with_answers else [])]
    rows: list[list[str | int | None]] = []
    for sample, prediction in zip(samples, predictions):
        options = list(sample.metadata["options"]) + [None] * (num_options - len(sample.metadata["options"]))
        row = [int(sample.question_id), sample.question, *options, prediction.strip()]
        if with_answers:
            row.append(sample.answers[0] if sample.answers else None)
        rows.append(row)
    return header, rows


def write_mmbench_submission(path: str | Path, samples: Sequence[EvalSample], predictions: Sequence[str]) -> Path:
    """Write the MMBench submission as .xlsx (what the server takes) or .tsv, by the path's suffix.

    Args:
        path: a .xlsx or .tsv file.
        samples: the samples from ``read_mmbench`` that were answered.
        predictions: the model's answers, in the same order.
    """
    path = Path(path)
    header, rows = mmbench_submission_table(samples, predictions)
    if path.suffix == ".xlsx":
        return write_xlsx(path, header, rows)
    if path.suffix != ".tsv":
        raise ValueError(f"MMBench submission must be .xlsx or .tsv, got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(header)
        writer.writerows([["" if v is None else v for v in row] for row in rows])
    return path


def write_predictions_jsonl(path: str | Path, samples: Sequence[EvalSample], predictions: Sequence[str]) -> Path:
    """One JSON line per question: ``question_id``, ``prompt``, ``prediction``, ``answers``, ``category``.

    Args:
        path: the .jsonl file to write.
        samples: the answered samples.
        predictions: the model's answers, in the same order.
    """
    if len(samples) != len(predictions):
        raise ValueError(f"{len(samples)} samples but {len(predictions)} predictions")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for sample, prediction in zip(samples, predictions):
            record = {
                "question_id": sample.question_id,
                "prompt": sample.prompt,
                "prediction": prediction,
                "answers": sample.answers,
                "category": sample.category,
            }
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path
