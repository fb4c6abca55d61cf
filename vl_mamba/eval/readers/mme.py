"""MME reader: the official ``MME_Benchmark_release_version`` folder (per-subtask question files), with the
question list optionally taken from LLaVA's ``llava_mme.jsonl``.

The release folder (``root`` itself, or ``root/MME_Benchmark_release_version``, possibly with one more
``MME_Benchmark`` level) has a folder per subtask. Five (artwork, celebrity, landmark, posters, scene) keep
images in ``images/`` and question files in ``questions_answers_YN/``; the others keep both side by side. A
question file ``<stem>.txt`` belongs to the image ``<stem>.<jpg|png|jpeg>`` and has one "question<TAB>Yes|No"
line per question (two per image). When ``llava_mme.jsonl`` is in ``root`` (LLaVA's eval layout) or named by
``questions_file``, its lines (``image`` "<subtask>/...<stem>.<ext>", ``text``, ``category``) give the
questions and their order, and their answers are looked up in the release folder.

A sample's id is ``"<subtask>/<image file>/<line>"``, its ``answers`` the label ("yes" / "no"), its
``category`` and ``metadata["subtask"]`` the subtask, and ``metadata["image"]`` the image file name, which pairs
the questions of one image for acc+.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from vl_mamba.eval.metrics import MME_SUBTASKS
from vl_mamba.eval.prompts import SHORT_ANSWER_SUFFIX, build_prompt, strip_known_suffix
from vl_mamba.eval.readers._io import PathLike, find_existing, read_jsonl
from vl_mamba.eval.records import EvalSample

MME_IMAGE_SUFFIXES = (".jpg", ".png", ".jpeg")
LLAVA_MME_FILE = "llava_mme.jsonl"


def find_mme_folder(root: Path) -> Path:
    """The release folder: the first of ``root`` and its usual sub-folders that holds a subtask folder."""
    for candidate in (
        root,
        root / "MME_Benchmark_release_version",
        root / "MME_Benchmark_release_version" / "MME_Benchmark",
    ):
        if any((candidate / name).is_dir() for name in MME_SUBTASKS):
            return candidate
    raise FileNotFoundError(f"no MME subtask folder ({', '.join(MME_SUBTASKS)}) under {root}")


def _read_subtask(folder: Path, subtask: str, prompt_suffix: str) -> list[EvalSample]:
    """Every question of one subtask, image by image in file-name order."""
    base = folder / subtask
    if (base / "images").is_dir():
        image_dir, qa_dir = base / "images", base / "questions_answers_YN"
    else:
        image_dir = qa_dir = base
    images = {p.stem: p for p in sorted(image_dir.iterdir()) if p.suffix.lower() in MME_IMAGE_SUFFIXES}
    samples = []
    for qa_file in sorted(qa_dir.glob("*.txt")):
        if qa_file.stem not in images:
            raise FileNotFoundError(f"MME {subtask}: no image for {qa_file} in {image_dir}")
        image = images[qa_file.stem]
        lines = [line for line in qa_file.read_text(encoding="utf-8").splitlines() if line.strip()]
        for number, line in enumerate(lines):
            question, label = line.rsplit("\t", 1)
            samples.append(
                EvalSample(
                    question_id=f"{subtask}/{image.name}/{number}",
                    prompt=build_prompt(question, prompt_suffix),
                    image=image,
                    question=question.strip(),
                    answers=[label.strip().lower()],
                    category=subtask,
                    metadata={"subtask": subtask, "image": image.name},
                )
            )
    return samples


def _order_by_llava(samples: list[EvalSample], path: Path, subtasks: Sequence[str]) -> list[EvalSample]:
    """The samples LLaVA's jsonl lists for these subtasks, in its order, matched by (subtask, image stem, question)."""
    index = {(s.metadata["subtask"], Path(s.metadata["image"]).stem, s.question): s for s in samples}
    ordered = []
    for row in read_jsonl(path):
        subtask = row.get("category") or Path(row["image"]).parts[0]
        if subtask not in subtasks:
            continue
        key = (subtask, Path(row["image"]).stem, strip_known_suffix(row["text"]))
        if key not in index:
            raise KeyError(f"{path}: question {row.get('question_id')!r} {key} is not in the MME release folder")
        ordered.append(index[key])
    return ordered


def read_mme(
    root: PathLike,
    subtasks: Sequence[str] = MME_SUBTASKS,
    prompt_suffix: str = SHORT_ANSWER_SUFFIX,
    questions_file: PathLike | None = None,
) -> list[EvalSample]:
    """Read MME.

    Args:
        root: the release folder or the folder that holds it (and, in LLaVA's layout, ``llava_mme.jsonl``).
        subtasks: which subtasks to read; each must have its folder.
        prompt_suffix: appended to each question on its own line (MME questions end "Please answer yes or no.").
        questions_file: LLaVA's jsonl, relative to ``root``; ``llava_mme.jsonl`` is used if present and None.
    """
    root = Path(root)
    folder = find_mme_folder(root)
    unknown = sorted(set(subtasks) - set(MME_SUBTASKS))
    missing = [name for name in subtasks if not (folder / name).is_dir()]
    if unknown or missing:
        raise FileNotFoundError(f"MME under {folder}: unknown subtasks {unknown}, missing subtask folders {missing}")
    samples = [sample for name in subtasks for sample in _read_subtask(folder, name, prompt_suffix)]
    llava_path = root / questions_file if questions_file is not None else find_existing(root, [LLAVA_MME_FILE])
    if llava_path is None:
        return samples
    return _order_by_llava(samples, llava_path, subtasks)
