"""``WebDatasetDataModule``: the LightningDataModule shared by the caption and instruction data. It holds the
configuration (shards, tokenizer, image preprocessing, template, lengths, batching), builds a ``ShardDataset``
per split in ``setup`` with this process's rank and world size, and hands out ``ShardLoader``s whose epochs
have the same number of batches on every rank, so that DDP never waits on a rank that ran out of data.

Batches are dicts (see ``data_modules.collate.collate``): ``input_ids`` (B, T) long, right-padded with the
tokenizer's pad id; ``attention_mask`` (B, T) bool; ``labels`` (B, T) long, -100 except on answer tokens and
the eos after each answer; ``pixel_values`` (n_images, 3, H, W) float for the samples that have an image, in
batch order, or None; ``has_image`` (B,) bool; ``keys`` (the B sample keys); and ``skipped``, a dict
reason -> count of the bad samples the producing worker skipped since its previous batch (summed over
batches, it is the run's total; the reasons are listed in ``data_modules.skips``).

Epoch length: ``epoch_length`` batches per rank, or else ceil(samples / (world size x batch size)) with the
samples counted from the ``sizes.json`` beside the shards. Workers batch their own samples, so with
``resampled=False`` the last batch of each worker's pass may be partial and a fixed-length epoch may cut or
repeat a few samples of a pass (with the default resampling, an epoch is a number of batches anyway).

Validation without ``val_epoch_length`` makes one pass on a single rank; on several ranks it counts the
samples from ``sizes.json`` and pads the ranks that run short by reading from their start again, so a few
samples may count twice.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import torch
import torch.distributed as dist
from lightning.pytorch import LightningDataModule

from data_modules.encoding import SampleEncoder, SampleParser
from data_modules.loader import ShardLoader
from data_modules.pipeline import ShardDataset
from data_modules.resumable import ResumableLoader
from data_modules.shards import ShardSource, count_samples, parse_sources
from data_modules.templates import get_template
from vl_mamba.encoders import ImageTransform
from vl_mamba.tokenizer import TextTokenizer
from vl_mamba.utils.logging import get_logger

log = get_logger(__name__)

DEFAULT_IMAGE_CONFIG: dict[str, Any] = {
    "input_size": (3, 384, 384),
    "mean": (0.5, 0.5, 0.5),
    "std": (0.5, 0.5, 0.5),
    "interpolation": "bicubic",
}
"""SigLIP-SO400M/14-384's preprocessing, used until the model's encoder config is linked in."""


class WebDatasetDataModule(LightningDataModule):
    """Image-text WebDataset shards -> training and validation batches. Subclasses set the sample layout.

    Args:
        train_shards: training shards: a spec (brace pattern, glob, directory, file, URL, ``pipe:`` command,
            or a list of them) or ``{spec: weight}`` to mix several sources.
        val_shards: validation shards, same forms; None for no validation.
        tokenizer: tokenizer.json path, directory or hub id (linked from the model).
        image_config: the encoder's ``data_config`` (input_size, mean, std, interpolation; linked from the
            model); None uses 384 px with mean and std 0.5.
        num_visual_tokens: tokens one image becomes in the model (linked from the model); they count towards
            ``max_length`` and are never cut.
        template: conversation template name (``plain``, ``vicuna_v1``...); None uses the class's default.
        max_length: most tokens per sample, visual tokens included; longer samples are cut from the right.
        batch_size: samples per batch on each rank.
        num_workers: loader worker processes per rank.
        shuffle_buffer: samples in each worker's shuffle buffer (training).
        epoch_length: training batches per rank per epoch; None counts them from ``sizes.json``.
        val_epoch_length: validation batches per rank; None makes one pass (single rank) or counts them from
            ``sizes.json`` (several ranks).
        resampled: draw training shards with replacement, endlessly (epochs are then ``epoch_length`` long);
            False reads each shard once per pass, which needs at least world size x workers shards.
        seed: base seed of shard order, mixing and shuffling (combined with epoch, rank and worker).
        resize: how images meet the square input: ``pad`` (LLaVA-1.5), ``squash`` or ``crop``.
        max_image_pixels: images with more pixels are skipped before decoding (decompression-bomb guard).
        pin_memory: pin batches in page-locked memory (only when CUDA is available).
        report_interval: least seconds between two log messages about skipped samples, per worker.
    """

    default_template: ClassVar[str] = "plain"
    parser: ClassVar[SampleParser]

    def __init__(
        self,
        train_shards: str | list[str] | dict[str, float] | None = None,
        val_shards: str | list[str] | dict[str, float] | None = None,
        tokenizer: str = "EleutherAI/gpt-neox-20b",
        image_config: dict[str, Any] | None = None,
        num_visual_tokens: int = 0,
        template: str | None = None,
        max_length: int = 2048,
        batch_size: int = 8,
        num_workers: int = 4,
        shuffle_buffer: int = 1000,
        epoch_length: int | None = None,
        val_epoch_length: int | None = None,
        resampled: bool = True,
        seed: int = 0,
        resize: Literal["pad", "squash", "crop"] = "pad",
        max_image_pixels: int = 50_000_000,
        pin_memory: bool = True,
        report_interval: float = 60.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.train_shards = train_shards
        self.val_shards = val_shards
        self.tokenizer_name = tokenizer
        self.image_config = dict(image_config or DEFAULT_IMAGE_CONFIG)
        self.num_visual_tokens = num_visual_tokens
        self.template = get_template(template or self.default_template)
        self.template_name = template or self.default_template
        self.max_length = max_length
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.shuffle_buffer = shuffle_buffer
        self.epoch_length = epoch_length
        self.val_epoch_length = val_epoch_length
        self.resampled = resampled
        self.seed = seed
        self.resize = resize
        self.max_image_pixels = max_image_pixels
        self.pin_memory = pin_memory and torch.cuda.is_available()
        self.report_interval = report_interval
        if batch_size < 1 or num_workers < 0 or max_length <= num_visual_tokens:
            raise ValueError(
                f"need batch_size >= 1, num_workers >= 0 and max_length > num_visual_tokens; got {batch_size}, "
                f"{num_workers}, {max_length} and {num_visual_tokens}"
            )
        self._tokenizer: TextTokenizer | None = None
        self.train_dataset: ShardDataset | None = None
        self.val_dataset: ShardDataset | None = None
        self.train_batches: int | None = None
        self.val_batches: int | None = None

    @property
    def tokenizer(self) -> TextTokenizer:
        """The text tokenizer, loaded on first use."""
        if self._tokenizer is None:
            self._tokenizer = TextTokenizer.load(self.tokenizer_name)
        return self._tokenizer

    def build_encoder(self) -> SampleEncoder:
        """The per-sample encoder the workers run."""
        if not hasattr(type(self), "parser"):
            raise TypeError(f"{type(self).__name__} sets no sample parser; use CaptionDataModule or InstructDataModule")
        return SampleEncoder(
            parser=type(self).parser,
            tokenizer=self.tokenizer,
            template=self.template,
            transform=ImageTransform(self.image_config, resize=self.resize),
            max_length=self.max_length,
            num_visual_tokens=self.num_visual_tokens,
            max_image_pixels=self.max_image_pixels,
        )

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets of the splits this stage needs, for this process's rank."""
        rank, world_size = self._rank_and_world_size()
        encoder = self.build_encoder()
        common = {
            "encoder": encoder,
            "batch_size": self.batch_size,
            "pad_token_id": self.tokenizer.pad_token_id,
            "seed": self.seed,
            "rank": rank,
            "world_size": world_size,
            "report_interval": self.report_interval,
        }
        if self.train_shards is not None and stage in (None, "fit"):
            sources = parse_sources(self.train_shards)
            self.train_batches = self._train_batches(sources, world_size)
            self.train_dataset = ShardDataset(
                sources, training=True, resampled=self.resampled, shuffle_buffer=self.shuffle_buffer, **common
            )
            log.info("training data: %s, %s batches per rank per epoch", _describe(sources), self.train_batches)
        if self.val_shards is not None and stage in (None, "fit", "validate"):
            sources = parse_sources(self.val_shards)
            self.val_batches = self._val_batches(sources, world_size)
            self.val_dataset = ShardDataset(sources, training=False, resampled=False, shuffle_buffer=0, **common)
            length = f"{self.val_batches} batches per rank" if self.val_batches else "one pass"
            log.info("validation data: %s, %s", _describe(sources), length)

    def train_dataloader(self) -> ResumableLoader:
        if self.train_dataset is None:
            raise RuntimeError("no training data: set train_shards (and call setup('fit'))")
        # Resumable: `fit --ckpt_path` continues mid-epoch with the very batches an unbroken run would read.
        return ResumableLoader(ShardLoader(self.train_dataset, self.train_batches, self.num_workers, self.pin_memory))

    def val_dataloader(self) -> ShardLoader | list:
        if self.val_dataset is None:
            return []
        return ShardLoader(self.val_dataset, self.val_batches, self.num_workers, self.pin_memory)

    def test_dataloader(self) -> ShardLoader | list:
        """The validation data (``vl-mamba test`` reports its loss; benchmarks come from the callback)."""
        return self.val_dataloader()

    def predict_dataloader(self) -> ShardLoader | list:
        """The validation data: ``vl-mamba predict`` answers each sample's first question."""
        return self.val_dataloader()

    def _rank_and_world_size(self) -> tuple[int, int]:
        if self.trainer is not None:
            return self.trainer.global_rank, self.trainer.world_size
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def _train_batches(self, sources: list[ShardSource], world_size: int) -> int | None:
        if not self.resampled:
            needed = world_size * max(1, self.num_workers)
            for source in sources:
                if len(source.urls) < needed:
                    raise ValueError(
                        f"{source.name!r} has {len(source.urls)} shards, fewer than ranks x workers ({needed}): "
                        "some would read nothing; use resampled=True or more shards"
                    )
        if self.epoch_length is not None:
            return self.epoch_length
        samples = _count(sources)
        if samples is None:
            if self.resampled or world_size > 1:
                raise ValueError(
                    f"no sizes.json beside the training shards {_describe(sources)}: set epoch_length "
                    "(batches per rank per epoch)"
                )
            return None
        return max(1, math.ceil(samples / (world_size * self.batch_size)))

    def _val_batches(self, sources: list[ShardSource], world_size: int) -> int | None:
        if self.val_epoch_length is not None:
            return self.val_epoch_length
        if world_size == 1:
            return None
        samples = _count(sources)
        if samples is None:
            raise ValueError(
                f"no sizes.json beside the validation shards {_describe(sources)}: set val_epoch_length, so "
                "that every rank runs the same number of validation batches"
            )
        workers = max(1, self.num_workers)
        per_worker = math.ceil(samples / (world_size * workers))
        return max(1, workers * math.ceil(per_worker / self.batch_size))


def _count(sources: list[ShardSource]) -> int | None:
    counts = [count_samples(source.urls) for source in sources]
    return None if any(c is None for c in counts) else sum(counts)


def _describe(sources: list[ShardSource]) -> str:
    return ", ".join(f"{source.name} ({len(source.urls)} shards, weight {source.weight:g})" for source in sources)
