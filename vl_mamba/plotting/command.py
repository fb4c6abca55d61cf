"""``vl-mamba plot RUN_DIR [--out DIR]``: pictures of the runs under a directory (one run's log folder, a
``default_root_dir`` with several versions, or a sweep's output). Finds every ``metrics.csv`` and TensorBoard
event file below RUN_DIR and writes, in ``RUN_DIR/plots`` by default: ``curves/<tag>.png`` for every logged
scalar (runs overlaid), ``curves.png`` (overview), and, where benchmark scores were logged as
``val/<benchmark>/<metric>``, ``benchmarks.csv``, ``benchmarks.md``, ``benchmarks_table.png`` and
``benchmarks.png`` (bars)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from vl_mamba.plotting.benchmarks import (
    benchmark_table,
    plot_benchmark_bars,
    plot_benchmark_table,
    write_benchmark_table,
)
from vl_mamba.plotting.curves import plot_curves
from vl_mamba.plotting.scalars import find_runs, read_run

PLOTS_DIR = "plots"


def plot_run_dir(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Write the curves and benchmark tables of every run under ``run_dir``; returns the files written.

    Args:
        run_dir: folder searched for ``metrics.csv`` and event files (the ``plots`` folder is skipped).
        out_dir: where the pictures go (default ``run_dir/plots``).
    """
    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else run_dir / PLOTS_DIR
    runs = {}
    for path in find_runs(run_dir, skip=(PLOTS_DIR,)):
        name = path.relative_to(run_dir).as_posix()
        runs[run_dir.resolve().name if name == "." else name] = read_run(path)
    runs = {name: scalars for name, scalars in runs.items() if scalars}
    if not runs:
        raise FileNotFoundError(f"no metrics.csv or TensorBoard event files with scalars under {run_dir}")
    written = plot_curves(runs, out_dir)
    columns, table = benchmark_table(runs)
    if columns:
        written += write_benchmark_table(columns, table, out_dir)
        written.append(plot_benchmark_table(columns, table, out_dir / "benchmarks_table.png"))
        written.append(plot_benchmark_bars(columns, table, out_dir / "benchmarks.png"))
    return written


def main(argv: list[str]) -> int:
    """``vl-mamba plot``; returns the exit code."""
    parser = argparse.ArgumentParser(prog="vl-mamba plot", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a run's log folder, a default_root_dir or a sweep output")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: RUN_DIR/plots)")
    args = parser.parse_args(argv)
    console = Console()
    if not args.run_dir.is_dir():
        console.print(f"[red]vl-mamba plot: {args.run_dir} is not a directory")
        return 2
    try:
        written = plot_run_dir(args.run_dir, args.out)
    except FileNotFoundError as error:
        console.print(f"[red]vl-mamba plot: {error}")
        return 1
    for path in written:
        console.print(str(path), highlight=False)
    console.print(f"{len(written)} files written", style="bold")
    return 0
