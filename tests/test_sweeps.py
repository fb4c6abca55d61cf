"""Sweeps: grid expansion, trial names and CLI values; every shipped sweep spec gives commands LightningCLI
accepts; a real two-trial sweep of the tiny model writes its CSV and chart, a rerun skips both trials, a failing
trial is reported while the next one still runs; the SLURM script runs a trial and the W&B file's command parses.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vl_mamba.cli import main as vl_mamba_main
from vl_mamba.sweeps import (
    Trial,
    build_trials,
    cli_value,
    expand_grid,
    gpu_slots,
    load_spec,
    run_trial,
    run_trials,
    slurm_script,
    trial_names,
    wandb_sweep_config,
)
from vl_mamba.sweeps.naming import MAX_LENGTH
from vl_mamba.sweeps.runner import _environment
from vl_mamba.training.lightning_cli import build_cli

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted((ROOT / "configs" / "sweeps").glob("*.yaml"))
TINY_SPEC = ROOT / "configs" / "sweeps" / "tiny_scan.yaml"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _rows(path: Path) -> dict[str, dict[str, str]]:
    """results.csv as trial name -> row."""
    with open(path, newline="") as f:
        return {row["trial"]: row for row in csv.DictReader(f)}


def _assert_png(path: Path) -> None:
    """A non-trivial PNG file is there."""
    assert path.is_file(), path
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert path.stat().st_size > 2000


# ---- grid, values, names ------------------------------------------------------------------------------------------


def test_grid_is_the_product_in_key_order_minus_exclusions() -> None:
    grid = {"a": [1, 2], "b": ["x", "y", "z"]}
    combos = expand_grid(grid)
    assert combos == [{"a": a, "b": b} for a in (1, 2) for b in ("x", "y", "z")]
    kept = expand_grid(grid, exclude=[{"a": 2, "b": "y"}, {"b": "z"}])
    assert kept == [{"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"a": 2, "b": "x"}]
    assert expand_grid({}) == [{}]


@pytest.mark.parametrize(
    "value",
    ["bi", 3, 0.5, 1e-05, 1e20, True, False, None, [1, 2.5e-7], {"d_state": 16, "scan": "uni"}, "true", "1",
     "{00000..00009}.tar", "a: b", ""],
)
def test_cli_values_parse_back_to_the_value(value: object) -> None:
    assert yaml.safe_load(cli_value(value)) == value


def test_trial_names_are_short_safe_unique_and_deterministic() -> None:
    combos = expand_grid({
        "model.connector.class_path": ["vl_mamba.connectors.VSSL2Connector", "vl_mamba.connectors.VSSMLPConnector"],
        "model.connector.init_args.scan": ["uni", "bi"],
        "seed_everything": [0],
    })
    names = trial_names(combos, {"seed_everything": "seed"})
    assert names[0] == "connector=VSSL2Connector__scan=uni__seed=0"
    assert names == trial_names(combos, {"seed_everything": "seed"})
    assert len(set(names)) == len(names)
    # keys with the same last part are told apart by their parents
    names = trial_names([{"model.encoder.init_args.lr": 1, "model.decoder.init_args.lr": 2}])
    assert names == ["encoder.lr=1__decoder.lr=2"]
    # unsafe characters are replaced; values that then collide get a hash; long names end in a hash
    names = trial_names([{"tag": "a b"}, {"tag": "a/b"}, {"tag": "a:b"}])
    assert all(re.fullmatch(r"[A-Za-z0-9._+=-]+", n) for n in names) and len(set(names)) == 3
    long = trial_names([{"data.init_args.train_shards": ["x" * 80, "y" * 80]}])[0]
    assert len(long) == MAX_LENGTH and re.search(r"-[0-9a-f]{8}$", long)
    assert trial_names([{}]) == ["base"]


def test_gpu_slots_share_the_gpus_out() -> None:
    assert gpu_slots(None, 3) == [None, None, None]
    assert gpu_slots(["0", "1", "2", "3"], 2) == [["0", "1"], ["2", "3"]]
    assert gpu_slots(["0", "1", "2"], 3) == [["0"], ["1"], ["2"]]
    with pytest.raises(ValueError, match="need at least 4 GPUs"):
        gpu_slots(["0", "1"], 4)


def test_a_trial_gets_its_gpus_and_is_stopped_at_its_timeout(tmp_path: Path) -> None:
    trial = Trial(name="slow", overrides={}, directory=tmp_path / "slow",
                  args=("fit", "--config", str(TINY_SPEC.parents[1] / "tiny" / "model.yaml")))
    result = run_trial(trial, gpus=["3"], timeout_s=0.5)
    assert result.status == "failed" and result.duration_s < 30
    record = json.loads((trial.directory / "FAILED.json").read_text())
    assert record["timed_out"] is True and record["gpus"] == ["3"]
    assert "timeout" in (trial.directory / "error.log").read_text()
    assert not (trial.directory / "DONE.json").exists()
    script = (trial.directory / "command.sh").read_text()
    assert "CUDA_VISIBLE_DEVICES=3 " in script and script.rstrip().endswith("--trainer.devices=1")
    env = _environment(["2", "3"], threads=4)
    assert env["CUDA_VISIBLE_DEVICES"] == "2,3" and env["PYTHONPATH"].split(os.pathsep)[0] == str(ROOT)
    assert env["OMP_NUM_THREADS"] == os.environ.get("OMP_NUM_THREADS", "4")


def test_spec_mistakes_are_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("configs: [a.yaml]\ngrid: {seed_everything: [0]}\nmetric: [val/loss]\n")
    with pytest.raises(ValueError, match="unknown keys \\['metric'\\]"):
        load_spec(path)
    path.write_text("configs: [a.yaml]\ngrid: {seed_everything: [0]}\nfixed: {seed_everything: 1}\n")
    with pytest.raises(ValueError, match="both fixed and in the grid"):
        load_spec(path)
    path.write_text("configs: [a.yaml]\ngrid: {seed_everything: []}\n")
    with pytest.raises(ValueError, match="non-empty list"):
        load_spec(path)


# ---- shipped specs ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec_path", SPECS, ids=lambda p: p.stem)
def test_every_trial_of_every_shipped_spec_parses(
    spec_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(ROOT)
    spec = load_spec(spec_path)
    trials = build_trials(spec, tmp_path)
    assert len(trials) == math.prod(len(v) for v in spec.grid.values())
    assert len({t.name for t in trials}) == len(trials)
    for trial in trials:
        with pytest.raises(SystemExit) as stop:
            build_cli([*trial.args, "--print_config"])
        assert stop.value.code in (0, None), trial.name
        printed = yaml.safe_load(capsys.readouterr().out)
        for key, value in trial.overrides.items():
            node = printed
            for part in key.split("."):
                node = node[part]
            assert node == value, (trial.name, key)
        assert printed["trainer"]["default_root_dir"] == str(trial.directory)


# ---- a real sweep -------------------------------------------------------------------------------------------------


def test_tiny_sweep_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    out = tmp_path / "sweep"
    assert vl_mamba_main(["sweep", str(TINY_SPEC), "--output", str(out), "--dry-run"]) == 0
    assert not out.exists(), "a dry run writes nothing"

    assert vl_mamba_main(["sweep", str(TINY_SPEC), "--output", str(out), "--parallel", "2"]) == 0
    rows = _rows(out / "results.csv")
    assert list(rows) == ["scan=uni", "scan=bi"]
    for name, scan in (("scan=uni", "uni"), ("scan=bi", "bi")):
        row = rows[name]
        assert row["model.connector.init_args.scan"] == scan
        assert row["status"] == "done" and row["returncode"] == "0" and float(row["duration_s"]) > 0
        assert 5.0 < float(row["val/loss"]) < 15.0 and 5.0 < float(row["train/loss"]) < 15.0
        trial_dir = out / name
        assert (trial_dir / "DONE.json").is_file() and (trial_dir / "metrics.csv").is_file()
        # the override reached the run: the config saved by LightningCLI has this trial's scan order
        saved = yaml.safe_load((trial_dir / "config.yaml").read_text())
        assert saved["model"]["connector"]["init_args"]["scan"] == scan
        assert saved["trainer"]["max_steps"] == 2
    assert rows["scan=uni"]["val/loss"] != rows["scan=bi"]["val/loss"]
    _assert_png(out / "val_loss.png")

    # a rerun runs nothing: both trials are skipped and their logs are untouched
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("metrics.csv")}
    statuses = [r.status for r in run_trials(build_trials(load_spec(TINY_SPEC), out))]
    assert statuses == ["skipped", "skipped"]
    assert vl_mamba_main(["sweep", str(TINY_SPEC), "--output", str(out)]) == 0
    assert stamps == {p: p.stat().st_mtime_ns for p in out.rglob("metrics.csv")}
    assert [r["status"] for r in _rows(out / "results.csv").values()] == ["done", "done"]

    # the SLURM array script runs `vl-mamba sweep --trial` under srun (a stand-in that just runs the command)
    spec = load_spec(TINY_SPEC)
    script = tmp_path / "sweep.sh"
    assert vl_mamba_main(["sweep", str(TINY_SPEC), "--output", str(out), "--slurm", str(script)]) == 0
    text = script.read_text()
    assert "#SBATCH --array=0-1" in text and "#SBATCH --ntasks-per-node=1" in text and (out / "slurm").is_dir()
    assert "  scan=uni\n  scan=bi\n" in text
    assert text == slurm_script(spec, TINY_SPEC, build_trials(spec, out), out)
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("srun", 'exec "$@"'), ("python", f'exec {sys.executable} "$@"')):
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "SLURM_ARRAY_TASK_ID": "1", "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(ROOT)}
    task = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert task.returncode == 0, task.stderr[-2000:]
    assert "trial 1: scan=bi" in task.stdout
    assert stamps == {p: p.stat().st_mtime_ns for p in out.rglob("metrics.csv")}, "the finished trial ran again"


def test_a_failing_trial_is_reported_and_the_sweep_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    spec = yaml.safe_load(TINY_SPEC.read_text())
    spec["grid"] = {"model.connector.init_args.scan": ["diagonal", "cross"]}  # no scan order is called diagonal
    path = tmp_path / "failing.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = tmp_path / "sweep"
    assert vl_mamba_main(["sweep", str(path), "--output", str(out)]) == 1
    rows = _rows(out / "results.csv")
    failed, done = rows["scan=diagonal"], rows["scan=cross"]
    assert failed["status"] == "failed" and failed["returncode"] not in ("", "0") and failed["val/loss"] == ""
    assert (out / "scan=diagonal" / "FAILED.json").is_file() and not (out / "scan=diagonal" / "DONE.json").exists()
    assert "unknown scan order 'diagonal'" in (out / "scan=diagonal" / "error.log").read_text()
    assert done["status"] == "done" and 5.0 < float(done["val/loss"]) < 15.0
    _assert_png(out / "val_loss.png")
    # a failed trial is not finished: a rerun tries it again (and only it)
    trials = build_trials(load_spec(path), out)
    assert [t.name for t in trials if not (t.directory / "DONE.json").exists()] == ["scan=diagonal"]


# ---- W&B ----------------------------------------------------------------------------------------------------------


def test_wandb_sweep_file_drives_vl_mamba_fit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(ROOT)
    target = tmp_path / "wandb.yaml"
    assert vl_mamba_main(["sweep", str(TINY_SPEC), "--output", str(tmp_path / "out"), "--wandb", str(target)]) == 0
    written = yaml.safe_load(target.read_text())
    spec = load_spec(TINY_SPEC)
    assert written == wandb_sweep_config(spec, tmp_path / "out")
    assert written["method"] == "grid" and written["metric"] == {"name": "val/loss", "goal": "minimize"}
    assert written["parameters"] == {"model.connector.init_args.scan": {"values": ["uni", "bi"]}}
    command = written["command"]
    assert command[:5] == ["${env}", "${interpreter}", "-m", "vl_mamba", "fit"] and command[-1] == "${args}"
    # what a W&B agent runs for the second grid point: ${args} becomes --key=value
    args = command[4:-1] + ["--model.connector.init_args.scan=bi", "--print_config"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        build_cli(args)
    assert stop.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["connector"]["init_args"]["scan"] == "bi"
    assert printed["trainer"]["max_steps"] == 2
    logger = printed["trainer"]["logger"][0]
    assert logger["class_path"] == "lightning.pytorch.loggers.WandbLogger"
    assert logger["init_args"]["project"] == "vl-mamba" and logger["dict_kwargs"] == {"group": "tiny_scan"}


def test_every_logger_kind_parses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(ROOT)
    spec = load_spec(TINY_SPEC)
    spec.loggers = ["csv", "tensorboard", "wandb"]
    trial = build_trials(spec, tmp_path)[0]
    with pytest.raises(SystemExit):
        build_cli([*trial.args, "--print_config"])
    loggers = yaml.safe_load(capsys.readouterr().out)["trainer"]["logger"]
    assert [x["class_path"].rsplit(".", 1)[1] for x in loggers] == ["CSVLogger", "TensorBoardLogger", "WandbLogger"]
    assert all(x["init_args"]["save_dir"] == str(trial.directory) for x in loggers)
    assert loggers[2]["init_args"]["name"] == "tiny_scan/scan=uni"
