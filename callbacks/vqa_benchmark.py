"""``VQABenchmarkCallback``: VQA benchmarks while training (at chosen epoch ends or every N steps) and in
``vl-mamba test``.

Each rank answers its share of the questions; scores are reduced over ranks, logged as
``val/<benchmark>/<metric>`` (``test/...`` under ``vl-mamba test``), printed as a rich table on rank 0, and
the predictions (and, where the benchmark has one, the answer file its server takes) are written under the
run's log directory in ``benchmarks/``.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from rich.console import Console
from rich.table import Table

from data_modules.templates import generation_prompt, get_template
from vl_mamba.encoders.transforms import ImageTransform
from vl_mamba.eval.benchmarks import get_benchmark
from vl_mamba.eval.runner import BenchmarkResult, run_benchmark
from vl_mamba.generation import GenerationConfig
from vl_mamba.utils.logging import get_logger

log = get_logger(__name__)


class VQABenchmarkCallback(pl.Callback):
    """Run VQA benchmarks during training and testing.

    Args:
        benchmarks: benchmark name -> local root (names: vqav2, gqa, textvqa, pope, mme, scienceqa, mmbench,
            mmvet, vqa-jsonl). The root ``datamodule`` means the data module's ``eval_dir``.
        types: benchmark name -> benchmark type, for names that are not types (e.g. ``{"shapes": "vqa-jsonl"}``).
        benchmark_kwargs: benchmark name -> extra reader arguments (e.g. ``{"vqav2": {"split": "val"}}``).
        every_n_epochs: run at the end of every n-th training epoch (0: never at epoch ends).
        every_n_steps: also run every n optimiser steps (None: never).
        on_test: run in ``vl-mamba test``.
        limit: the first ``limit`` questions of each benchmark only (quick checks during training).
        batch_size: questions per generate call.
        max_new_tokens: answer length bound.
        resize: how images are fitted to the encoder (``pad``, ``squash``, ``crop``), as in training.
    """

    def __init__(
        self,
        benchmarks: dict[str, str],
        types: dict[str, str] | None = None,
        benchmark_kwargs: dict[str, dict[str, Any]] | None = None,
        every_n_epochs: int = 1,
        every_n_steps: int | None = None,
        on_test: bool = True,
        limit: int | None = None,
        batch_size: int = 16,
        max_new_tokens: int = 16,
        resize: str = "pad",
    ) -> None:
        super().__init__()
        if not benchmarks:
            raise ValueError("VQABenchmarkCallback needs at least one benchmark (name: root)")
        self.benchmarks = dict(benchmarks)
        self.types = dict(types or {})
        self.benchmark_kwargs = benchmark_kwargs or {}
        self.every_n_epochs, self.every_n_steps = every_n_epochs, every_n_steps
        self.on_test, self.limit, self.batch_size = on_test, limit, batch_size
        self.generation = GenerationConfig(max_new_tokens=max_new_tokens)
        self.resize = resize
        self._specs: dict[str, Any] = {}
        self._last_step = -1

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Fail at the start of a run, not hours later, when a benchmark cannot be read."""
        for name, root in self.benchmarks.items():
            if root == "datamodule":
                root = self.benchmarks[name] = str(getattr(trainer.datamodule, "eval_dir", "") or "")
                if not root:
                    raise ValueError(f"benchmark {name!r}: the data module offers no eval_dir")
            try:
                self._spec(name, root).read(1)
            except Exception as error:  # any reader error: say which benchmark and where
                raise ValueError(f"benchmark {name!r} cannot be read from {root}: {error}") from error

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self.evaluate(trainer, pl_module, "val")

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if self.every_n_steps and step and step % self.every_n_steps == 0 and step != self._last_step:
            self.evaluate(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.on_test:
            self.evaluate(trainer, pl_module, "test")

    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule, prefix: str) -> list[BenchmarkResult]:
        """Run every benchmark now; log, print and write the results."""
        if trainer.sanity_checking:
            return []
        self._last_step = trainer.global_step
        template = get_template(pl_module.hparams.get("template", "vicuna_v1"))
        transform = ImageTransform(pl_module.image_config, resize=self.resize)
        results = []
        # Every rank asks: under DDP, trainer.log_dir broadcasts rank 0's directory, a collective call.
        out_dir = Path(trainer.log_dir or trainer.default_root_dir) / "benchmarks"
        context = _full_parameters(trainer)
        # Gathered FSDP parameters live only inside the context: no CUDA graph may keep their addresses.
        generation = replace(self.generation, cuda_graph=context.context is None)
        with context:
            for name, root in self.benchmarks.items():
                spec = self._spec(name, root)
                result = run_benchmark(
                    name, spec, pl_module.model, pl_module.tokenizer,
                    lambda question, has_image: generation_prompt(template, question, has_image),
                    transform, generation, self.batch_size, self.limit,
                )
                results.append(result)
                for metric, value in result.scores.items():
                    pl_module.log(f"{prefix}/{name}/{metric}", value, rank_zero_only=True, sync_dist=False)
                if trainer.is_global_zero:
                    self._write(trainer, out_dir, spec, result)
        if trainer.is_global_zero:
            Console(stderr=True).print(results_table(results, f"benchmarks at step {trainer.global_step}"))
        return results

    def _spec(self, name: str, root: str):
        if name not in self._specs:
            kind = self.types.get(name, name)
            self._specs[name] = get_benchmark(kind, root, **self.benchmark_kwargs.get(name, {}))
        return self._specs[name]

    def _write(self, trainer: pl.Trainer, directory: Path, spec: Any, result: BenchmarkResult) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        stem = f"{result.name}-epoch{trainer.current_epoch}-step{trainer.global_step}"
        with open(directory / f"{stem}.jsonl", "w") as f:
            for record in result.predictions:
                f.write(json.dumps(record, default=str) + "\n")
        (directory / f"{stem}-scores.json").write_text(json.dumps(result.scores, indent=2))
        by_id = {r["question_id"]: r["prediction"] for r in result.predictions}
        samples = spec.read(self.limit)
        answer_file = spec.write_answers(directory / stem, samples, [by_id.get(s.question_id, "") for s in samples])
        if answer_file is not None:
            log.info("%s: answer file for the evaluation server at %s", result.name, answer_file)


def results_table(results: list[BenchmarkResult], title: str) -> Table:
    """One row per benchmark and metric."""
    table = Table(title=title)
    for column in ("benchmark", "metric", "value", "questions"):
        table.add_column(column, justify="right" if column in ("value", "questions") else "left")
    for result in results:
        if not result.scores:
            table.add_row(result.name, "(no public answers)", "", str(result.num_questions))
        for metric, value in result.scores.items():
            shown = f"{100 * value:.2f}" if 0.0 <= value <= 1.0 and "score" not in metric else f"{value:.2f}"
            table.add_row(result.name, metric, shown, str(result.num_questions))
    return table


class _full_parameters:
    """Under FSDP, gather the full parameters for generation (which calls submodules directly)."""

    def __init__(self, trainer: pl.Trainer) -> None:
        self.context = None
        model = getattr(trainer.strategy, "model", None)
        try:
            from torch.distributed.fsdp import FullyShardedDataParallel

            if isinstance(model, FullyShardedDataParallel):
                self.context = FullyShardedDataParallel.summon_full_params(model, writeback=False)
        except ImportError:
            pass

    def __enter__(self) -> None:
        if self.context is not None:
            self.context.__enter__()

    def __exit__(self, *exc: Any) -> None:
        if self.context is not None:
            self.context.__exit__(*exc)
