"""Sweep results: one row per trial (its name, each grid value, the final value of each collected metric, its
status, return code and duration) written to ``results.csv`` in the sweep's folder, and a bar chart of one
metric by trial (``<metric>.png``). Metrics are read from the logs in each trial's folder (``metrics.csv`` or
TensorBoard event files; the most recent run when there are several)."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from vl_mamba.plotting.bars import plot_bars
from vl_mamba.plotting.figures import file_stem
from vl_mamba.plotting.scalars import final_values, read_latest_run
from vl_mamba.sweeps.grid import cli_value
from vl_mamba.sweeps.runner import trial_status
from vl_mamba.sweeps.spec import SweepSpec
from vl_mamba.sweeps.trials import Trial
from vl_mamba.utils.logging import get_logger

log = get_logger(__name__)

RESULTS_FILE = "results.csv"


def collect_results(spec: SweepSpec, trials: list[Trial]) -> list[dict[str, Any]]:
    """One row per trial: ``trial``, each grid key, each metric (None when not logged), ``status``,
    ``returncode`` and ``duration_s``."""
    rows = []
    for trial in trials:
        status = trial_status(trial)
        finals = final_values(read_latest_run(trial.directory)) if trial.directory.is_dir() else {}
        row: dict[str, Any] = {"trial": trial.name}
        row.update({key: cli_value(value) for key, value in trial.overrides.items()})
        row.update({metric: finals.get(metric) for metric in spec.metrics})
        row.update({"status": status.status, "returncode": status.returncode, "duration_s": status.duration_s})
        rows.append(row)
    return rows


def write_results(spec: SweepSpec, rows: list[dict[str, Any]], output: str | Path) -> list[Path]:
    """``results.csv`` and the bar chart of ``spec.plot`` by trial; returns the files written."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    columns = ["trial", *spec.grid, *spec.metrics, "status", "returncode", "duration_s"]
    csv_path = output / RESULTS_FILE
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row[k] for k in columns})
    written = [csv_path]
    if spec.plot:
        values = {r["trial"]: float(r[spec.plot]) for r in rows if r.get(spec.plot) is not None}
        missing = [r["trial"] for r in rows if r.get(spec.plot) is None]
        if values:
            chart = output / f"{file_stem(spec.plot)}.png"
            plot_bars(values, chart, f"{spec.name}: {spec.plot} by trial", spec.plot, missing)
            written.append(chart)
        else:
            log.warning("no trial has logged %s yet: no chart", spec.plot)
    return written


def best_trial(rows: list[dict[str, Any]], metric: str, goal: str = "minimize") -> str | None:
    """The trial with the best finite value of ``metric``, or None."""
    scored = [(float(r[metric]), r["trial"]) for r in rows if r.get(metric) is not None and math.isfinite(r[metric])]
    if not scored:
        return None
    return (min(scored) if goal == "minimize" else max(scored))[1]
