"""The DataModules end to end on tiny shards: epoch lengths from ``sizes.json``, equal batch counts on every
DDP rank with disjoint data (split by node and by worker), validation split by sample, epoch reseeding,
weighted mixing, a Lightning ``fit``, and instantiation from a YAML config through jsonargparse."""

from __future__ import annotations

import io
import json
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from PIL import Image

from data_modules import CaptionDataModule, write_shard, write_sizes

TINY_IMAGES = {"input_size": (3, 16, 16), "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}


def jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (12, 20, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


def caption_shards(directory: Path, shards: int, per_shard: int, prefix: str = "s") -> set[str]:
    directory.mkdir(parents=True, exist_ok=True)
    sizes, keys = {}, set()
    image = jpeg(0)
    for shard in range(shards):
        samples = [
            (f"{prefix}{shard}x{i}", {"jpg": image, "txt": f"photo {i} of {shard}".encode()}) for i in range(per_shard)
        ]
        sizes[f"{shard:05d}.tar"] = write_shard(directory / f"{shard:05d}.tar", samples)
        keys |= {key for key, _ in samples}
    write_sizes(directory, sizes)
    return keys


def caption_module(tokenizer_path: Path, rank_world: tuple[int, int] = (0, 1), **kwargs) -> CaptionDataModule:
    defaults = {"batch_size": 4, "num_workers": 0, "image_config": TINY_IMAGES, "shuffle_buffer": 10}
    module = CaptionDataModule(tokenizer=str(tokenizer_path), **{**defaults, **kwargs})
    module._rank_and_world_size = lambda: rank_world  # what a Trainer with this rank and world size reports
    return module


def keys_of(loader) -> list[list[str]]:
    return [batch["keys"] for batch in loader]


def test_epoch_length_comes_from_sizes_json(tmp_path: Path, tokenizer_path: Path) -> None:
    all_keys = caption_shards(tmp_path, shards=3, per_shard=8)
    module = caption_module(tokenizer_path, train_shards=str(tmp_path), num_workers=2)
    module.setup("fit")
    loader = module.train_dataloader()
    assert len(loader) == 24 // 4
    batches = keys_of(loader)
    assert len(batches) == 6 and all(len(b) == 4 for b in batches)
    assert {key for batch in batches for key in batch} <= all_keys
    fixed = caption_module(tokenizer_path, train_shards=str(tmp_path), epoch_length=5)
    fixed.setup("fit")
    assert len(keys_of(fixed.train_dataloader())) == len(fixed.train_dataloader()) == 5


def test_without_sizes_json_resampled_training_needs_epoch_length(tmp_path: Path, tokenizer_path: Path) -> None:
    caption_shards(tmp_path, shards=1, per_shard=4)
    (tmp_path / "sizes.json").unlink()
    with pytest.raises(ValueError, match="epoch_length"):
        caption_module(tokenizer_path, train_shards=str(tmp_path)).setup("fit")


def test_ranks_get_equal_batches_and_disjoint_shards(tmp_path: Path, tokenizer_path: Path) -> None:
    all_keys = caption_shards(tmp_path, shards=4, per_shard=6)
    per_rank = []
    for rank in range(2):
        module = caption_module(
            tokenizer_path, (rank, 2), train_shards=str(tmp_path), resampled=False, num_workers=2, batch_size=3
        )
        module.setup("fit")
        batches = keys_of(module.train_dataloader())
        assert len(batches) == len(module.train_dataloader()) == 4  # 24 samples / (2 ranks x 3)
        per_rank.append({key for batch in batches for key in batch})
    assert not per_rank[0] & per_rank[1]
    assert per_rank[0] | per_rank[1] == all_keys
    shard_of = {key[: key.index("x")] for key in per_rank[0]}
    assert len(shard_of) == 2  # two whole shards per rank, one per worker

    resampled = []
    for rank in range(2):
        module = caption_module(tokenizer_path, (rank, 2), train_shards=str(tmp_path), epoch_length=7, num_workers=2)
        module.setup("fit")
        batches = keys_of(module.train_dataloader())
        assert len(batches) == 7
        resampled.append(batches)
    assert resampled[0] != resampled[1]


def test_too_few_shards_for_unresampled_training_is_an_error(tmp_path: Path, tokenizer_path: Path) -> None:
    caption_shards(tmp_path, shards=2, per_shard=4)
    module = caption_module(tokenizer_path, (0, 2), train_shards=str(tmp_path), resampled=False, num_workers=2)
    with pytest.raises(ValueError, match="fewer than ranks x workers"):
        module.setup("fit")


def test_validation_splits_by_sample_and_balances_ranks(tmp_path: Path, tokenizer_path: Path) -> None:
    all_keys = caption_shards(tmp_path, shards=1, per_shard=10)
    seen, counts = [], []
    for rank in range(2):
        module = caption_module(tokenizer_path, (rank, 2), val_shards=str(tmp_path), batch_size=2, num_workers=2)
        module.setup("validate")
        batches = keys_of(module.val_dataloader())
        counts.append((len(batches), len(module.val_dataloader())))
        seen.append({key for batch in batches for key in batch})
    assert counts[0] == counts[1] and counts[0][0] == counts[0][1]
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == all_keys
    single = caption_module(tokenizer_path, val_shards=str(tmp_path), batch_size=3)
    single.setup("validate")
    assert [len(b) for b in keys_of(single.val_dataloader())] == [3, 3, 3, 1]  # one pass, in order


def test_validation_reads_every_source_once(tmp_path: Path, tokenizer_path: Path) -> None:
    all_keys = caption_shards(tmp_path / "a", shards=2, per_shard=5, prefix="a")
    all_keys |= caption_shards(tmp_path / "b", shards=1, per_shard=4, prefix="b")
    spec = {str(tmp_path / "a"): 5.0, str(tmp_path / "b"): 1.0}  # weights apply to training only
    seen = []
    for rank in range(2):
        module = caption_module(tokenizer_path, (rank, 2), val_shards=spec, batch_size=2)
        module.setup("validate")
        assert len(module.val_dataloader()) == 4  # 14 samples, 7 per rank, in batches of 2
        seen.append([key for batch in keys_of(module.val_dataloader()) for key in batch])
    assert [len(keys) for keys in seen] == [7, 7]
    assert not set(seen[0]) & set(seen[1])
    assert set(seen[0]) | set(seen[1]) == all_keys


def test_the_epoch_reseeds_shards_and_shuffling(tmp_path: Path, tokenizer_path: Path) -> None:
    caption_shards(tmp_path, shards=4, per_shard=5)
    module = caption_module(tokenizer_path, train_shards=str(tmp_path), epoch_length=4)
    module.setup("fit")
    loader = module.train_dataloader()
    first = keys_of(loader)
    assert keys_of(loader) == first  # deterministic for a given epoch
    loader.set_epoch(1)
    assert keys_of(loader) != first


def test_sources_mix_in_proportion_to_their_weights(tmp_path: Path, tokenizer_path: Path) -> None:
    caption_shards(tmp_path / "a", shards=2, per_shard=30, prefix="a")
    caption_shards(tmp_path / "b", shards=2, per_shard=30, prefix="b")
    spec = {str(tmp_path / "a"): 3.0, str(tmp_path / "b" / "*.tar"): 1.0}
    module = caption_module(tokenizer_path, train_shards=spec, batch_size=8, epoch_length=40, max_length=16)
    module.setup("fit")
    keys = [key for batch in keys_of(module.train_dataloader()) for key in batch]
    share = sum(key.startswith("a") for key in keys) / len(keys)
    assert len(keys) == 320 and 0.68 < share < 0.82


class RecordingModule(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(()))
        self.train_keys: dict[int, list[str]] = {}
        self.val_batches = 0

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        assert batch["pixel_values"].shape[1:] == (3, 16, 16)
        self.train_keys.setdefault(self.current_epoch, []).extend(batch["keys"])
        return self.weight * batch["attention_mask"].float().mean()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.val_batches += 1

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_fit_runs_fixed_epochs_and_sets_the_epoch(tmp_path: Path, tokenizer_path: Path) -> None:
    caption_shards(tmp_path / "train", shards=3, per_shard=8)
    caption_shards(tmp_path / "val", shards=1, per_shard=5)
    data = CaptionDataModule(
        train_shards=str(tmp_path / "train"),
        val_shards=str(tmp_path / "val"),
        tokenizer=str(tokenizer_path),
        image_config=TINY_IMAGES,
        batch_size=4,
        num_workers=1,
        shuffle_buffer=8,
    )
    model = RecordingModule()
    trainer = Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=data)
    assert trainer.num_training_batches == 6
    assert [len(model.train_keys[epoch]) for epoch in (0, 1)] == [24, 24]
    assert model.train_keys[0] != model.train_keys[1]  # Lightning passed the epoch on to the shard streams
    assert data.train_dataset.epoch == 1
    assert model.val_batches == 2 * 2  # two epochs of one pass over 5 samples in batches of 4


def test_modules_build_from_a_yaml_config(tmp_path: Path, tokenizer_path: Path) -> None:
    from jsonargparse import ArgumentParser
    from lightning.pytorch import LightningDataModule

    caption_shards(tmp_path / "a", shards=1, per_shard=2)
    parser = ArgumentParser()
    parser.add_subclass_arguments(LightningDataModule, "data")
    config = f"""
data:
  class_path: data_modules.InstructDataModule
  init_args:
    train_shards:
      "{tmp_path / "a" / "{00000..00000}.tar"}": 0.7
      "{tmp_path / "a"}": 0.3
    val_shards: ["{tmp_path / "a" / "00000.tar"}"]
    tokenizer: {tokenizer_path}
    image_config: {{input_size: [3, 32, 32], mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5]}}
    num_visual_tokens: 16
    max_length: 64
    resize: squash
"""
    path = tmp_path / "data.yaml"
    path.write_text(config)
    module = parser.instantiate_classes(parser.parse_path(path)).data
    assert type(module).__name__ == "InstructDataModule"
    assert module.train_shards == {str(tmp_path / "a" / "{00000..00000}.tar"): 0.7, str(tmp_path / "a"): 0.3}
    assert module.template_name == "vicuna_v1" and module.num_visual_tokens == 16
    module.setup("fit")
    assert [source.weight for source in module.train_dataset.sources] == [0.7, 0.3]


class RankRecorder(RecordingModule):
    """Records, per rank, the keys of every training batch into a JSON file."""

    def __init__(self, out_dir: Path) -> None:
        super().__init__()
        self.out_dir = out_dir

    def on_train_end(self) -> None:
        path = self.out_dir / f"rank{self.global_rank}.json"
        path.write_text(json.dumps({"world": self.trainer.world_size, "keys": self.train_keys}))


def test_ddp_ranks_step_together_on_cpu(tmp_path: Path, tokenizer_path: Path) -> None:
    from lightning.pytorch.strategies import DDPStrategy

    caption_shards(tmp_path / "train", shards=3, per_shard=8)
    write_shard(tmp_path / "train" / "00003.tar", [(f"bad{i}", {"jpg": b"broken", "txt": b"x"}) for i in range(8)])
    data = CaptionDataModule(
        train_shards=str(tmp_path / "train" / "*.tar"),
        tokenizer=str(tokenizer_path),
        image_config=TINY_IMAGES,
        batch_size=4,
        num_workers=1,
        shuffle_buffer=4,
        epoch_length=3,
    )
    trainer = Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=2,
        strategy=DDPStrategy(start_method="fork", timeout=timedelta(seconds=120)),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(RankRecorder(tmp_path), datamodule=data)  # a rank with fewer batches would hang the all-reduce
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    assert [r["world"] for r in ranks] == [2, 2]
    for record in ranks:
        assert [len(record["keys"][epoch]) for epoch in ("0", "1")] == [12, 12]
    assert ranks[0]["keys"] != ranks[1]["keys"]  # ranks are seeded apart
