"""MM-Vet reader. MM-Vet is graded by a GPT model, so it is not scored here: the reader feeds generation and
``write_mmvet_answers`` writes the file its grader takes.

Layouts read (``root`` is the MM-Vet folder): the official ``mm-vet.json`` (keys "v1_<n>": ``imagename``,
``question``, ``answer``, ``capability``) in ``root`` or ``mm-vet/``, or else LLaVA's ``llava-mm-vet.jsonl``
(``question_id`` n, ``image``, ``text``); images in ``images/`` or ``mm-vet/images/``. A sample's id is
"v1_<n>", its prompt the bare question (LLaVA adds no suffix for MM-Vet), ``answers`` the reference answer
when the official file gives it, and ``metadata["capability"]`` the capability list.
"""

from __future__ import annotations

from pathlib import Path

from vl_mamba.eval.prompts import build_prompt
from vl_mamba.eval.readers._io import PathLike, locate, read_json, read_jsonl
from vl_mamba.eval.records import EvalSample


def read_mmvet(root: PathLike, prompt_suffix: str = "", image_dir: PathLike | None = None) -> list[EvalSample]:
    """Read MM-Vet.

    Args:
        root: the MM-Vet folder.
        prompt_suffix: appended to each question on its own line; none by default.
        image_dir: the image folder, relative to ``root``; found if None.
    """
    root = Path(root)
    path = locate(root, None, ["mm-vet.json", "mm-vet/mm-vet.json", "llava-mm-vet.jsonl"], "MM-Vet questions")
    images = locate(root, image_dir, ["images", "mm-vet/images"], "MM-Vet image folder")
    samples = []
    if path.suffix == ".jsonl":
        for row in read_jsonl(path):
            samples.append(
                EvalSample(
                    question_id=f"v1_{row['question_id']}",
                    prompt=build_prompt(row["text"], prompt_suffix),
                    image=images / row["image"],
                    question=row["text"],
                )
            )
        return samples
    for key, entry in read_json(path).items():
        samples.append(
            EvalSample(
                question_id=key,
                prompt=build_prompt(entry["question"], prompt_suffix),
                image=images / entry["imagename"],
                question=entry["question"],
                answers=[entry["answer"]] if entry.get("answer") is not None else [],
                metadata={"capability": list(entry.get("capability") or [])},
            )
        )
    return samples
