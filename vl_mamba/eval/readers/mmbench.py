"""MMBench reader: the dev (or test) TSV with base64 images, options A-D, and circular rotations.

``root`` is the TSV itself or a folder holding one of ``MMBENCH_TSV_NAMES``; columns ``index``, ``question``,
``hint``, ``A``..``D`` (missing options empty or "nan"), ``answer`` (dev only), ``category``, ``l2-category``,
``image`` (base64, or for a row that repeats an image, the index of the row that holds it). MMBench numbers the
rotated copies of question ``i`` as ``i + k * 1_000_000``. When the file holds such copies they are read as
they are; when it holds none and ``rotate`` is on, every question gets its rotations here: rotation ``k``
shifts the options left by ``k`` (as LLaVA's ``--all-rounds`` does), keeps the letters in place, moves the
answer letter with its option, and is numbered ``index + k * 1_000_000``. Rotations of one question are
adjacent in the output.

The prompt body is the hint (when there is one), the question and the options as "A. text" lines. A sample's
id is its index, ``answers`` the right letter (empty without an answer column), ``category`` the category, and
``metadata`` holds ``index``, ``group`` (the original index), ``rotation``, ``options``, ``hint`` and
``l2_category``.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from vl_mamba.eval.answer_parsing import option_letters
from vl_mamba.eval.prompts import OPTION_LETTER_SUFFIX, build_prompt, multiple_choice_body
from vl_mamba.eval.readers._io import PathLike, locate
from vl_mamba.eval.records import Base64Image, EvalSample

MMBENCH_TSV_NAMES = ("mmbench_dev_20230712.tsv", "MMBench_DEV_EN.tsv", "mmbench_dev_en_20231003.tsv")
ROTATION_OFFSET = 1_000_000


def _missing(value: str | None) -> bool:
    return value is None or value.strip() == "" or value.strip().lower() in ("nan", "none")


def read_tsv(path: Path) -> list[dict[str, str]]:
    """Rows of a tab-separated file with a header line (quoted fields allowed; base64 fields are long)."""
    csv.field_size_limit(2**31 - 1)
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def _rotations(index: int, options: list[str], answer: str | None, rotate: bool) -> list[dict[str, Any]]:
    """(index, rotation, options, answer letter) of each rotation of one question."""
    letters = option_letters(len(options))
    out = []
    for k in range(len(options) if rotate else 1):
        shifted = options[k:] + options[:k]
        new_answer = None if answer is None else letters[(letters.index(answer) - k) % len(options)]
        out.append({"index": index + k * ROTATION_OFFSET, "rotation": k, "options": shifted, "answer": new_answer})
    return out


def read_mmbench(
    root: PathLike,
    prompt_suffix: str = OPTION_LETTER_SUFFIX,
    tsv_file: PathLike | None = None,
    rotate: bool = True,
) -> list[EvalSample]:
    """Read MMBench.

    Args:
        root: the TSV file, or the folder holding it.
        prompt_suffix: appended to each prompt body on its own line.
        tsv_file: the TSV, relative to ``root``; found among ``MMBENCH_TSV_NAMES`` if None.
        rotate: make the circular rotations when the file has none.
    """
    root = Path(root)
    path = root if root.is_file() else locate(root, tsv_file, MMBENCH_TSV_NAMES, "MMBench TSV")
    rows = read_tsv(path)
    images = {int(row["index"]): row["image"] for row in rows if len(row.get("image") or "") > 64}
    file_has_rotations = any(int(row["index"]) >= ROTATION_OFFSET for row in rows)
    entries = []
    for row in rows:
        index = int(row["index"])
        options = []
        for letter in "ABCDEFGHI":
            if _missing(row.get(letter)):
                break
            options.append(row[letter].strip())
        answer = None if _missing(row.get("answer")) else row["answer"].strip().upper()
        image = row.get("image") or ""
        image = images[int(image)] if len(image) <= 64 and image.strip().isdigit() else image
        for rotation in _rotations(index, options, answer, rotate and not file_has_rotations):
            entries.append((row, image, rotation))
    entries.sort(key=lambda e: (e[2]["index"] % ROTATION_OFFSET, e[2]["index"]))
    samples = []
    for row, image, rotation in entries:
        hint = None if _missing(row.get("hint")) else row["hint"]
        index = rotation["index"]
        samples.append(
            EvalSample(
                question_id=index,
                prompt=build_prompt(multiple_choice_body(row["question"], rotation["options"], hint), prompt_suffix),
                image=Base64Image(image) if image else None,
                question=row["question"],
                answers=[rotation["answer"]] if rotation["answer"] else [],
                category=None if _missing(row.get("category")) else row["category"],
                metadata={
                    "index": index,
                    "group": index % ROTATION_OFFSET,
                    "rotation": rotation["rotation"] if not file_has_rotations else index // ROTATION_OFFSET,
                    "options": rotation["options"],
                    "hint": hint,
                    "l2_category": row.get("l2-category"),
                },
            )
        )
    return samples
