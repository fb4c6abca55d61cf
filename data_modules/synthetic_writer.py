"""Writing the synthetic dataset to disk: training samples as WebDataset tar shards of LLaVA-style
conversations (``key.png`` + ``key.json``, plus ``sizes.json``), and the held-out questions in the ``vqa-jsonl``
benchmark layout (``questions.jsonl``, ``answers.jsonl``, ``images/``). Every sample is drawn from its own
``random.Random`` seeded by ``(seed, split, index)``, so the output does not depend on the number of worker
processes, and tar members carry a fixed time stamp, so one seed always gives the same bytes.
"""

from __future__ import annotations

import json
import multiprocessing
import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from webdataset import TarWriter

from data_modules.synthetic_questions import Question, sample_questions
from data_modules.synthetic_scenes import Scene, encode_png, render_scene

ProgressFn = Callable[[str, int, int], None]  # (phase, done, total)
VQA_ANSWERS = 10  # answers per eval question: VQAv2's count, so that its leave-one-out accuracy is 1.0 when right
_CHUNK = 64


@dataclass(frozen=True)
class SampleTask:
    """What one worker call draws: sample ``index`` of ``split``; ``attempt`` > 0 redraws a rejected one."""

    split: str
    seed: int
    index: int
    turns: int
    image_size: int
    max_objects: int
    attempt: int = 0
    kinds: tuple[str, ...] | None = None


@dataclass
class Stats:
    """Counts of what was written, for the manifest."""

    samples: int = 0
    questions: int = 0
    objects: Counter = field(default_factory=Counter)
    answers: dict[str, Counter] = field(default_factory=dict)

    def add(self, scene: Scene, questions: list[Question]) -> None:
        self.samples += 1
        self.questions += len(questions)
        self.objects[str(len(scene.objects))] += 1
        for q in questions:
            self.answers.setdefault(q.category, Counter())[q.answer] += 1

    def to_dict(self) -> dict:
        return {
            "samples": self.samples,
            "questions": self.questions,
            "objects_per_image": dict(sorted(self.objects.items())),
            "answers": {c: dict(sorted(a.items())) for c, a in sorted(self.answers.items())},
        }


def draw_sample(task: SampleTask) -> tuple[Scene, list[Question], bytes]:
    """The scene, questions and PNG bytes of one sample (a pure function of ``task``)."""
    rng = random.Random(f"{task.seed}:{task.split}:{task.index}:{task.attempt}")
    scene, questions = sample_questions(
        rng, task.turns, image_size=task.image_size, max_objects=task.max_objects, kinds=task.kinds
    )
    return scene, questions, encode_png(render_scene(scene))


def iter_samples(tasks: list[SampleTask], workers: int) -> Iterator[tuple[Scene, list[Question], bytes]]:
    """``draw_sample`` over ``tasks``, in order, in ``workers`` processes (in this one when ``workers`` <= 1)."""
    if workers <= 1 or len(tasks) < 4 * _CHUNK:
        yield from map(draw_sample, tasks)
        return
    # fork where there is one: the children inherit the imported modules instead of importing them again
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with multiprocessing.get_context(method).Pool(workers) as pool:
        yield from pool.imap(draw_sample, tasks, chunksize=_CHUNK)


def conversation(key: str, scene: Scene, questions: list[Question]) -> dict:
    """The ``key.json`` of a training sample: LLaVA's ``conversations``, the image placeholder in the first turn.

    ``scene`` and ``categories`` are extra fields (the scene description and each turn's category).
    """
    turns = []
    for i, q in enumerate(questions):
        turns.append({"from": "human", "value": ("<image>\n" if i == 0 else "") + q.text})
        turns.append({"from": "gpt", "value": q.answer})
    return {"id": key, "conversations": turns, "categories": [q.category for q in questions], "scene": scene.to_dict()}


def write_train(
    out_dir: Path,
    samples: int,
    *,
    seed: int,
    turns: int,
    image_size: int,
    max_objects: int,
    shard_size: int,
    workers: int,
    kinds: tuple[str, ...] | None = None,
    progress: ProgressFn | None = None,
) -> tuple[list[Path], set[tuple], Stats]:
    """Write ``samples`` training samples as ``out_dir/{shard:05d}.tar`` and ``out_dir/sizes.json``.

    Returns:
        The shard paths, the signatures of the scenes written (to keep evaluation images apart) and counts.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    tasks = [SampleTask("train", seed, i, turns, image_size, max_objects, kinds=kinds) for i in range(samples)]
    shards: list[Path] = []
    sizes: dict[str, int] = {}
    signatures: set[tuple] = set()
    stats = Stats()
    writer: TarWriter | None = None
    for i, (scene, questions, png) in enumerate(iter_samples(tasks, workers)):
        if i % shard_size == 0:
            if writer is not None:
                writer.close()
            shards.append(out_dir / f"{len(shards):05d}.tar")
            writer = TarWriter(str(shards[-1]), mtime=0)  # an int: a float time stamp costs a pax header per member
            sizes[shards[-1].name] = 0
        key = f"{i:07d}"
        writer.write({"__key__": key, "png": png, "json": json.dumps(conversation(key, scene, questions))})
        sizes[shards[-1].name] += 1
        signatures.add(scene.signature())
        stats.add(scene, questions)
        if progress is not None and ((i + 1) % 256 == 0 or i + 1 == samples):
            progress("train", i + 1, samples)
    if writer is not None:
        writer.close()
    (out_dir / "sizes.json").write_text(json.dumps(sizes, indent=1) + "\n")
    return shards, signatures, stats


def write_eval(
    out_dir: Path,
    questions_total: int,
    *,
    seed: int,
    turns: int,
    image_size: int,
    max_objects: int,
    workers: int,
    exclude: set[tuple],
    kinds: tuple[str, ...] | None = None,
    progress: ProgressFn | None = None,
) -> Stats:
    """Write ``questions_total`` held-out questions in the ``vqa-jsonl`` layout under ``out_dir``.

    Each image carries ``turns`` questions of different categories (the last one fewer when ``turns`` does not
    divide the total). An image whose scene is in ``exclude`` (the training scenes) is drawn again.
    """
    images_dir = out_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    images = -(-questions_total // turns)
    tasks = [SampleTask("eval", seed, i, turns, image_size, max_objects, kinds=kinds) for i in range(images)]
    stats = Stats()
    seen = set(exclude)
    next_id = 0
    with (
        open(out_dir / "questions.jsonl", "w") as q_file,
        open(out_dir / "answers.jsonl", "w") as a_file,
        open(out_dir / "scenes.jsonl", "w") as s_file,
    ):
        for i, (scene, questions, png) in enumerate(iter_samples(tasks, workers)):
            task = tasks[i]
            while scene.signature() in seen:
                task = replace(task, attempt=task.attempt + 1)
                scene, questions, png = draw_sample(task)
            seen.add(scene.signature())  # no two evaluation images alike either
            image = f"images/{i:06d}.png"
            (out_dir / image).write_bytes(png)
            s_file.write(json.dumps({"image": image, "scene": scene.to_dict()}) + "\n")
            questions = questions[: questions_total - next_id]
            for q in questions:
                record = {"question_id": next_id, "image": image, "text": q.text, "category": q.category}
                q_file.write(json.dumps(record) + "\n")
                answer = {"question_id": next_id, "answers": [q.answer] * VQA_ANSWERS, "answer_type": q.answer_type}
                a_file.write(json.dumps(answer) + "\n")
                next_id += 1
            stats.add(scene, questions)
            if progress is not None and ((i + 1) % 256 == 0 or i + 1 == images):
                progress("eval", next_id, questions_total)
    return stats
