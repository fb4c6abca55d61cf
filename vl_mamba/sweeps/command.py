"""``vl-mamba sweep SPEC.yaml [options] [-- extra vl-mamba arguments]``: run a sweep's trials, or write them out
for SLURM or W&B, and collect the results.

- (no option): run the trials one after another, skipping finished ones, then write ``results.csv`` and the
  chart in the sweep's folder; the exit code is 1 when a trial failed.
- ``--parallel N`` / ``--gpus 0,1,..``: N trials at once; with ``--gpus`` each gets its share of the GPUs
  (``CUDA_VISIBLE_DEVICES`` and ``--trainer.devices``); ``--gpus`` alone runs one trial per GPU.
- ``--dry-run``: list the trials, their state and their commands; run nothing.
- ``--only-collect``: write the results of what has run so far.
- ``--slurm OUT.sh`` / ``--wandb OUT.yaml``: write a SLURM array script / a W&B sweep file instead of running.
- ``--trial NAME|INDEX``: run one trial (what each SLURM array task does).
- ``--output DIR``: the sweep's folder instead of the spec's ``output``.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from rich.console import Console
from rich.table import Table

from vl_mamba.sweeps.results import best_trial, collect_results, write_results
from vl_mamba.sweeps.runner import TrialResult, run_trials, trial_command, trial_status
from vl_mamba.sweeps.slurm import write_slurm_script
from vl_mamba.sweeps.spec import SweepSpec, load_spec
from vl_mamba.sweeps.trials import Trial, build_trials, select_trials
from vl_mamba.sweeps.wandb_sweep import write_wandb_sweep

console = Console()


def _parser() -> argparse.ArgumentParser:
    """The options of ``vl-mamba sweep`` (what follows ``--`` is split off before parsing)."""
    parser = argparse.ArgumentParser(
        prog="vl-mamba sweep",
        description="Run a grid of vl-mamba runs (see configs/sweeps/*.yaml); arguments after -- go to every trial.",
    )
    parser.add_argument("spec", type=Path, help="sweep spec YAML")
    parser.add_argument("--dry-run", action="store_true", help="list trials and commands; run nothing")
    parser.add_argument("--parallel", type=int, default=None, help="trials at once (default 1, or one per GPU)")
    parser.add_argument("--gpus", default=None, help="comma-separated GPU ids shared out between parallel trials")
    parser.add_argument("--slurm", type=Path, default=None, metavar="OUT.sh", help="write a SLURM array script")
    parser.add_argument("--wandb", type=Path, default=None, metavar="OUT.yaml", help="write a W&B sweep file")
    parser.add_argument("--only-collect", action="store_true", help="only write results.csv and the chart")
    parser.add_argument("--trial", default=None, help="run only this trial (name or index)")
    parser.add_argument("--output", type=Path, default=None, help="sweep folder (default: the spec's output)")
    return parser


def main(argv: list[str]) -> int:
    """``vl-mamba sweep``; returns the exit code (0: every trial run is done; 1: one failed; 2: bad usage)."""
    argv = list(argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = _parser().parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    try:
        spec = load_spec(args.spec)
        output = (args.output or Path(spec.output)).resolve()
        trials = build_trials(spec, output, extra)
        if args.trial is not None:
            trials = select_trials(trials, args.trial)
        gpus = [g.strip() for g in args.gpus.split(",") if g.strip()] if args.gpus else None
        parallel = args.parallel or (len(gpus) if gpus else 1)
    except (ValueError, FileNotFoundError) as error:
        console.print(f"[red]vl-mamba sweep: {error}")
        return 2
    if args.slurm or args.wandb:
        if args.slurm:
            path = write_slurm_script(args.slurm, spec, args.spec, trials, output, extra)
            console.print(f"SLURM array script for {len(trials)} trials: {path}  (submit: sbatch {path})")
        if args.wandb:
            path = write_wandb_sweep(args.wandb, spec, output, extra)
            console.print(f"W&B sweep file: {path}  (start: wandb sweep {path})")
        return 0
    if args.dry_run:
        _show_plan(spec, trials)
        return 0
    results = []
    if not args.only_collect:
        try:
            results = run_trials(trials, parallel, gpus, spec.timeout_s)
        except ValueError as error:
            console.print(f"[red]vl-mamba sweep: {error}")
            return 2
        if args.trial is not None:  # one array task of many: the others are collected at the end
            return 1 if any(r.status == "failed" for r in results) else 0
    rows = collect_results(spec, build_trials(spec, output, extra))
    written = write_results(spec, rows, output)
    _show_results(spec, rows, results)
    for path in written:
        console.print(f"wrote {path}", highlight=False)
    return 1 if any(r.status == "failed" for r in results) else 0


def _show_plan(spec: SweepSpec, trials: list[Trial]) -> None:
    """Print the trials, their state and their commands (``--dry-run``)."""
    table = Table(title=f"sweep {spec.name!r}: {len(trials)} trials")
    for column in ("#", "trial", "state"):
        table.add_column(column)
    states = [trial_status(t).status for t in trials]
    for index, (trial, state) in enumerate(zip(trials, states)):
        table.add_row(str(index), trial.name, "done (skipped)" if state == "done" else state)
    console.print(table)
    for trial in trials:
        console.print(f"[bold]{trial.name}[/bold]: {shlex.join(trial_command(trial))}", highlight=False, soft_wrap=True)
    console.print(f"{states.count('done')} done, {len(trials) - states.count('done')} to run")


def _show_results(spec: SweepSpec, rows: list[dict], results: list[TrialResult]) -> None:
    """Print the results table and the best trial."""
    ran = {r.name: r.status for r in results}
    table = Table(title=f"sweep {spec.name!r}")
    for column in ("trial", *spec.metrics, "status", "seconds"):
        table.add_column(column)
    for row in rows:
        status = row["status"] if ran.get(row["trial"]) != "skipped" else "done (skipped)"
        style = "red" if row["status"] == "failed" else None
        cells = [row["trial"], *(_fmt(row[m]) for m in spec.metrics), status, _fmt(row["duration_s"])]
        table.add_row(*cells, style=style)
    console.print(table)
    best = best_trial(rows, spec.plot, spec.wandb.goal) if spec.plot else None
    if best:
        console.print(f"best {spec.plot} ({spec.wandb.goal}): {best}")


def _fmt(value: float | None) -> str:
    """A table cell: four significant digits, empty for no value."""
    return "" if value is None else f"{value:.4g}"
