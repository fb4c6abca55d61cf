"""VQAv2 reader: val (scored offline with the official annotations) and test-dev / test (answers go to the
EvalAI server), from the official question and annotation JSON files or LLaVA's eval jsonl.

Layouts read (``root`` is the VQAv2 folder):

- official: ``v2_OpenEnded_mscoco_{val2014,test-dev2015,test2015}_questions.json`` and, for val,
  ``v2_mscoco_val2014_annotations.json`` (in ``root``, or in ``questions/`` and ``annotations/``); images in
  ``val2014/`` or ``test2015/`` (test-dev images are part of test2015) named ``COCO_<folder>_<12-digit id>.jpg``.
- LLaVA: ``llava_vqav2_mscoco_{test-dev2015,test2015}.jsonl`` (``question_id``, ``image``, ``text`` with the
  prompt suffix) next to ``test2015/``; used when the official question file is absent.

Each sample's ``answers`` are the 10 human answers (val), its ``category`` the answer type ("yes/no",
"number", "other"), and ``metadata`` holds ``image_id``, ``question_type`` and ``multiple_choice_answer``.
"""

from __future__ import annotations

from pathlib import Path

from vl_mamba.eval.prompts import SHORT_ANSWER_SUFFIX, build_prompt, strip_known_suffix
from vl_mamba.eval.readers._io import PathLike, find_existing, locate, read_json, read_jsonl
from vl_mamba.eval.records import EvalSample

VQAV2_SPLITS: dict[str, tuple[str, str]] = {
    "val": ("val2014", "val2014"),
    "test-dev": ("test-dev2015", "test2015"),
    "test": ("test2015", "test2015"),
}
"""split -> (file tag, image folder)."""


def vqav2_question_files(split: str) -> list[str]:
    """Where a split's questions may be, official file first, relative to the VQAv2 folder."""
    tag = VQAV2_SPLITS[split][0]
    official = f"v2_OpenEnded_mscoco_{tag}_questions.json"
    return [official, f"questions/{official}", f"Questions/{official}", f"llava_vqav2_mscoco_{tag}.jsonl"]


def read_vqav2_question_ids(root: PathLike, split: str) -> list[int] | None:
    """The question ids of a split, or None when its question file is not under ``root``."""
    path = find_existing(Path(root), vqav2_question_files(split))
    if path is None:
        return None
    rows = read_jsonl(path) if path.suffix == ".jsonl" else read_json(path)["questions"]
    return [int(row["question_id"]) for row in rows]


def read_vqav2(
    root: PathLike,
    split: str = "val",
    prompt_suffix: str = SHORT_ANSWER_SUFFIX,
    questions_file: PathLike | None = None,
    annotations_file: PathLike | None = None,
    image_dir: PathLike | None = None,
) -> list[EvalSample]:
    """Read a VQAv2 split.

    Args:
        root: the VQAv2 folder.
        split: "val", "test-dev" or "test".
        prompt_suffix: appended to each question on its own line.
        questions_file: the question file (.json official, .jsonl LLaVA), relative to ``root``; found if None.
        annotations_file: the val annotations, relative to ``root``; found if None. Not read for test splits.
        image_dir: the image folder, relative to ``root``; ``val2014`` / ``test2015`` (or under ``images/``) if None.
    """
    if split not in VQAV2_SPLITS:
        raise ValueError(f"VQAv2 split must be one of {list(VQAV2_SPLITS)}, got {split!r}")
    root = Path(root)
    tag, folder = VQAV2_SPLITS[split]
    questions_path = locate(root, questions_file, vqav2_question_files(split), f"VQAv2 {split} questions")
    images = locate(root, image_dir, [folder, f"images/{folder}"], f"VQAv2 {split} image folder")
    annotations: dict[int, dict] = {}
    if split == "val":
        name = f"v2_mscoco_{tag}_annotations.json"
        path = locate(
            root, annotations_file, [name, f"annotations/{name}", f"Annotations/{name}"], "VQAv2 val annotations"
        )
        annotations = {int(a["question_id"]): a for a in read_json(path)["annotations"]}

    samples = []
    if questions_path.suffix == ".jsonl":
        rows = [
            (int(r["question_id"]), strip_known_suffix(r["text"]), r["image"], None) for r in read_jsonl(questions_path)
        ]
    else:
        rows = [
            (int(q["question_id"]), q["question"], f"COCO_{folder}_{int(q['image_id']):012d}.jpg", q["image_id"])
            for q in read_json(questions_path)["questions"]
        ]
    for question_id, question, image_name, image_id in rows:
        sample = EvalSample(
            question_id=question_id,
            prompt=build_prompt(question, prompt_suffix),
            image=images / image_name,
            question=question,
            metadata={"image_id": image_id},
        )
        if split == "val":
            if question_id not in annotations:
                raise KeyError(f"VQAv2 val question {question_id} has no annotation")
            ann = annotations[question_id]
            sample.answers = [a["answer"] for a in ann["answers"]]
            sample.category = ann.get("answer_type")
            sample.metadata.update(
                image_id=ann.get("image_id", image_id),
                question_type=ann.get("question_type"),
                multiple_choice_answer=ann.get("multiple_choice_answer"),
            )
        samples.append(sample)
    return samples
