"""``RandomDataModule``: seeded random image-text batches in the training batch format, for smoke tests,
throughput measurements and checks that distributed training computes what one device computes.

With ``same_on_all_ranks`` every rank draws the same batches, so a data-parallel run of N ranks applies the
same gradient as one device on one rank's batch: the loss curves must agree.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, IterableDataset

from data_modules.resumable import ResumableLoader
from vl_mamba.model import IGNORE_INDEX
from vl_mamba.tokenizer import TextTokenizer


class _RandomBatches(IterableDataset):
    """Iterable, so that no distributed sampler splits the batches between ranks."""

    def __init__(self, batches: list[dict[str, Any]]) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)


class RandomDataModule(pl.LightningDataModule):
    """Random batches: ``input_ids`` start with the image placeholder, the second half of the text is labelled.

    Args:
        tokenizer: tokenizer path or hub id (linked from the model).
        image_config: the encoder's data config (linked from the model); gives the image size.
        num_visual_tokens: linked from the model; unused here, accepted for the common interface.
        template: linked from the model; unused here (the batches are random ids).
        batch_size: samples per batch.
        text_length: text tokens per sample, the placeholder included.
        num_batches: batches per epoch (the same batches every epoch).
        val_batches: batches of the validation set.
        seed: random seed.
        same_on_all_ranks: every rank gets the same batches (else the seed is offset by the rank).
        vocab_limit: token ids are drawn below this (default: the tokenizer's vocabulary).
    """

    def __init__(
        self,
        tokenizer: str = "EleutherAI/gpt-neox-20b",
        image_config: dict | None = None,
        num_visual_tokens: int = 0,
        template: str = "vicuna_v1",
        batch_size: int = 4,
        text_length: int = 32,
        num_batches: int = 8,
        val_batches: int = 2,
        seed: int = 0,
        same_on_all_ranks: bool = True,
        vocab_limit: int | None = None,
    ) -> None:
        super().__init__()
        self.tokenizer_name = tokenizer
        self.image_size = tuple((image_config or {"input_size": (3, 384, 384)})["input_size"][1:])
        self.batch_size, self.text_length = batch_size, text_length
        self.num_batches, self.val_batches = num_batches, val_batches
        self.seed, self.same_on_all_ranks, self.vocab_limit = seed, same_on_all_ranks, vocab_limit

    def setup(self, stage: str | None = None) -> None:
        tokenizer = TextTokenizer.load(self.tokenizer_name)
        rank = 0 if self.same_on_all_ranks or self.trainer is None else self.trainer.global_rank
        limit = self.vocab_limit or tokenizer.base_vocab_size
        self.train = _RandomBatches(self._draw(tokenizer, self.num_batches, self.seed + 1000 * rank, limit))
        self.val = _RandomBatches(self._draw(tokenizer, self.val_batches, self.seed + 1 + 1000 * rank, limit))

    def _draw(self, tokenizer: TextTokenizer, count: int, seed: int, limit: int) -> list[dict[str, Any]]:
        generator = torch.Generator().manual_seed(seed)
        batches = []
        b, t = self.batch_size, self.text_length
        for _ in range(count):
            ids = torch.randint(2, limit, (b, t), generator=generator)
            ids[:, 0] = tokenizer.image_token_id
            labels = ids.clone()
            labels[:, : t // 2] = IGNORE_INDEX
            batches.append(
                {
                    "input_ids": ids,
                    "labels": labels,
                    "attention_mask": torch.ones(b, t, dtype=torch.bool),
                    "pixel_values": torch.randn(b, 3, *self.image_size, generator=generator),
                    "has_image": torch.ones(b, dtype=torch.bool),
                }
            )
        return batches

    def train_dataloader(self) -> ResumableLoader:
        return ResumableLoader(DataLoader(self.train, batch_size=None))

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val, batch_size=None)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        return self.val_dataloader()
