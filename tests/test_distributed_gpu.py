"""FSDP on two GPUs: the tiny model and a mid-size one train, the loss curve matches a one-GPU run (every rank
reads the same batch, so data parallelism must apply the same update), also with activation checkpointing,
and a sharded checkpoint resumes where the run stopped. Skipped unless two CUDA GPUs are present; run on a
multi-GPU machine."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs"),
]

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--config", str(ROOT / "configs/tiny/model.yaml"), "--config", str(ROOT / "configs/tiny/random_data.yaml")]
MID = ["--model.decoder.init_args.d_model=1536", "--model.decoder.init_args.n_layer=24",
       "--model.encoder.init_args.model_kwargs={embed_dim: 384, depth: 6, num_heads: 6, mlp_ratio: 4.0}",
       "--model.encoder.init_args.img_size=224", "--data.init_args.text_length=512"]
NUM_BATCHES = 4  # the random data module serves these batches, the same ones every epoch
# A constant learning rate: stopping early (max_steps) then resuming follows the same trajectory.
COMMON = ["--trainer.accelerator=gpu", "--trainer.precision=bf16-mixed", "--trainer.limit_val_batches=0",
          "--trainer.max_epochs=-1", "--trainer.enable_model_summary=false", "--model.warmup_ratio=0",
          "--model.min_lr_ratio=1.0", "--model.lr=1e-3", f"--data.init_args.num_batches={NUM_BATCHES}"]
FSDP = ["--trainer.devices=2", "--config", str(ROOT / "configs/strategy/fsdp.yaml")]
CHECKPOINTING = ["--config", str(ROOT / "configs/strategy/fsdp_checkpointing.yaml")]


def _fit(tmp: Path, name: str, *extra: str) -> dict[int, float]:
    args = [sys.executable, "-m", "vl_mamba", "fit", *TINY, *COMMON, *extra,
            "--trainer.logger=lightning.pytorch.loggers.CSVLogger", f"--trainer.logger.save_dir={tmp}",
            "--trainer.logger.name=runs", f"--trainer.logger.version={name}",
            "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
            "--trainer.callbacks.save_last=true", "--trainer.callbacks.every_n_train_steps=1"]
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    with open(tmp / "runs" / name / "metrics.csv") as f:
        return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")}


def _learned(losses: dict[int, float]) -> bool:
    """Whether the loss on the first batch fell: step NUM_BATCHES sees that batch again, after as many updates."""
    return losses[NUM_BATCHES] < losses[0]


def _close(a: dict[int, float], b: dict[int, float], rel: float) -> None:
    assert sorted(a) == sorted(b)
    for step in a:
        assert a[step] == pytest.approx(b[step], rel=rel), (step, a[step], b[step])


@pytest.mark.parametrize("size", ["tiny", "mid"])
def test_fsdp_matches_one_gpu_and_resumes(size: str, tmp_path: Path) -> None:
    extra = MID if size == "mid" else []
    single = _fit(tmp_path, "single", "--trainer.devices=1", "--trainer.max_steps=6", *extra)
    sharded = _fit(tmp_path, "fsdp", *FSDP, "--trainer.max_steps=6", *extra)
    # bf16 autocast; the reduction order differs between one and two GPUs. Measured on 2 x H100: the tiny model
    # agrees to 1e-4, the mid-size one (lr 1e-3, early steps on random data) to 3.5% at worst.
    _close(sharded, single, rel=1e-3 if size == "tiny" else 5e-2)
    assert _learned(single), single
    if size == "mid":
        return
    _fit(tmp_path, "stopped", *FSDP, "--trainer.max_steps=3", *extra)
    last = tmp_path / "runs" / "stopped" / "checkpoints" / "last.ckpt"
    assert last.is_dir(), "FSDP with state_dict_type=sharded writes a directory"
    resumed = _fit(tmp_path, "resumed", *FSDP, "--trainer.max_steps=6", f"--ckpt_path={last}", *extra)
    assert sorted(resumed) == [3, 4, 5]
    _close(resumed, {s: sharded[s] for s in (3, 4, 5)}, rel=1e-3)


@pytest.mark.parametrize("stage", ["finetune", "align"])
def test_fsdp_with_checkpointing_matches_one_gpu(stage: str, tmp_path: Path) -> None:
    # finetune: the decoder checkpoints its own blocks around their FSDP units, the ViT blocks get FSDP's wrapper.
    # align: the decoder is frozen and its blocks get FSDP's wrapper too.
    single = _fit(tmp_path, "single", "--trainer.devices=1", "--trainer.max_steps=6", f"--model.stage={stage}")
    sharded = _fit(tmp_path, "fsdp", *FSDP, *CHECKPOINTING, "--trainer.max_steps=6", f"--model.stage={stage}")
    _close(sharded, single, rel=1e-3)
    assert _learned(single), single
