"""POPE reader: the COCO splits random / popular / adversarial, from ``coco_pope_<split>.json`` (JSON lines:
``question_id``, ``image``, ``text``, ``label``), as the POPE release and LLaVA's eval layout ship them.

Layouts read (``root`` is the POPE folder): split files in ``root``, ``coco/`` (LLaVA) or ``output/coco/`` (the
POPE repository); COCO val2014 images in ``val2014/``, ``images/val2014/``, ``coco/val2014/`` or ``images/``.
Question ids restart in each split file, so a sample's id is ``"<split>-<question_id>"``. Its ``answers`` is
the label ("yes" / "no"), its ``category`` and ``metadata["split"]`` the split.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from vl_mamba.eval.metrics import POPE_SPLITS
from vl_mamba.eval.prompts import SHORT_ANSWER_SUFFIX, build_prompt, strip_known_suffix
from vl_mamba.eval.readers._io import PathLike, locate, read_jsonl
from vl_mamba.eval.records import EvalSample


def read_pope(
    root: PathLike,
    splits: Sequence[str] = POPE_SPLITS,
    prompt_suffix: str = SHORT_ANSWER_SUFFIX,
    image_dir: PathLike | None = None,
) -> list[EvalSample]:
    """Read the POPE splits, one after another.

    Args:
        root: the POPE folder.
        splits: which splits to read.
        prompt_suffix: appended to each question on its own line.
        image_dir: the COCO val2014 image folder, relative to ``root``; found if None.
    """
    root = Path(root)
    images = locate(root, image_dir, ["val2014", "images/val2014", "coco/val2014", "images"], "POPE image folder")
    samples = []
    for split in splits:
        name = f"coco_pope_{split}.json"
        path = locate(root, None, [name, f"coco/{name}", f"output/coco/{name}"], f"POPE {split} split")
        for row in read_jsonl(path):
            question = strip_known_suffix(row["text"])
            samples.append(
                EvalSample(
                    question_id=f"{split}-{row['question_id']}",
                    prompt=build_prompt(question, prompt_suffix),
                    image=images / row["image"],
                    question=question,
                    answers=[row["label"].strip().lower()],
                    category=split,
                    metadata={"split": split},
                )
            )
    return samples
