"""The epoch-end benchmark callback, ``vl-mamba eval`` and ``vl-mamba chat`` on a tiny model trained for a few
steps on a small synthetic dataset: logs, tables, prediction files, and the commands' output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vl_mamba.training.lightning_cli import build_cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("demo")
    args = [
        "fit", "--config", str(ROOT / "configs" / "demo.yaml"),
        "--data.init_args.train_samples=64", "--data.init_args.eval_questions=24", f"--data.init_args.cache_dir={tmp}",
        "--data.init_args.batch_size=8", "--data.init_args.num_workers=0", "--trainer.max_epochs=1",
        "--trainer.devices=1", "--trainer.strategy=auto",  # in this process (the demo's own two would relaunch it)
        "--trainer.max_steps=3", f"--trainer.default_root_dir={tmp}",
        "--trainer.logger=lightning.pytorch.loggers.CSVLogger", f"--trainer.logger.save_dir={tmp}",
        "--model.decoder.init_args.n_layer=1", "--model.decoder.init_args.d_model=32",
    ]
    cli = build_cli(args)
    return {"cli": cli, "tmp": tmp}


def test_callback_logs_scores_and_writes_predictions(trained: dict) -> None:
    cli = trained["cli"]
    metrics = cli.trainer.logged_metrics
    assert "val/shapes/accuracy" in metrics
    for category in ("color", "shape", "count", "position", "existence"):
        assert f"val/shapes/accuracy/{category}" in metrics
    assert 0.0 <= float(metrics["val/shapes/accuracy"]) <= 1.0
    log_dir = Path(cli.trainer.log_dir) / "benchmarks"
    predictions = next(log_dir.glob("shapes-epoch0-step3.jsonl")).read_text().splitlines()
    assert len(predictions) == 24
    record = json.loads(predictions[0])
    assert {"question_id", "prompt", "prediction", "answers", "category"} <= set(record)
    assert record["prompt"].startswith("USER: ") and record["prompt"].endswith("\n<image> ASSISTANT:")
    scores = json.loads(next(log_dir.glob("shapes-epoch0-step3-scores.json")).read_text())
    assert scores["accuracy"] == pytest.approx(float(metrics["val/shapes/accuracy"]), abs=1e-6)


def test_eval_and_chat_commands(trained: dict, tmp_path: Path) -> None:
    cli, tmp = trained["cli"], trained["tmp"]
    ckpt = next(Path(cli.trainer.log_dir).rglob("last.ckpt"))
    eval_dir = cli.datamodule.eval_dir
    env = {"VL_MAMBA_CACHE": str(tmp), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-m", "vl_mamba", "eval", "--ckpt", str(ckpt), "--benchmark", f"vqa-jsonl={eval_dir}",
         "--out", str(tmp_path / "eval"), "--device", "cpu", "--max-new-tokens", "4"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "accuracy" in result.stdout
    scores = json.loads((tmp_path / "eval" / "vqa-jsonl-scores.json").read_text())
    assert 0.0 <= scores["accuracy"] <= 1.0
    image = next((eval_dir / "images").iterdir())
    result = subprocess.run(
        [sys.executable, "-m", "vl_mamba", "chat", "--ckpt", str(ckpt), "--image", str(image),
         "--prompt", "What color is the circle?", "--device", "cpu", "--max-new-tokens", "3"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip(), "chat printed no answer"


def test_predict_writes_answers(tmp_path: Path) -> None:
    tiny = [str(ROOT / "configs" / "tiny" / "model.yaml"), str(ROOT / "configs" / "tiny" / "random_data.yaml")]
    args = [
        "predict", *(x for c in tiny for x in ("--config", c)), "--trainer.accelerator=cpu",
        "--trainer.callbacks+=callbacks.JsonlPredictionWriter", f"--trainer.callbacks.output_dir={tmp_path}",
        "--trainer.limit_predict_batches=1", "--model.max_new_tokens=3", "--trainer.logger=false",
        f"--trainer.default_root_dir={tmp_path}",
    ]
    result = subprocess.run([sys.executable, "-m", "vl_mamba", *args], cwd=ROOT, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = (tmp_path / "predictions-rank0.jsonl").read_text().splitlines()
    assert len(lines) == 4  # one batch of the random data module
    record = json.loads(lines[0])
    assert record["prompt"].startswith("<image>")
    assert record["reference"] and "prediction" in record
