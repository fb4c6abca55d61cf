"""TextVQA val reader, from the official ``TextVQA_0.5.1_val.json`` (questions and the 10 human answers), with
prompts optionally taken from LLaVA's ``llava_textvqa_val_v051_ocr.jsonl``.

Layouts read (``root`` is the TextVQA folder): the annotations JSON in ``root`` or ``annotations/``; images
``<image_id>.jpg`` in ``train_images/`` (where the val images ship) or ``images/``. When LLaVA's jsonl is in
``root`` and ``use_llava_prompts`` is on, each prompt body is its text (the question and a "Reference OCR token:"
line, as LLaVA-1.5's TextVQA numbers use); questions are matched to it by (image, question) as LLaVA's
evaluator does, and a question missing from it is an error. Without it the prompt is the bare question.
Each sample's ``answers`` are the 10 human answers; ``metadata`` holds ``image_id`` and ``image_classes``.
"""

from __future__ import annotations

from pathlib import Path

from vl_mamba.eval.prompts import SHORT_ANSWER_SUFFIX, build_prompt, strip_known_suffix
from vl_mamba.eval.readers._io import PathLike, find_existing, locate, read_json, read_jsonl
from vl_mamba.eval.records import EvalSample

TEXTVQA_ANNOTATIONS_FILE = "TextVQA_0.5.1_val.json"
LLAVA_TEXTVQA_FILE = "llava_textvqa_val_v051_ocr.jsonl"


def _llava_prompts(path: Path) -> dict[tuple[str, str], str]:
    """LLaVA prompt bodies by (image id, lower-cased question)."""
    prompts = {}
    for row in read_jsonl(path):
        body = strip_known_suffix(row["text"])
        prompts[(Path(row["image"]).stem, body.split("\n", 1)[0].strip().lower())] = body
    return prompts


def read_textvqa(
    root: PathLike,
    prompt_suffix: str = SHORT_ANSWER_SUFFIX,
    annotations_file: PathLike | None = None,
    image_dir: PathLike | None = None,
    use_llava_prompts: bool = True,
) -> list[EvalSample]:
    """Read TextVQA val.

    Args:
        root: the TextVQA folder.
        prompt_suffix: appended to each prompt body on its own line.
        annotations_file: the val JSON, relative to ``root``; found if None.
        image_dir: the image folder, relative to ``root``; found if None.
        use_llava_prompts: take prompt bodies (with OCR tokens) from LLaVA's jsonl when it is in ``root``.
    """
    root = Path(root)
    candidates = [TEXTVQA_ANNOTATIONS_FILE, f"annotations/{TEXTVQA_ANNOTATIONS_FILE}"]
    data = read_json(locate(root, annotations_file, candidates, "TextVQA val annotations"))["data"]
    images = locate(root, image_dir, ["train_images", "images"], "TextVQA image folder")
    llava_path = find_existing(root, [LLAVA_TEXTVQA_FILE]) if use_llava_prompts else None
    llava_prompts = _llava_prompts(llava_path) if llava_path else {}
    samples = []
    for entry in data:
        question, image_id = entry["question"], entry["image_id"]
        body = question
        if llava_path:
            body = llava_prompts.get((image_id, question.strip().lower()))
            if body is None:
                raise KeyError(
                    f"TextVQA question {entry['question_id']} ({question!r}, image {image_id}) is not in "
                    f"{llava_path}; pass use_llava_prompts=False to use bare questions"
                )
        samples.append(
            EvalSample(
                question_id=int(entry["question_id"]),
                prompt=build_prompt(body, prompt_suffix),
                image=images / f"{image_id}.jpg",
                question=question,
                answers=list(entry["answers"]),
                metadata={"image_id": image_id, "image_classes": entry.get("image_classes")},
            )
        )
    return samples
