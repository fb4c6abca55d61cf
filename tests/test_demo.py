"""A shortened run of the demo (``configs/demo.yaml``): the dataset is generated, the model trained from scratch
and scored by the epoch-end benchmark callback, and ``vl-mamba chat`` answers about an image it has never seen.

It asks one kind of question only ("How many objects are there?"), which the demo's model learns within a few
hundred steps; the full demo asks all five categories and trains for longer (see BENCHMARKS.md)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from data_modules.synthetic_scenes import encode_png, render_scene, sample_scene
from vl_mamba.training.lightning_cli import build_cli

ROOT = Path(__file__).resolve().parents[1]
CHANCE = 1 / 4  # answers 1..4, drawn uniformly


@pytest.mark.slow
def test_shortened_demo_learns(tmp_path: Path) -> None:
    args = [
        "fit", "--config", str(ROOT / "configs" / "demo.yaml"),
        "--data.init_args.train_samples=8000", "--data.init_args.eval_questions=200",
        "--data.init_args.question_kinds=[count_all]", f"--data.init_args.cache_dir={tmp_path / 'cache'}",
        "--data.init_args.num_workers=0", "--data.init_args.batch_size=32",
        # in this process: the demo's two data-parallel processes would relaunch the test runner (see below)
        "--trainer.devices=1", "--trainer.strategy=auto",
        "--trainer.max_epochs=1", "--trainer.max_steps=250",
        f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
        f"--trainer.logger.save_dir={tmp_path}", "--model.lr=3e-3",
    ]
    cli = build_cli(args)
    log_dir = Path(cli.trainer.log_dir)
    scores = json.loads(next((log_dir / "benchmarks").glob("shapes-epoch0-step*-scores.json")).read_text())
    assert scores["accuracy"] >= 0.8 > 2 * CHANCE, scores

    scene = sample_scene(random.Random("a new image"), image_size=32)
    image = tmp_path / "new.png"
    image.write_bytes(encode_png(render_scene(scene)))
    result = subprocess.run(
        [sys.executable, "-m", "vl_mamba", "chat", "--ckpt", str(next(log_dir.rglob("last.ckpt"))),
         "--image", str(image), "--prompt", "How many objects are there?", "--device", "cpu"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1].strip() in {"1", "2", "3", "4"}, result.stdout


@pytest.mark.slow
def test_demo_runs_on_two_processes(tmp_path: Path) -> None:
    """The demo as configured, on its two data-parallel CPU processes (gloo), shortened: the warm-up on rank 0, the
    epoch-end benchmark on both ranks, the checkpoint, and both processes exit."""
    args = [
        sys.executable, "-m", "vl_mamba", "fit", "--config", str(ROOT / "configs" / "demo.yaml"),
        "--data.init_args.train_samples=1000", "--data.init_args.eval_questions=40",
        "--data.init_args.question_kinds=[count_all]", f"--data.init_args.cache_dir={tmp_path / 'cache'}",
        "--trainer.max_epochs=1", "--trainer.max_steps=30", f"--trainer.default_root_dir={tmp_path}",
        "--trainer.logger=lightning.pytorch.loggers.CSVLogger", f"--trainer.logger.save_dir={tmp_path}",
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "perception warm-up" in result.stderr
    scores = json.loads(next(tmp_path.rglob("shapes-epoch0-step*-scores.json")).read_text())
    assert 0.0 <= scores["accuracy"] <= 1.0, scores
    answers = next(tmp_path.rglob("shapes-epoch0-step*.jsonl")).read_text().splitlines()
    assert len(answers) == 40  # both ranks' shares of the questions, gathered
    assert next(tmp_path.rglob("last.ckpt")).stat().st_size > 0
