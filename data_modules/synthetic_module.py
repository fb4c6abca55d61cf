"""``SyntheticDataModule``: the built-in coloured-shapes question dataset as an instruction DataModule.

On first use the dataset is generated into the cache (``data_modules.synthetic.ensure_synthetic``); later
runs find it there. Training reads its WebDataset shards exactly as real LLaVA data is read; the held-out
questions (``vqa-jsonl`` layout) are scored by the benchmark callback, whose root this module offers as
``eval_dir``. The word-level tokenizer of the dataset's closed vocabulary is ``builtin:synthetic-shapes``.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer

from data_modules.instructions import InstructDataModule
from data_modules.synthetic import SyntheticPaths, ensure_synthetic
from data_modules.synthetic_questions import all_texts
from data_modules.synthetic_tokenizer import build_tokenizer

MAX_OBJECTS = 4


def shapes_tokenizer() -> Tokenizer:
    """The dataset's word-level tokenizer (the same vocabulary as the ``tokenizer.json`` written with it)."""
    return build_tokenizer(all_texts(MAX_OBJECTS))


class SyntheticDataModule(InstructDataModule):
    """Instruction batches from the synthetic dataset; arguments as ``InstructDataModule`` plus:

    Args:
        train_samples: training images (each a sample of ``turns`` questions).
        eval_questions: held-out questions.
        image_size: image side in pixels.
        data_seed: seed of the generator.
        turns: questions per training image.
        question_kinds: ask only these kinds of question (e.g. ``[count_all]``; see
            ``data_modules.synthetic_questions.TEMPLATES``); all by default.
        cache_dir: where datasets are generated (default ``$VL_MAMBA_CACHE/synthetic`` or
            ``~/.cache/vl-mamba/synthetic``).
    """

    def __init__(
        self,
        tokenizer: str = "builtin:synthetic-shapes",
        image_config: dict | None = None,
        num_visual_tokens: int = 0,
        template: str | None = None,
        train_samples: int = 20000,
        eval_questions: int = 1000,
        image_size: int = 64,
        data_seed: int = 0,
        turns: int = 3,
        question_kinds: list[str] | None = None,
        cache_dir: str | None = None,
        max_length: int = 256,
        batch_size: int = 32,
        num_workers: int = 1,
        shuffle_buffer: int = 2000,
        epoch_length: int | None = None,
        seed: int = 0,
        resize: str = "squash",
    ) -> None:
        self.paths: SyntheticPaths = ensure_synthetic(
            cache_dir, train_samples=train_samples, eval_questions=eval_questions, image_size=image_size,
            seed=data_seed, turns=turns, max_objects=MAX_OBJECTS, kinds=question_kinds,
        )
        super().__init__(
            train_shards=self.paths.train_pattern,
            val_shards=None,
            tokenizer=tokenizer,
            image_config=image_config,
            num_visual_tokens=num_visual_tokens,
            template=template,
            max_length=max_length,
            batch_size=batch_size,
            num_workers=num_workers,
            shuffle_buffer=shuffle_buffer,
            epoch_length=epoch_length,
            seed=seed,
            resize=resize,
        )

    @property
    def eval_dir(self) -> Path:
        """The held-out questions, in the ``vqa-jsonl`` benchmark layout."""
        return self.paths.eval_dir
