"""ScienceQA reader (SQA-I: the questions with an image), from the official ``problems.json`` and
``pid_splits.json``, with prompts optionally taken from LLaVA's ``llava_test_CQM-A.json``.

Layouts read (``root`` is the ScienceQA folder): ``problems.json`` and ``pid_splits.json`` in ``root`` (LLaVA's
eval layout), ``data/scienceqa/`` (the ScienceQA repository) or ``scienceqa/``; images
``<split>/<pid>/image.png`` under ``images/`` or ``root``. The prompt body is, as LLaVA-1.5 writes it,
"Context: <hint>" (when there is a hint), the question, and the options as "A. text" lines; with
``use_llava_prompts`` and ``llava_test_CQM-A.json`` in ``root``, the body is that file's human turn instead
(``<image>`` removed). A sample's ``answers`` is the right letter, its ``category`` the subject, and
``metadata`` holds ``options``, ``has_image``, ``grade`` and ``topic``.
"""

from __future__ import annotations

from pathlib import Path

from vl_mamba.eval.answer_parsing import option_letters
from vl_mamba.eval.prompts import OPTION_LETTER_SUFFIX, build_prompt, multiple_choice_body, strip_known_suffix
from vl_mamba.eval.readers._io import PathLike, find_existing, locate, read_json
from vl_mamba.eval.records import EvalSample

LLAVA_SCIENCEQA_FILE = "llava_test_CQM-A.json"
_DATA_DIRS = ("", "data/scienceqa/", "scienceqa/")


def _llava_prompts(path: Path) -> dict[str, str]:
    """Prompt bodies of LLaVA's CQM-A file, by problem id."""
    prompts = {}
    for entry in read_json(path):
        human = next(turn["value"] for turn in entry["conversations"] if turn["from"] == "human")
        prompts[str(entry["id"])] = strip_known_suffix(human.replace("<image>", "").strip())
    return prompts


def read_scienceqa(
    root: PathLike,
    split: str = "test",
    image_only: bool = True,
    prompt_suffix: str = OPTION_LETTER_SUFFIX,
    use_llava_prompts: bool = True,
    image_dir: PathLike | None = None,
) -> list[EvalSample]:
    """Read a ScienceQA split.

    Args:
        root: the ScienceQA folder.
        split: a key of ``pid_splits.json`` ("test" for SQA-I).
        image_only: keep only the questions with an image (SQA-I); False reads every question.
        prompt_suffix: appended to each prompt body on its own line.
        use_llava_prompts: take prompt bodies from ``llava_test_CQM-A.json`` when it is in ``root``.
        image_dir: the folder holding ``<pid>/image.png``, relative to ``root``; found if None.
    """
    root = Path(root)
    problems = read_json(locate(root, None, [f"{d}problems.json" for d in _DATA_DIRS], "ScienceQA problems.json"))
    pid_splits = read_json(locate(root, None, [f"{d}pid_splits.json" for d in _DATA_DIRS], "ScienceQA pid_splits"))
    if split not in pid_splits:
        raise KeyError(f"ScienceQA split {split!r} is not in pid_splits.json (has {sorted(pid_splits)})")
    llava_path = find_existing(root, [LLAVA_SCIENCEQA_FILE]) if use_llava_prompts else None
    llava_prompts = _llava_prompts(llava_path) if llava_path else {}
    pids = [str(pid) for pid in pid_splits[split] if not image_only or problems[str(pid)].get("image")]
    images = None
    if any(problems[pid].get("image") for pid in pids):
        images = locate(root, image_dir, [f"images/{split}", split], f"ScienceQA {split} image folder")
    samples = []
    for pid in pids:
        problem = problems[pid]
        choices = [str(choice) for choice in problem["choices"]]
        hint = (problem.get("hint") or "").strip()
        body = llava_prompts.get(pid) or multiple_choice_body(
            problem["question"], choices, hint=f"Context: {hint}" if hint else None
        )
        has_image = bool(problem.get("image"))
        samples.append(
            EvalSample(
                question_id=pid,
                prompt=build_prompt(body, prompt_suffix),
                image=images / pid / problem["image"] if has_image and images is not None else None,
                question=problem["question"],
                answers=[option_letters(len(choices))[int(problem["answer"])]],
                category=problem.get("subject"),
                metadata={
                    "options": choices,
                    "has_image": has_image,
                    "grade": problem.get("grade"),
                    "topic": problem.get("topic"),
                },
            )
        )
    return samples
