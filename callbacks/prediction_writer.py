"""``JsonlPredictionWriter``: ``vl-mamba predict`` writes each rank's answers as JSON lines
(``predictions-rank<k>.jsonl``: key, prompt, prediction, reference) as batches finish."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import BasePredictionWriter


class JsonlPredictionWriter(BasePredictionWriter):
    """Append every predicted batch to ``output_dir/predictions-rank<k>.jsonl``.

    Args:
        output_dir: where to write; the run's log directory when None.
    """

    def __init__(self, output_dir: str | None = None) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = output_dir

    def _path(self, trainer: pl.Trainer) -> Path:
        directory = Path(self.output_dir or trainer.log_dir or trainer.default_root_dir)
        directory.mkdir(parents=True, exist_ok=True)
        return directory / f"predictions-rank{trainer.global_rank}.jsonl"

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._path(trainer).write_text("")

    def write_on_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, prediction: Any,
                           batch_indices: Any, batch: Any, batch_idx: int, dataloader_idx: int) -> None:
        with open(self._path(trainer), "a") as f:
            for record in prediction:
                f.write(json.dumps(record, default=str) + "\n")
