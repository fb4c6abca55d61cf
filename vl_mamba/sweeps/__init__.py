"""Sweeps over config keys: ``vl-mamba sweep SPEC.yaml`` expands a grid (e.g. scan ``uni`` / ``bi`` / ``cross``
x connector x seed), runs each trial as its own ``vl-mamba fit`` in a folder named after its overrides (one
after another, N at a time on GPUs, or as a SLURM array / W&B sweep written out instead), and collects the final
metrics into one CSV and a bar chart.

Any external sweep tool can drive training the same way: every config key is a command-line override of
``vl-mamba fit``, so a trial is just

    vl-mamba fit --config configs/model/vl_mamba.yaml --config configs/stage1.yaml \\
        --model.connector.init_args.scan=cross --seed_everything=1 --trainer.default_root_dir=runs/x

(Optuna, Ray Tune, Hydra's multirun or a shell loop only need to build that line; W&B's ``${args}`` macro
yields exactly ``--key=value``). A spec is YAML::

    name: scan_directions                 # default: the file's stem
    subcommand: fit                       # or validate / test / predict
    configs: [a.yaml, b.yaml]             # --config files of every trial, in order
    fixed: {trainer.max_steps: 1000}      # overrides of every trial; '{trial}' / '{output}' are replaced
    grid:                                 # cartesian product, in this order
      model.connector.init_args.scan: [uni, bi, cross]
      seed_everything: [0, 1]
    exclude: [{seed_everything: 1, model.connector.init_args.scan: uni}]   # combinations left out
    labels: {seed_everything: seed}       # short names in trial names (default: last part of the key)
    loggers: [csv, tensorboard]           # loggers writing into each trial's folder, or 'keep'
    output: runs/sweeps/scan_directions   # the sweep's folder
    metrics: [val/loss]                   # final values collected into results.csv
    plot: val/loss                        # the bar chart's metric (default: the first metric)
    timeout_s: null                       # stop and fail a trial that runs longer
    slurm: {gpus_per_trial: 8, time: "24:00:00", partition: null, setup: [], ...}
    wandb: {project: vl-mamba, method: grid, goal: minimize}

Modules: ``spec`` (the format), ``grid`` (expansion, CLI values), ``naming`` (trial names), ``trials`` (the
commands), ``runner`` (subprocesses, markers, GPUs), ``results`` (CSV, chart), ``slurm`` and ``wandb_sweep``
(writers), ``command`` (the CLI).
"""

from vl_mamba.sweeps.grid import cli_value, expand_grid, override_args
from vl_mamba.sweeps.naming import trial_name, trial_names
from vl_mamba.sweeps.results import collect_results, write_results
from vl_mamba.sweeps.runner import TrialResult, gpu_slots, run_trial, run_trials, trial_status
from vl_mamba.sweeps.slurm import slurm_script, write_slurm_script
from vl_mamba.sweeps.spec import SlurmOptions, SweepSpec, WandbOptions, load_spec
from vl_mamba.sweeps.trials import Trial, build_trials, select_trials
from vl_mamba.sweeps.wandb_sweep import wandb_sweep_config, write_wandb_sweep

__all__ = [
    "SlurmOptions",
    "SweepSpec",
    "Trial",
    "TrialResult",
    "WandbOptions",
    "build_trials",
    "cli_value",
    "collect_results",
    "expand_grid",
    "gpu_slots",
    "load_spec",
    "override_args",
    "run_trial",
    "run_trials",
    "select_trials",
    "slurm_script",
    "trial_name",
    "trial_names",
    "trial_status",
    "wandb_sweep_config",
    "write_results",
    "write_slurm_script",
    "write_wandb_sweep",
]
