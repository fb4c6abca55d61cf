"""The ``vl-mamba`` LightningCLI: every shipped config parses, the tiny configs train, a stopped run resumes
exactly where it stopped, DDP runs on CPU, and configuration mistakes end with one clear line."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest

from vl_mamba.training.lightning_cli import build_cli

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
TINY = [str(CONFIGS / "tiny" / "model.yaml"), str(CONFIGS / "tiny" / "random_data.yaml")]


def overlay_sets() -> list[list[str]]:
    """Each shipped config with what it composes with: the paper model plus every overlay, and recipes."""
    base = str(CONFIGS / "model" / "vl_mamba.yaml")
    sets = [[base]]
    for path in sorted((CONFIGS / "ablations").glob("*.yaml")) + sorted((CONFIGS / "strategy").glob("*.yaml")):
        sets.append([base, str(path)])
    for path in sorted(CONFIGS.glob("*.yaml")):
        sets.append([base, str(path)] if path.name.startswith("stage") else [str(path)])
    for path in sorted((CONFIGS / "tiny").glob("*.yaml")):
        if path.name != "model.yaml":
            sets.append([*TINY[:1], str(path)])
    return sets


@pytest.mark.parametrize("configs", overlay_sets(), ids=lambda c: "+".join(Path(p).stem for p in c))
def test_every_config_parses(configs: list[str], capsys: pytest.CaptureFixture) -> None:
    args = ["fit"] + [x for c in configs for x in ("--config", c)] + ["--print_config"]
    with pytest.raises(SystemExit) as stop:
        build_cli(args)
    assert stop.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "model:" in printed and "trainer:" in printed


@pytest.mark.parametrize("extra", sorted(p.name for p in (CONFIGS / "tiny").glob("*.yaml") if p.name != "model.yaml"))
def test_tiny_configs_fast_dev_run(extra: str, tmp_path: Path) -> None:
    args = ["fit", "--config", TINY[0], "--config", str(CONFIGS / "tiny" / extra), "--trainer.fast_dev_run=2",
            "--trainer.accelerator=cpu", f"--trainer.default_root_dir={tmp_path}"]
    cli = build_cli(args)
    assert cli.trainer.global_step == 2


class _StopAt(pl.Callback):
    """Ends training after ``step`` optimiser steps, as a preempted job would end."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, *args) -> None:
        if trainer.global_step >= self.step:
            trainer.should_stop = True


def _losses(run_dir: Path) -> dict[int, float]:
    with open(run_dir / "metrics.csv") as f:
        return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")}


RESUME_SETUPS = {
    # random batches through a plain DataLoader
    "random": [*(x for c in TINY for x in ("--config", c)), "--data.init_args.num_batches=4"],
    # the real WebDataset pipeline (shards, shuffle buffer, skip counting) on a small synthetic dataset
    "webdataset": ["--config", str(CONFIGS / "demo.yaml"), "--trainer.callbacks=null",
                   "--trainer.devices=1", "--trainer.strategy=auto",
                   "--model.decoder.init_args.n_layer=1", "--model.decoder.init_args.d_model=32",
                   "--data.init_args.train_samples=32", "--data.init_args.eval_questions=6",
                   "--data.init_args.batch_size=8", "--data.init_args.num_workers=0",
                   "--data.init_args.shuffle_buffer=16"],
}


@pytest.mark.parametrize("setup", sorted(RESUME_SETUPS))
def test_resume_continues_the_loss_curve(setup: str, tmp_path: Path) -> None:
    def args(version: str) -> list[str]:
        return ["fit", *RESUME_SETUPS[setup], "--trainer.accelerator=cpu",
                "--trainer.max_steps=6", "--trainer.max_epochs=-1", "--trainer.log_every_n_steps=1",
                *([f"--data.init_args.cache_dir={tmp_path}"] if setup == "webdataset" else []),
                "--trainer.limit_val_batches=0", "--trainer.enable_model_summary=false",
                "--trainer.logger=lightning.pytorch.loggers.CSVLogger", f"--trainer.logger.save_dir={tmp_path}",
                "--trainer.logger.name=run", f"--trainer.logger.version={version}",
                "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
                "--trainer.callbacks.save_last=true", "--trainer.callbacks.every_n_train_steps=1"]

    build_cli(args("full"))
    stopped = build_cli(args("stopped")[1:], run=False)  # without run, no subcommand
    stopped.trainer.callbacks.append(_StopAt(3))
    stopped.trainer.fit(stopped.model, datamodule=stopped.datamodule)
    assert stopped.trainer.global_step == 3
    last = tmp_path / "run" / "stopped" / "checkpoints" / "last.ckpt"
    resumed = build_cli(args("resumed") + [f"--ckpt_path={last}"])
    assert resumed.trainer.global_step == 6

    full = _losses(tmp_path / "run" / "full")
    before = _losses(tmp_path / "run" / "stopped")
    after = _losses(tmp_path / "run" / "resumed")
    assert sorted(full) == list(range(6))
    assert sorted(before) == [0, 1, 2] and sorted(after) == [3, 4, 5]
    for step in range(6):
        assert (before | after)[step] == pytest.approx(full[step], rel=1e-6), step
    assert (tmp_path / "run" / "full" / "config.yaml").is_file()  # the resolved config beside the checkpoints


def _run_cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vl_mamba", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def test_ddp_two_processes_on_cpu(tmp_path: Path) -> None:
    result = _run_cli("fit", "--config", TINY[0], "--config", TINY[1], "--trainer.accelerator=cpu",
                      "--trainer.devices=2", "--trainer.strategy=ddp", "--trainer.max_steps=2",
                      "--trainer.limit_val_batches=0", f"--trainer.default_root_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert list(tmp_path.rglob("*.ckpt")), "rank 0 wrote no checkpoint"


MISTAKES = {
    "connector width": (["--model.connector.init_args.in_dim=7", "--model.connector.init_args.out_dim=32"],
                        "was built for 7 -> 32"),
    "tokenizer vs embedding": (["--model.decoder.init_args.vocab_size=1000"], "the tokenizer has"),
    "nothing to train": (["--model.stage=[]"], "nothing would train"),
    "unknown stage": (["--model.stage=everything"], "unknown stage"),
    "unknown key": (["--model.connector.init_args.scann=bi"], "scann"),
}


@pytest.mark.parametrize("name", sorted(MISTAKES))
def test_mistakes_give_one_clear_line(name: str, tmp_path: Path) -> None:
    extra, expected = MISTAKES[name]
    result = _run_cli("fit", "--config", TINY[0], "--config", TINY[1], "--trainer.accelerator=cpu",
                      "--trainer.fast_dev_run=1", f"--trainer.default_root_dir={tmp_path}", *extra, timeout=300)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert expected in result.stderr, result.stderr[-2000:]


def test_checkpoint_of_another_architecture_is_refused(tmp_path: Path) -> None:
    first = _run_cli("fit", "--config", TINY[0], "--config", TINY[1], "--trainer.accelerator=cpu",
                     "--trainer.max_steps=1", "--trainer.limit_val_batches=0", f"--trainer.default_root_dir={tmp_path}")
    assert first.returncode == 0, first.stderr[-2000:]
    ckpt = next(tmp_path.rglob("*.ckpt"))
    result = _run_cli("fit", "--config", TINY[0], "--config", TINY[1], "--trainer.accelerator=cpu",
                      "--trainer.max_steps=2", "--model.decoder.init_args.d_model=48",
                      f"--trainer.default_root_dir={tmp_path / 'b'}", f"--ckpt_path={ckpt}")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "another architecture" in result.stderr, result.stderr[-2000:]
