"""The SLURM array script of a sweep: one array task per trial. Each task runs ``vl-mamba sweep SPEC --trial
NAME`` under ``srun`` (one process per GPU, as Lightning expects under SLURM), so a task gets the same folder,
captured output, markers and skip-if-done rule as a local run. Submit with ``sbatch``; when the array is
finished, ``vl-mamba sweep SPEC --only-collect`` writes the results CSV and chart."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from vl_mamba.sweeps.spec import SweepSpec
from vl_mamba.sweeps.trials import Trial


def slurm_script(
    spec: SweepSpec,
    spec_path: str | Path,
    trials: list[Trial],
    output: str | Path,
    extra_args: list[str] | None = None,
) -> str:
    """The text of the array script.

    Args:
        spec: the sweep.
        spec_path: the spec file, as the nodes will find it from the working directory.
        trials: the trials (one array task each, in this order).
        output: the sweep's folder (absolute, shared between the nodes).
        extra_args: extra ``vl-mamba`` arguments for every trial.
    """
    if not trials:
        raise ValueError("the sweep has no trials")
    options = spec.slurm
    output = Path(output).resolve()
    array = f"0-{len(trials) - 1}" + (f"%{options.max_parallel}" if options.max_parallel else "")
    sbatch = [
        f"--job-name={spec.name}",
        f"--array={array}",
        f"--output={output}/slurm/%A_%a.out",
        "--nodes=1",
        f"--ntasks-per-node={options.gpus_per_trial}",
        f"--gres=gpu:{options.gpus_per_trial}",
        f"--cpus-per-task={options.cpus_per_task}",
        f"--time={options.time}",
    ]
    sbatch += [f"--partition={options.partition}"] if options.partition else []
    sbatch += [f"--account={options.account}"] if options.account else []
    sbatch += [f"--mem={options.mem}"] if options.mem else []
    sbatch += list(options.sbatch)
    forwarded = [f"--trainer.devices={options.gpus_per_trial}", "--trainer.num_nodes=1", *(extra_args or [])]
    command = [options.python, "-m", "vl_mamba", "sweep", str(spec_path), "--output", str(output)]
    lines = [
        "#!/bin/bash",
        f"# SLURM array of the sweep {spec.name!r}: {len(trials)} trials, one array task each.",
        f"# Submit: sbatch {{this file}}; when all tasks have ended: vl-mamba sweep {spec_path} --output {output} "
        "--only-collect",
        "# A task whose trial finished before (DONE.json in its folder) ends at once; failed trials run again.",
        *[f"#SBATCH {option}" for option in sbatch],
        "",
        "set -euo pipefail",
        f"cd {shlex.quote(os.getcwd())}",
        *options.setup,
        "",
        "TRIALS=(",
        *[f"  {shlex.quote(t.name)}" for t in trials],
        ")",
        'TRIAL="${TRIALS[$SLURM_ARRAY_TASK_ID]}"',
        'echo "trial $SLURM_ARRAY_TASK_ID: $TRIAL"',
        f'srun {shlex.join(command)} --trial "$TRIAL" -- {shlex.join(forwarded)}',
        "",
    ]
    return "\n".join(lines)


def write_slurm_script(
    path: str | Path,
    spec: SweepSpec,
    spec_path: str | Path,
    trials: list[Trial],
    output: str | Path,
    extra_args: list[str] | None = None,
) -> Path:
    """Write the array script to ``path`` (executable) and create ``OUTPUT/slurm``, where SLURM writes each task's
    output (it must exist when the job starts); returns the path. Arguments as ``slurm_script``."""
    text = slurm_script(spec, spec_path, trials, output, extra_args)
    (Path(output).resolve() / "slurm").mkdir(parents=True, exist_ok=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path
