"""``ShardDataset``: the pipeline that runs in each loader worker and yields collated batches.

Stages, per worker: shard stream (resampled with replacement, or shuffled, per source) -> split by node
(rank) and by worker -> tar reading -> weighted mix of the sources -> shuffle buffer -> decode, tokenise and
transform (bad samples skipped and counted) -> batch and collate. Shard streams are seeded alike on every
rank and worker (by ``seed`` and the epoch), so the splits are disjoint slices of one stream; shuffle buffers
and the source mix are seeded by rank and worker too.

Validation reads every source in full and in order (weights apply to training only), every shard in every
worker, and splits by sample (sample i goes to rank and worker i mod (world size x workers)), which stays
balanced however few shards there are.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Iterator
from itertools import chain, count, islice
from typing import Any

from torch.utils.data import IterableDataset, get_worker_info

from data_modules.collate import collate
from data_modules.encoding import Example, SampleEncoder
from data_modules.shards import ShardSource
from data_modules.skips import SkipCounter, SkipSample
from data_modules.tar_reader import read_tar_samples

MAX_EMPTY_SHARDS = 100
"""A resampled stream stops with an error after this many shards in a row gave no sample."""
MAX_CONSECUTIVE_SKIPS = 10_000
"""The pipeline stops with an error after this many bad samples in a row (the data is unusable)."""


def make_seed(*parts: Any) -> int:
    """A 63-bit seed from any printable values, the same in every process."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1


def mix_samples(streams: list[Iterator[Any]], weights: list[float], rng: random.Random) -> Iterator[Any]:
    """Draw each next sample from a stream chosen with probability proportional to its weight; a stream that
    ends is dropped and the others go on."""
    streams, weights = list(streams), list(weights)
    while streams:
        index = rng.choices(range(len(streams)), weights=weights)[0]
        try:
            yield next(streams[index])
        except StopIteration:
            del streams[index], weights[index]


def shuffle_samples(samples: Iterable[Any], buffer_size: int, rng: random.Random) -> Iterator[Any]:
    """Shuffle a stream through a buffer of ``buffer_size`` items."""
    buffer: list[Any] = []
    for sample in samples:
        if len(buffer) < buffer_size:
            buffer.append(sample)
            continue
        index = rng.randrange(buffer_size)
        yield buffer[index]
        buffer[index] = sample
    rng.shuffle(buffer)
    yield from buffer


class ShardDataset(IterableDataset):
    """Batches from WebDataset shards, as a ``DataLoader`` with ``batch_size=None`` expects.

    Each batch is ``collate``'s dict plus ``skipped``: the samples (and shards) this worker skipped since its
    previous batch, per reason.

    Args:
        sources: shard sources; samples are drawn from them in proportion to their weights.
        encoder: raw sample -> ``Example``.
        batch_size: samples per batch (the last batch of a finite stream may be smaller).
        pad_token_id: padding id of ``input_ids``.
        training: shuffle and split by shard (True), or read in order and split by sample (False).
        resampled: training shards are drawn with replacement, endlessly (needs a fixed epoch length).
        shuffle_buffer: samples held by the shuffle buffer; 0 or 1 turns it off.
        seed: base of every seed.
        rank: this process's rank.
        world_size: number of ranks.
        report_interval: least seconds between two log messages about skipped samples.
    """

    def __init__(
        self,
        sources: list[ShardSource],
        encoder: SampleEncoder,
        batch_size: int,
        pad_token_id: int,
        training: bool = True,
        resampled: bool = True,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        report_interval: float = 60.0,
    ) -> None:
        super().__init__()
        if not sources:
            raise ValueError("ShardDataset needs at least one shard source")
        self.sources = sources
        self.encoder = encoder
        self.batch_size = batch_size
        self.pad_token_id = pad_token_id
        self.training = training
        self.resampled = resampled
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.report_interval = report_interval
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Shard order and shuffling depend on the epoch; call before iterating (the loader does)."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, num_workers = (0, 1) if info is None else (info.id, info.num_workers)
        counter = SkipCounter(self.report_interval)
        rng = random.Random(make_seed(self.seed, self.epoch, self.rank, worker, "samples"))
        streams = [self._read(index, worker, num_workers, counter) for index in range(len(self.sources))]
        if not self.training:  # every source in full and in order, the same stream in every process, then split
            position = self.rank * num_workers + worker
            samples = islice(chain.from_iterable(streams), position, None, self.world_size * num_workers)
        elif len(streams) == 1:
            samples = streams[0]
        else:
            samples = mix_samples(streams, [source.weight for source in self.sources], rng)
        if self.training and self.shuffle_buffer > 1:
            samples = shuffle_samples(samples, self.shuffle_buffer, rng)
        yield from self._batches(self._encode(samples, counter), counter)

    def _read(self, index: int, worker: int, num_workers: int, counter: SkipCounter) -> Iterator[dict[str, Any]]:
        urls: Iterable[str] = self.sources[index].urls
        if not self.training:
            return read_tar_samples(urls, counter)
        shard_rng = random.Random(make_seed(self.seed, self.epoch, index, "shards"))
        if self.resampled:
            urls = (shard_rng.choice(self.sources[index].urls) for _ in count())
        else:
            urls = list(urls)
            shard_rng.shuffle(urls)
        urls = islice(urls, self.rank, None, self.world_size)
        urls = islice(urls, worker, None, num_workers)
        return read_tar_samples(urls, counter, max_empty_shards=MAX_EMPTY_SHARDS if self.resampled else None)

    def _encode(self, samples: Iterable[dict[str, Any]], counter: SkipCounter) -> Iterator[Example]:
        in_a_row = 0
        for sample in samples:
            where = f"{sample.get('__url__', '')}:{sample.get('__key__', '')}"
            try:
                example = self.encoder(sample)
            except SkipSample as skip:
                counter.skip(skip.reason, where, skip.detail)
            except Exception as error:
                counter.skip("error", where, f"{type(error).__name__}: {error}")
            else:
                in_a_row = 0
                yield example
                continue
            in_a_row += 1
            if in_a_row >= MAX_CONSECUTIVE_SKIPS:
                raise RuntimeError(f"{in_a_row} bad samples in a row, the data is unusable: {dict(counter.totals)}")

    def _batches(self, examples: Iterable[Example], counter: SkipCounter) -> Iterator[dict[str, Any]]:
        # a full batch leaves when the next sample arrives (or the stream ends), so that the skips at the end
        # of a finite stream are still reported in its last batch
        batch: list[Example] = []
        for example in examples:
            if len(batch) == self.batch_size:
                yield self._collate(batch, counter)
                batch = []
            batch.append(example)
        if batch:
            yield self._collate(batch, counter)

    def _collate(self, batch: list[Example], counter: SkipCounter) -> dict[str, Any]:
        out = collate(batch, self.pad_token_id)
        out["skipped"] = counter.take()
        return out
