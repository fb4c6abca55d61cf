"""``ShardLoader``: a WebDataset ``WebLoader`` that yields a fixed number of batches per epoch, so that every
DDP rank steps alike, and that passes the epoch on to its dataset."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import webdataset as wds

from data_modules.pipeline import ShardDataset


class ShardLoader:
    """Iterate a ``ShardDataset`` through worker processes; ``num_batches`` per epoch when given.

    With ``num_batches`` the underlying stream is restarted when it ends early and cut when it runs on
    (``WebLoader.with_epoch``), so an endless resampled stream makes epochs of exactly that many batches.
    Without it, one pass over a finite stream is one epoch, and ``len()`` raises ``TypeError``.

    Args:
        dataset: yields collated batches.
        num_batches: batches per epoch on this rank, or None for one pass.
        num_workers: loader worker processes (0 reads in the main process).
        pin_memory: pin batch tensors for faster host-to-GPU copies.
    """

    def __init__(self, dataset: ShardDataset, num_batches: int | None, num_workers: int, pin_memory: bool) -> None:
        # named `pipeline`, not `dataset`: Lightning warns about any sized loader over an IterableDataset
        self.pipeline = dataset
        self.batch_sampler = None  # with `sampler` below, what Lightning inspects to see that nothing shuffles
        self.num_batches = num_batches
        options: dict[str, Any] = {"prefetch_factor": 2} if num_workers > 0 else {}
        loader = wds.WebLoader(dataset, batch_size=None, num_workers=num_workers, pin_memory=pin_memory, **options)
        self.loader = loader.with_epoch(num_batches) if num_batches else loader

    @property
    def sampler(self) -> ShardDataset:
        """What Lightning calls ``set_epoch(epoch)`` on at the start of each epoch (as on a DistributedSampler)."""
        return self.pipeline

    def set_epoch(self, epoch: int) -> None:
        """Shard order and shuffling of the next pass depend on the epoch."""
        self.pipeline.set_epoch(epoch)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.loader)

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError("this loader makes one pass over its shards; its length is unknown")
        return self.num_batches
