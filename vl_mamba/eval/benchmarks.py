"""``BenchmarkSpec`` ties what running one benchmark needs: its reader (bound to a local copy), prompt suffix,
metric, how a batch of samples and answers updates the metric, and the writer of the answer file a server or
grader takes. ``get_benchmark(name, root, **kwargs)`` builds one by name.

Use::

    bench = get_benchmark("vqav2", "/data/vqav2", split="val")
    samples = bench.read()                       # every rank reads all, then takes its shard
    metric = bench.make_metric(samples)          # from the full list, so category names agree across ranks
    bench.update(metric, shard, predictions)     # per batch
    scores = bench.scores(metric)                # {"accuracy": ..., "accuracy/yes/no": ...}; syncs under DDP
    bench.write_answers(log_dir, shard, predictions)  # where the benchmark has an answer file
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from inspect import signature
from pathlib import Path
from typing import Any

from torch import Tensor
from torchmetrics import Metric

from vl_mamba.eval.metrics import (
    POPE_SPLITS,
    ExactMatchAccuracy,
    MMBenchCircularAccuracy,
    MMEMetrics,
    POPEMetrics,
    ScienceQAAccuracy,
    VQAAccuracy,
)
from vl_mamba.eval.prompts import OPTION_LETTER_SUFFIX, SHORT_ANSWER_SUFFIX
from vl_mamba.eval.readers import (
    read_gqa,
    read_mmbench,
    read_mme,
    read_mmvet,
    read_pope,
    read_scienceqa,
    read_textvqa,
    read_vqa_jsonl,
    read_vqav2,
)
from vl_mamba.eval.readers.vqav2 import read_vqav2_question_ids
from vl_mamba.eval.records import EvalSample
from vl_mamba.eval.writers import write_mmbench_submission, write_mmvet_answers, write_vqav2_submission

Preds = Sequence[str]
UpdateFn = Callable[[Metric, Sequence[EvalSample], Preds], None]
WriterFn = Callable[[Path, Sequence[EvalSample], Preds], Path]


@dataclass(frozen=True)
class BenchmarkSpec:
    """One benchmark on one local copy."""

    name: str
    """Registry name, used in logged metric names (``val/<name>/<metric>``)."""
    reader: Callable[[], list[EvalSample]]
    """Reads the samples (the reader function bound to the copy's root and options)."""
    prompt_suffix: str
    """The line the reader appends to every prompt."""
    metric_factory: Callable[[Sequence[EvalSample]], Metric] | None = None
    """Builds the metric from the full sample list; None when the benchmark is not scored offline."""
    update_fn: UpdateFn | None = None
    """Feeds a batch of samples and the model's answers to the metric."""
    writer: WriterFn | None = None
    """Writes the answer file a server or grader takes: (path, samples, predictions) -> path."""
    answer_file: str | None = None
    """File name for ``writer``'s output."""
    headline: str = "accuracy"
    """The key of ``scores()`` that is the benchmark's reported number (a metric returning one value gets it)."""

    def read(self, limit: int | None = None) -> list[EvalSample]:
        """The samples, or the first ``limit`` of them for a quick check. The MME folder reader and the MMBench
        reader keep an image's questions and a question's rotations adjacent, so a limit cuts at most one acc+
        pair or circular group short (it is scored on the questions it has)."""
        samples = self.reader()
        return samples if limit is None else samples[:limit]

    def can_score(self, samples: Sequence[EvalSample]) -> bool:
        """Whether these samples can be scored here: a metric exists and every sample has reference answers."""
        return self.metric_factory is not None and all(sample.answers for sample in samples)

    def make_metric(self, samples: Sequence[EvalSample]) -> Metric:
        """A fresh metric for these samples (pass the full list, not a rank's shard)."""
        if self.metric_factory is None:
            raise ValueError(f"{self.name} is not scored offline; write its answer file with write_answers()")
        return self.metric_factory(samples)

    def update(self, metric: Metric, samples: Sequence[EvalSample], predictions: Preds) -> None:
        """Score a batch: ``predictions[i]`` is the model's answer to ``samples[i]``."""
        if self.update_fn is None:
            raise ValueError(f"{self.name} is not scored offline")
        if len(samples) != len(predictions):
            raise ValueError(f"{len(samples)} samples but {len(predictions)} predictions")
        missing = [sample.question_id for sample in samples if not sample.answers]
        if missing:
            raise ValueError(f"{self.name}: questions {missing[:5]} have no reference answers to score against")
        self.update_fn(metric, samples, predictions)

    def scores(self, metric: Metric) -> dict[str, float]:
        """``metric.compute()`` as plain floats; a single value is keyed by ``headline``."""
        value = metric.compute()
        if isinstance(value, Tensor):
            return {self.headline: float(value)}
        return {key: float(item) for key, item in value.items()}

    def write_answers(self, directory: str | Path, samples: Sequence[EvalSample], predictions: Preds) -> Path | None:
        """Write the answer file into ``directory``; None when the benchmark has no answer file."""
        if self.writer is None or self.answer_file is None:
            return None
        return self.writer(Path(directory) / self.answer_file, samples, predictions)


def _bind(reader: Callable[..., list[EvalSample]], *args: Any, **kwargs: Any) -> Callable[[], list[EvalSample]]:
    """``reader`` with its arguments bound, checked now so that a wrong option fails at ``get_benchmark``."""
    signature(reader).bind(*args, **kwargs)
    return partial(reader, *args, **kwargs)


def _categories(samples: Sequence[EvalSample]) -> list[str] | None:
    names = sorted({sample.category for sample in samples if sample.category is not None})
    return names or None


def _vqa_metric(samples: Sequence[EvalSample]) -> Metric:
    return VQAAccuracy(categories=_categories(samples))


def _update_vqa(metric: Metric, samples: Sequence[EvalSample], preds: Preds) -> None:
    categories = [s.category for s in samples] if metric.categories else None
    metric.update(preds, [s.answers for s in samples], categories=categories)


def _update_exact(metric: Metric, samples: Sequence[EvalSample], preds: Preds) -> None:
    categories = [s.category for s in samples] if metric.categories else None
    metric.update(preds, [s.answers[0] for s in samples], categories=categories)


def _update_pope(metric: Metric, samples: Sequence[EvalSample], preds: Preds) -> None:
    metric.update(preds, [s.answers[0] for s in samples], splits=[s.metadata["split"] for s in samples])


def _update_mme(metric: Metric, samples: Sequence[EvalSample], preds: Preds) -> None:
    metric.update(
        preds,
        [s.answers[0] for s in samples],
        subtasks=[s.metadata["subtask"] for s in samples],
        images=[s.metadata["image"] for s in samples],
    )


def _update_scienceqa(metric: Metric, samples: Sequence[EvalSample], preds: Preds) -> None:
    metric.update(
        preds,
        [s.answers[0] for s in samples],
        has_image=[s.metadata["has_image"] for s in samples],
        options=[s.metadata["options"] for s in samples],
    )


def _update_mmbench(metric: Metric, samples: Sequence[EvalSample], preds: Preds) -> None:
    metric.update(
        preds,
        [s.answers[0] for s in samples],
        groups=[s.metadata["group"] for s in samples],
        options=[s.metadata["options"] for s in samples],
    )


def vqav2_benchmark(
    root: str | Path, split: str = "val", prompt_suffix: str = SHORT_ANSWER_SUFFIX, **reader_kwargs: Any
) -> BenchmarkSpec:
    """VQAv2: val scored with ``VQAAccuracy`` broken down by answer type; test-dev / test write the EvalAI
    file, padded with "" for the other test2015 questions when their question file is under ``root``."""
    reader = _bind(read_vqav2, root, split=split, prompt_suffix=prompt_suffix, **reader_kwargs)
    if split == "val":
        return BenchmarkSpec("vqav2", reader, prompt_suffix, _vqa_metric, _update_vqa)

    def write(path: Path, samples: Sequence[EvalSample], preds: Preds) -> Path:
        all_ids = read_vqav2_question_ids(root, "test")
        return write_vqav2_submission(path, [int(s.question_id) for s in samples], preds, all_question_ids=all_ids)

    return BenchmarkSpec("vqav2", reader, prompt_suffix, writer=write, answer_file=f"vqav2_{split}_answers.json")


def gqa_benchmark(root: str | Path, prompt_suffix: str = SHORT_ANSWER_SUFFIX, **reader_kwargs: Any) -> BenchmarkSpec:
    """GQA testdev-balanced: exact match, broken down by structural type."""
    reader = _bind(read_gqa, root, prompt_suffix=prompt_suffix, **reader_kwargs)
    return BenchmarkSpec(
        "gqa", reader, prompt_suffix, lambda samples: ExactMatchAccuracy(categories=_categories(samples)), _update_exact
    )


def textvqa_benchmark(
    root: str | Path, prompt_suffix: str = SHORT_ANSWER_SUFFIX, **reader_kwargs: Any
) -> BenchmarkSpec:
    """TextVQA val: ``VQAAccuracy``."""
    reader = _bind(read_textvqa, root, prompt_suffix=prompt_suffix, **reader_kwargs)
    return BenchmarkSpec("textvqa", reader, prompt_suffix, lambda samples: VQAAccuracy(), _update_vqa)


def pope_benchmark(
    root: str | Path,
    splits: Sequence[str] = POPE_SPLITS,
    prompt_suffix: str = SHORT_ANSWER_SUFFIX,
    **reader_kwargs: Any,
) -> BenchmarkSpec:
    """POPE: accuracy, precision, recall, F1 and yes-ratio per split; the headline is the mean F1."""
    reader = _bind(read_pope, root, splits=splits, prompt_suffix=prompt_suffix, **reader_kwargs)
    return BenchmarkSpec(
        "pope", reader, prompt_suffix, lambda samples: POPEMetrics(splits), _update_pope, headline="f1"
    )


def mme_benchmark(root: str | Path, prompt_suffix: str = SHORT_ANSWER_SUFFIX, **reader_kwargs: Any) -> BenchmarkSpec:
    """MME: per-subtask acc / acc+ / score; the headline is the perception score."""
    reader = _bind(read_mme, root, prompt_suffix=prompt_suffix, **reader_kwargs)
    return BenchmarkSpec("mme", reader, prompt_suffix, lambda samples: MMEMetrics(), _update_mme, headline="perception")


def scienceqa_benchmark(
    root: str | Path, prompt_suffix: str = OPTION_LETTER_SUFFIX, **reader_kwargs: Any
) -> BenchmarkSpec:
    """ScienceQA-IMG: option-letter accuracy on the questions with an image."""
    reader = _bind(read_scienceqa, root, prompt_suffix=prompt_suffix, **reader_kwargs)
    return BenchmarkSpec(
        "scienceqa",
        reader,
        prompt_suffix,
        lambda samples: ScienceQAAccuracy(),
        _update_scienceqa,
        headline="img_accuracy",
    )


def mmbench_benchmark(
    root: str | Path, prompt_suffix: str = OPTION_LETTER_SUFFIX, **reader_kwargs: Any
) -> BenchmarkSpec:
    """MMBench: circular accuracy where the TSV has answers (dev); the submission spreadsheet either way."""
    reader = _bind(read_mmbench, root, prompt_suffix=prompt_suffix, **reader_kwargs)
    return BenchmarkSpec(
        "mmbench",
        reader,
        prompt_suffix,
        lambda samples: MMBenchCircularAccuracy(),
        _update_mmbench,
        writer=write_mmbench_submission,
        answer_file="mmbench_submission.xlsx",
        headline="circular_accuracy",
    )


def mmvet_benchmark(root: str | Path, prompt_suffix: str = "", **reader_kwargs: Any) -> BenchmarkSpec:
    """MM-Vet: not scored here (GPT grader); writes ``{"v1_0": answer, ...}``."""
    reader = _bind(read_mmvet, root, prompt_suffix=prompt_suffix, **reader_kwargs)

    def write(path: Path, samples: Sequence[EvalSample], preds: Preds) -> Path:
        return write_mmvet_answers(path, [str(s.question_id) for s in samples], preds)

    return BenchmarkSpec("mmvet", reader, prompt_suffix, writer=write, answer_file="mmvet_answers.json")


def vqa_jsonl_benchmark(
    root: str | Path, prompt_suffix: str = SHORT_ANSWER_SUFFIX, **reader_kwargs: Any
) -> BenchmarkSpec:
    """The project's vqa-jsonl layout: ``VQAAccuracy`` broken down by category."""
    reader = _bind(read_vqa_jsonl, root, prompt_suffix=prompt_suffix, **reader_kwargs)
    return BenchmarkSpec("vqa-jsonl", reader, prompt_suffix, _vqa_metric, _update_vqa)


BENCHMARKS: dict[str, Callable[..., BenchmarkSpec]] = {
    "vqav2": vqav2_benchmark,
    "gqa": gqa_benchmark,
    "textvqa": textvqa_benchmark,
    "pope": pope_benchmark,
    "mme": mme_benchmark,
    "scienceqa": scienceqa_benchmark,
    "mmbench": mmbench_benchmark,
    "mmvet": mmvet_benchmark,
    "vqa-jsonl": vqa_jsonl_benchmark,
}
"""Benchmark name -> the function that builds its spec from ``(root, **kwargs)``."""


def get_benchmark(name: str, root: str | Path, **kwargs: Any) -> BenchmarkSpec:
    """The spec of benchmark ``name`` on the local copy at ``root``.

    Args:
        name: one of ``BENCHMARKS``.
        root: the benchmark's folder (for MMBench, the folder or the TSV).
        kwargs: options of that benchmark's builder and reader, e.g. ``split="test-dev"`` (vqav2),
            ``splits=["random"]`` (pope), ``prompt_suffix=...`` (any), ``image_dir=...``.
    """
    if name not in BENCHMARKS:
        raise KeyError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name](root, **kwargs)
