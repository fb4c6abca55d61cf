"""Running one benchmark with a model: read its questions, take this rank's share, generate answers in
batches, score them (the metric's states are summed over ranks), and gather the predictions.

Used by the epoch-end benchmark callback and by ``vl-mamba eval``; it needs no training framework.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from vl_mamba.eval.benchmarks import BenchmarkSpec
from vl_mamba.eval.records import EvalSample
from vl_mamba.generation import GenerationConfig, generate
from vl_mamba.model import VLMamba
from vl_mamba.tokenizer import TextTokenizer


@dataclass
class BenchmarkResult:
    name: str
    """Benchmark name."""
    scores: dict[str, float]
    """Metric name -> value (empty when the split has no public answers)."""
    predictions: list[dict[str, Any]] = field(default_factory=list)
    """question_id, prompt, prediction, answers and category of every question (all ranks, on every rank)."""
    num_questions: int = 0


def run_benchmark(
    name: str,
    spec: BenchmarkSpec,
    model: VLMamba,
    tokenizer: TextTokenizer,
    format_prompt: Callable[[str, bool], str],
    image_transform: Callable[[Any], torch.Tensor],
    generation: GenerationConfig | None = None,
    batch_size: int = 16,
    limit: int | None = None,
    samples: Sequence[EvalSample] | None = None,
) -> BenchmarkResult:
    """Answer and score one benchmark; in a distributed run every rank calls this and gets the same result.

    Args:
        name: the benchmark's name in logs.
        spec: reader, metric and writer of the benchmark.
        model: the model, in eval mode, on its device.
        tokenizer: its tokenizer.
        format_prompt: (question text, has image) -> the full prompt (the conversation template).
        image_transform: PIL image -> (3, H, W) tensor.
        generation: decoding settings.
        batch_size: questions per generate call.
        limit: the first ``limit`` questions only.
        samples: already-read questions (else ``spec.read(limit)``).
    """
    generation = generation or GenerationConfig(max_new_tokens=16)
    samples = list(samples if samples is not None else spec.read(limit))
    rank, world = _rank_and_world()
    mine = samples[rank::world]  # no padding: every question is answered exactly once over all ranks
    records = []
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(mine), batch_size):
            batch = mine[start : start + batch_size]
            images = [_load(sample, image_transform) for sample in batch]
            prompts = [format_prompt(sample.prompt, image is not None) for sample, image in zip(batch, images)]
            texts = generate(model, tokenizer, prompts, images, generation).texts
            for sample, prompt, text in zip(batch, prompts, texts):
                records.append({
                    "question_id": sample.question_id, "prompt": prompt, "prediction": text,
                    "answers": list(sample.answers), "category": sample.category,
                })
    finally:
        model.train(was_training)
    scores: dict[str, float] = {}
    if spec.can_score(samples):
        metric = spec.make_metric(samples).to(next(model.parameters()).device)
        spec.update(metric, mine, [r["prediction"] for r in records])
        scores = spec.scores(metric)  # torchmetrics sums the states of all ranks before computing
    return BenchmarkResult(name=name, scores=scores, predictions=_gather(records, samples), num_questions=len(samples))


def _load(sample: EvalSample, transform: Callable[[Any], torch.Tensor]) -> torch.Tensor | None:
    image = sample.load_image()
    return None if image is None else transform(image)


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gather(records: list[dict[str, Any]], samples: Sequence[EvalSample]) -> list[dict[str, Any]]:
    """Every rank's records, back in the benchmark's question order."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        shards: list[list[dict[str, Any]]] = [[] for _ in range(dist.get_world_size())]
        dist.all_gather_object(shards, records)
        records = [r for shard in shards for r in shard]
    order = {sample.question_id: i for i, sample in enumerate(samples)}
    return sorted(records, key=lambda r: order.get(r["question_id"], len(order)))
