"""The W&B sweep file of a sweep: the grid becomes W&B ``parameters`` and the agent runs ``python -m vl_mamba
<subcommand>`` with the configs, the fixed overrides and a ``WandbLogger``, followed by W&B's ``${args}``
(``--key=value`` for each parameter: the LightningCLI override syntax, so any config key can be swept).
Start it with ``wandb sweep FILE`` and run ``wandb agent ENTITY/PROJECT/SWEEP_ID`` on each machine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from vl_mamba.sweeps.grid import cli_value, override_args
from vl_mamba.sweeps.spec import SweepSpec
from vl_mamba.sweeps.trials import wandb_logger
from vl_mamba.utils.logging import get_logger

log = get_logger(__name__)


def wandb_sweep_config(spec: SweepSpec, output: str | Path, extra_args: list[str] | None = None) -> dict[str, Any]:
    """The W&B sweep configuration as a dict.

    Args:
        spec: the sweep (``{trial}`` cannot be used: W&B names its runs itself).
        output: folder for the runs' local files (``--trainer.default_root_dir`` and the logger's ``save_dir``).
        extra_args: extra ``vl-mamba`` arguments for every run (before the swept values).
    """
    fixed = override_args(spec.fixed) + list(extra_args or [])
    if any("{trial}" in arg for arg in fixed):
        raise ValueError("W&B names its runs itself: '{trial}' cannot be used in a W&B sweep")
    output = Path(output).resolve() / "wandb"
    fixed = [arg.replace("{output}", str(output.parent)) for arg in fixed]
    logger = wandb_logger(spec, str(output))
    command = ["${env}", "${interpreter}", "-m", "vl_mamba", spec.subcommand,
               *[x for c in spec.configs for x in ("--config", c)], *fixed,
               f"--trainer.default_root_dir={output}", f"--trainer.logger={json.dumps([logger])}", "${args}"]
    config: dict[str, Any] = {"name": spec.name, "project": spec.wandb.project}
    if spec.wandb.entity:
        config["entity"] = spec.wandb.entity
    config["method"] = spec.wandb.method
    if spec.plot:
        config["metric"] = {"name": spec.plot, "goal": spec.wandb.goal}
    config["parameters"] = {key: {"values": [_wandb_value(v) for v in values]} for key, values in spec.grid.items()}
    config["command"] = command
    return config


def write_wandb_sweep(
    path: str | Path, spec: SweepSpec, output: str | Path, extra_args: list[str] | None = None
) -> Path:
    """Write the W&B sweep file (YAML, with a header saying how to start it); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = [
        f"# W&B sweep of {spec.name!r}: wandb sweep {path.name}, then wandb agent ENTITY/PROJECT/SWEEP_ID",
        "# Each run is `python -m vl_mamba ...` with the swept values appended as --key=value overrides (${args}).",
    ]
    if spec.exclude:
        log.warning("W&B grids cannot leave combinations out: the spec's exclude entries will run too")
        header.append(f"# The spec's exclude entries are not applied by W&B: {json.dumps(spec.exclude)}")
    text = yaml.safe_dump(wandb_sweep_config(spec, output, extra_args), sort_keys=False, width=1000)
    path.write_text("\n".join(header) + "\n" + text)
    return path


def _wandb_value(value: Any) -> Any:
    """W&B writes values into ``--key=value`` with ``str()``: keep scalars, pass the rest in CLI syntax."""
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return value
    return cli_value(value)
