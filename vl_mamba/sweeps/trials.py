"""From a spec to trials: each trial is a name, its grid overrides, its own folder under the sweep's output, and
the full argument list of its ``vl-mamba`` run: the subcommand, the ``--config`` files, the fixed overrides,
the grid overrides, the run folder (``--trainer.default_root_dir``) and loggers writing into it, then any
extra arguments. In fixed values and extra arguments, ``{trial}`` stands for the trial's name and ``{output}``
for the sweep's output folder (e.g. to start stage 2 from the same trial of a stage-1 sweep)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vl_mamba.sweeps.grid import expand_grid, override_args
from vl_mamba.sweeps.naming import trial_names
from vl_mamba.sweeps.spec import SweepSpec


@dataclass(frozen=True)
class Trial:
    """One run of a sweep."""

    name: str
    """Folder name, made of the overrides."""
    overrides: dict[str, Any]
    """The grid values of this trial (config key -> value)."""
    directory: Path
    """The trial's folder: its logs, checkpoints, markers and captured output."""
    args: tuple[str, ...]
    """Arguments after ``vl-mamba``."""


def build_trials(spec: SweepSpec, output: str | Path | None = None, extra_args: list[str] | None = None) -> list[Trial]:
    """All trials of ``spec``, in grid order.

    Args:
        spec: the sweep.
        output: the sweep's folder (default ``spec.output``); made absolute.
        extra_args: more arguments for every trial (after everything else, so they win).
    """
    root = Path(output or spec.output).resolve()
    combos = expand_grid(spec.grid, spec.exclude)
    trials = []
    for name, overrides in zip(trial_names(combos, spec.labels), combos):
        directory = root / name
        args = [spec.subcommand, *[x for c in spec.configs for x in ("--config", c)]]
        args += [_substitute(a, name, root) for a in override_args(spec.fixed)]
        args += override_args(overrides)
        args += [f"--trainer.default_root_dir={directory}", *logger_args(spec, directory, name)]
        args += [_substitute(a, name, root) for a in extra_args or []]
        trials.append(Trial(name=name, overrides=overrides, directory=directory, args=tuple(args)))
    return trials


def logger_args(spec: SweepSpec, directory: Path, name: str) -> list[str]:
    """``--trainer.logger=[...]``: the spec's loggers writing straight into ``directory`` (none for ``keep``)."""
    if spec.loggers == "keep":
        return []
    loggers = [_logger(kind, directory, name, spec) for kind in spec.loggers]
    return [f"--trainer.logger={json.dumps(loggers)}"] if loggers else ["--trainer.logger=false"]


def _logger(kind: str, directory: Path, name: str, spec: SweepSpec) -> dict[str, Any]:
    """The ``class_path`` / ``init_args`` of one logger writing into ``directory``."""
    if kind == "csv":
        return {"class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": str(directory), "name": "", "version": ""}}
    if kind == "tensorboard":
        return {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": str(directory), "name": "", "version": ""}}
    return wandb_logger(spec, str(directory), name=f"{spec.name}/{name}")


def wandb_logger(spec: SweepSpec, save_dir: str, name: str | None = None) -> dict[str, Any]:
    """A ``WandbLogger`` config in the spec's project, its runs grouped by sweep (``group`` and ``entity`` go to
    ``wandb.init`` through ``dict_kwargs``, jsonargparse's form for ``**kwargs``)."""
    init_args: dict[str, Any] = {"save_dir": save_dir, "project": spec.wandb.project}
    if name is not None:
        init_args["name"] = name
    extra = {"group": spec.name, **({"entity": spec.wandb.entity} if spec.wandb.entity else {})}
    return {"class_path": "lightning.pytorch.loggers.WandbLogger", "init_args": init_args, "dict_kwargs": extra}


def _substitute(arg: str, name: str, output: Path) -> str:
    """Replace ``{trial}`` and ``{output}`` in an argument."""
    return arg.replace("{trial}", name).replace("{output}", str(output))


def select_trials(trials: list[Trial], wanted: str) -> list[Trial]:
    """The trial called ``wanted``, or at index ``wanted``; a clear error otherwise."""
    by_name = [t for t in trials if t.name == wanted]
    if by_name:
        return by_name
    if wanted.isdigit() and int(wanted) < len(trials):
        return [trials[int(wanted)]]
    raise ValueError(f"no trial {wanted!r}; the sweep has {len(trials)}: {', '.join(t.name for t in trials[:6])} ...")

