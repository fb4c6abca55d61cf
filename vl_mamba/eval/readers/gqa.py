"""GQA testdev-balanced reader, from the official ``testdev_balanced_questions.json`` (which holds the answers).

Layouts read (``root`` is the GQA folder): the questions file in ``root``, ``data/`` (LLaVA's eval layout, next
to ``llava_gqa_testdev_balanced.jsonl``, which lists the same questions and is not needed) or ``questions/``;
images ``<imageId>.jpg`` in ``images/`` or ``data/images/``.

Each sample's ``answers`` is the one gold answer, its ``category`` the structural type (verify, query, choose,
logical, compare), and ``metadata`` holds ``image_id``, ``full_answer`` and the full ``types`` entry.
"""

from __future__ import annotations

from pathlib import Path

from vl_mamba.eval.prompts import SHORT_ANSWER_SUFFIX, build_prompt
from vl_mamba.eval.readers._io import PathLike, locate, read_json
from vl_mamba.eval.records import EvalSample

GQA_QUESTIONS_FILE = "testdev_balanced_questions.json"


def read_gqa(
    root: PathLike,
    prompt_suffix: str = SHORT_ANSWER_SUFFIX,
    questions_file: PathLike | None = None,
    image_dir: PathLike | None = None,
) -> list[EvalSample]:
    """Read GQA testdev-balanced.

    Args:
        root: the GQA folder.
        prompt_suffix: appended to each question on its own line.
        questions_file: the questions JSON, relative to ``root``; found if None.
        image_dir: the image folder, relative to ``root``; found if None.
    """
    root = Path(root)
    candidates = [GQA_QUESTIONS_FILE, f"data/{GQA_QUESTIONS_FILE}", f"questions/{GQA_QUESTIONS_FILE}"]
    questions = read_json(locate(root, questions_file, candidates, "GQA testdev-balanced questions"))
    images = locate(root, image_dir, ["images", "data/images"], "GQA image folder")
    samples = []
    for question_id, entry in questions.items():
        types = entry.get("types") or {}
        samples.append(
            EvalSample(
                question_id=str(question_id),
                prompt=build_prompt(entry["question"], prompt_suffix),
                image=images / f"{entry['imageId']}.jpg",
                question=entry["question"],
                answers=[entry["answer"]],
                category=types.get("structural"),
                metadata={"image_id": entry["imageId"], "full_answer": entry.get("fullAnswer"), "types": types},
            )
        )
    return samples
