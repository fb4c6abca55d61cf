"""Pictures: training curves and benchmark tables from a run's logs (``vl-mamba plot RUN_DIR``), bar charts of
a metric by sweep trial, and the scan-order figure. Figures are drawn on the Agg canvas without pyplot."""

from vl_mamba.plotting.bars import plot_bars
from vl_mamba.plotting.benchmarks import benchmark_table, is_benchmark_tag
from vl_mamba.plotting.command import plot_run_dir
from vl_mamba.plotting.curves import plot_curves
from vl_mamba.plotting.scalars import Scalars, final_values, find_runs, read_latest_run, read_run
from vl_mamba.plotting.scan_orders import draw_scan_path, plot_scan_orders

__all__ = [
    "Scalars",
    "benchmark_table",
    "draw_scan_path",
    "final_values",
    "find_runs",
    "is_benchmark_tag",
    "plot_bars",
    "plot_curves",
    "plot_run_dir",
    "plot_scan_orders",
    "read_latest_run",
    "read_run",
]
