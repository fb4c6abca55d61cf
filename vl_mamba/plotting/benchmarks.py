"""Benchmark results from a run's logs: scores logged as ``val/<benchmark>/<metric>`` (``test/...`` in
``vl-mamba test``; a metric may itself contain slashes, e.g. ``accuracy/yes/no``) become a table with one row
per run and one column per score (CSV, Markdown and a PNG of the table) and a bar chart per benchmark."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from vl_mamba.plotting.figures import new_figure, save_figure
from vl_mamba.plotting.scalars import Scalars, final_values

SPLITS = ("val", "test")


def is_benchmark_tag(tag: str) -> bool:
    """Whether ``tag`` is a benchmark score: ``val|test/<benchmark>/<metric...>``."""
    parts = tag.split("/")
    return len(parts) >= 3 and parts[0] in SPLITS


def benchmark_table(runs: dict[str, Scalars]) -> tuple[list[str], dict[str, dict[str, float]]]:
    """The final benchmark scores of each run.

    Returns:
        The score tags (sorted; the columns), and run name -> tag -> value (runs without scores left out).
    """
    table = {}
    for name, scalars in runs.items():
        scores = {tag: value for tag, value in final_values(scalars).items() if is_benchmark_tag(tag)}
        if scores:
            table[name] = scores
    columns = sorted({tag for scores in table.values() for tag in scores})
    return columns, table


def write_benchmark_table(columns: list[str], table: dict[str, dict[str, float]], out_dir: str | Path) -> list[Path]:
    """``benchmarks.csv`` and ``benchmarks.md`` (one row per run, one column per score); returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out_dir / "benchmarks.csv", out_dir / "benchmarks.md"
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["run", *columns])
        for name, scores in table.items():
            writer.writerow([name, *(_cell(scores.get(c)) for c in columns)])
    lines = ["| run | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, scores in table.items():
        lines.append(f"| {name} | " + " | ".join(_cell(scores.get(c)) for c in columns) + " |")
    md_path.write_text("\n".join(lines) + "\n")
    return [csv_path, md_path]


def plot_benchmark_table(columns: list[str], table: dict[str, dict[str, float]], path: str | Path) -> Path:
    """The table as a PNG: scores as rows (there are usually more scores than runs), runs as columns."""
    runs = list(table)
    figure = new_figure(2.2 + 1.6 * len(runs), 0.6 + 0.28 * (len(columns) + 1))
    ax = figure.add_subplot()
    ax.set_axis_off()
    cells = [[_cell(table[r].get(c)) for r in runs] for c in columns]
    drawn = ax.table(cellText=cells, rowLabels=columns, colLabels=runs, loc="center", cellLoc="right")
    drawn.auto_set_font_size(False)
    drawn.set_fontsize(8)
    return save_figure(figure, path)


def plot_benchmark_bars(columns: list[str], table: dict[str, dict[str, float]], path: str | Path) -> Path:
    """One panel per benchmark: its scores as groups of bars, one bar per run."""
    benchmarks: dict[str, list[str]] = {}
    for tag in columns:
        split, benchmark, _ = tag.split("/", 2)
        benchmarks.setdefault(f"{split}/{benchmark}", []).append(tag)
    runs = list(table)
    figure = new_figure(max(6.0, 1.0 + 0.5 * max(len(t) for t in benchmarks.values()) * len(runs)),
                        2.8 * len(benchmarks) + 0.4)
    axes = figure.subplots(len(benchmarks), 1, squeeze=False)[:, 0]
    width = 0.8 / max(len(runs), 1)
    for ax, (benchmark, tags) in zip(axes, benchmarks.items()):
        for i, run in enumerate(runs):
            values = [table[run].get(t, math.nan) for t in tags]
            positions = [j + (i - (len(runs) - 1) / 2) * width for j in range(len(tags))]
            ax.bar(positions, [v if math.isfinite(v) else 0.0 for v in values], width, label=run)
        ax.set_xticks(range(len(tags)), [t.split("/", 2)[2] for t in tags], rotation=30, ha="right", fontsize=7)
        ax.set_title(benchmark, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        if len(runs) > 1:
            ax.legend(fontsize=7)
    return save_figure(figure, path)


def _cell(value: float | None) -> str:
    """A table cell: four significant digits, empty for no value."""
    return "" if value is None else f"{value:.4g}"
