"""The sweep spec: a YAML file saying which ``vl-mamba`` runs make up a sweep, how each logs, what is collected
from them, and how a SLURM array or a W&B sweep would run them. ``load_spec`` reads and checks one; the format is
documented in ``configs/sweeps/scan_directions.yaml`` and in ``vl_mamba.sweeps``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

LOGGER_CHOICES = ("csv", "tensorboard", "wandb")
SUBCOMMANDS = ("fit", "validate", "test", "predict")


@dataclass
class SlurmOptions:
    """How ``--slurm OUT.sh`` writes the array script."""

    gpus_per_trial: int = 1
    """GPUs (and tasks: one process per GPU, as Lightning expects under SLURM) per trial, on one node."""
    cpus_per_task: int = 8
    """CPU cores per task (data loading workers)."""
    time: str = "24:00:00"
    """Wall-clock limit of each trial."""
    partition: str | None = None
    """SLURM partition."""
    account: str | None = None
    """SLURM account."""
    mem: str | None = None
    """Memory per node (e.g. ``200G``); None leaves the cluster default."""
    max_parallel: int | None = None
    """Most array tasks running at once (``--array=0-N%max_parallel``)."""
    python: str = "python"
    """The Python that runs ``-m vl_mamba`` on the nodes (after ``setup``)."""
    setup: list[str] = field(default_factory=list)
    """Shell lines run before the trial (``module load ...``, ``source venv/bin/activate``)."""
    sbatch: list[str] = field(default_factory=list)
    """Further ``#SBATCH`` options, e.g. ``--constraint=a100``."""


@dataclass
class WandbOptions:
    """How ``--wandb OUT.yaml`` writes the W&B sweep configuration."""

    project: str = "vl-mamba"
    """W&B project of the runs."""
    entity: str | None = None
    """W&B entity (team or user); None uses the default."""
    method: str = "grid"
    """W&B search method: ``grid`` runs the spec's grid; ``random`` / ``bayes`` sample from its values."""
    goal: str = "minimize"
    """Whether the plotted metric is minimised or maximised (W&B's ``metric.goal``)."""


@dataclass
class SweepSpec:
    """A sweep: the cartesian product of ``grid``, each combination one ``vl-mamba <subcommand>`` run."""

    name: str
    """Sweep name (default: the spec file's stem)."""
    configs: list[str]
    """``--config`` files of every trial, in order (later files win); paths relative to the working directory."""
    grid: dict[str, list[Any]] = field(default_factory=dict)
    """Config key -> values; trials are the cartesian product, in key order (the last key varies fastest)."""
    fixed: dict[str, Any] = field(default_factory=dict)
    """Config key -> value that every trial gets (after the configs, before the grid values)."""
    exclude: list[dict[str, Any]] = field(default_factory=list)
    """Combinations left out: a trial is dropped when it has every key-value pair of one entry."""
    labels: dict[str, str] = field(default_factory=dict)
    """Grid key -> short label used in trial names (default: the key's last part, or the class's name)."""
    subcommand: str = "fit"
    """``fit``, ``validate``, ``test`` or ``predict``."""
    output: str = ""
    """Folder of the sweep: one sub-folder per trial, the results CSV and the chart (default runs/sweeps/NAME)."""
    metrics: list[str] = field(default_factory=lambda: ["val/loss"])
    """Logged scalars whose final values are collected (e.g. ``val/loss``, ``val/textvqa/accuracy``)."""
    plot: str = ""
    """Metric of the bar chart (default: the first of ``metrics``)."""
    loggers: list[str] | str = field(default_factory=lambda: ["csv"])
    """What each trial logs to, in its own folder: a list of ``csv``, ``tensorboard``, ``wandb``; or ``keep``
    to leave the configured loggers (results are then read from whatever logs land in the trial folder)."""
    timeout_s: float | None = None
    """A trial running longer is stopped and reported as failed."""
    slurm: SlurmOptions = field(default_factory=SlurmOptions)
    """Options of the SLURM array script."""
    wandb: WandbOptions = field(default_factory=WandbOptions)
    """Options of the W&B sweep file."""

    def __post_init__(self) -> None:
        """Fill the defaults that depend on other fields and check the spec."""
        self.output = self.output or f"runs/sweeps/{self.name}"
        self.plot = self.plot or (self.metrics[0] if self.metrics else "")
        if self.subcommand not in SUBCOMMANDS:
            raise ValueError(f"subcommand must be one of {SUBCOMMANDS}, got {self.subcommand!r}")
        if not self.configs:
            raise ValueError("configs: give at least one --config file")
        for key, values in self.grid.items():
            if not isinstance(values, list) or not values:
                raise ValueError(f"grid.{key}: give a non-empty list of values")
        overlap = set(self.grid) & set(self.fixed)
        if overlap:
            raise ValueError(f"keys both fixed and in the grid: {sorted(overlap)}")
        for entry in self.exclude:
            unknown = set(entry) - set(self.grid)
            if unknown:
                raise ValueError(f"exclude: {sorted(unknown)} are not grid keys")
        unknown_labels = set(self.labels) - set(self.grid)
        if unknown_labels:
            raise ValueError(f"labels: {sorted(unknown_labels)} are not grid keys")
        if self.loggers != "keep":
            bad = [x for x in self.loggers if x not in LOGGER_CHOICES]
            if isinstance(self.loggers, str) or bad:
                raise ValueError(f"loggers: a list of {LOGGER_CHOICES}, or 'keep'; got {self.loggers!r}")
        if self.wandb.goal not in ("minimize", "maximize"):
            raise ValueError(f"wandb.goal must be 'minimize' or 'maximize', got {self.wandb.goal!r}")


def load_spec(path: str | Path) -> SweepSpec:
    """Read and check a sweep spec; unknown keys are an error that names them."""
    path = Path(path)
    with open(path) as f:
        raw = yaml.safe_load(f) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a sweep spec is a mapping")
    raw = dict(raw)
    raw.setdefault("name", path.stem)
    try:
        raw["slurm"] = _build(SlurmOptions, raw.get("slurm") or {}, "slurm")
        raw["wandb"] = _build(WandbOptions, raw.get("wandb") or {}, "wandb")
        return _build(SweepSpec, raw, "")
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    """``cls(**values)``, refusing keys that ``cls`` does not have (named with their ``where.`` prefix)."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ValueError(f"unknown keys {[prefix + k for k in unknown]}; known: {sorted(names)}")
    return cls(**values)
