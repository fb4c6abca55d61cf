"""Training curves: one PNG per logged scalar (loss, learning rate, token counts, benchmark scores, ...) with
every run found overlaid, and an overview figure with one panel per scalar that is not a benchmark score."""

from __future__ import annotations

import math
from pathlib import Path

from matplotlib.axes import Axes

from vl_mamba.plotting.benchmarks import is_benchmark_tag
from vl_mamba.plotting.figures import file_stem, new_figure, save_figure
from vl_mamba.plotting.scalars import Scalars

SKIPPED_TAGS = ("epoch", "hp_metric")
"""Bookkeeping that Lightning's loggers write beside the metrics."""
OVERVIEW_PANELS = 16


def curve_tags(runs: dict[str, Scalars]) -> list[str]:
    """Tags worth a curve, over all runs, in sorted order."""
    tags = {tag for scalars in runs.values() for tag in scalars}
    return sorted(t for t in tags if t not in SKIPPED_TAGS)


def plot_curves(runs: dict[str, Scalars], out_dir: str | Path) -> list[Path]:
    """Write ``curves/<tag>.png`` for every tag and ``curves.png``, the overview; returns the paths.

    Args:
        runs: run name -> its scalars (the legend shows the names when there are several runs).
        out_dir: output folder.
    """
    out_dir = Path(out_dir)
    written = []
    tags = curve_tags(runs)
    for tag in tags:
        figure = new_figure(6.4, 4.0)
        ax = figure.add_subplot()
        _draw(ax, runs, tag, legend=len(runs) > 1)
        written.append(save_figure(figure, out_dir / "curves" / f"{file_stem(tag)}.png"))
    overview = [t for t in tags if not is_benchmark_tag(t)][:OVERVIEW_PANELS]
    if overview:
        columns = min(3, len(overview))
        rows = math.ceil(len(overview) / columns)
        figure = new_figure(4.2 * columns, 3.0 * rows + (0.6 if len(runs) > 1 else 0.0))
        axes = figure.subplots(rows, columns, squeeze=False).flatten()
        for ax, tag in zip(axes, overview):
            _draw(ax, runs, tag, legend=False)
        for ax in axes[len(overview) :]:
            ax.set_axis_off()
        if len(runs) > 1:
            handles, labels = axes[0].get_legend_handles_labels()
            figure.legend(handles, labels, loc="outside lower center", ncols=min(4, len(runs)), fontsize=7)
        written.append(save_figure(figure, out_dir / "curves.png"))
    return written


def _draw(ax: Axes, runs: dict[str, Scalars], tag: str, legend: bool) -> None:
    """One panel: ``tag`` against the step, one line per run that logged it."""
    for name, scalars in runs.items():
        points = scalars.get(tag)
        if not points:
            continue
        steps, values = zip(*points)
        ax.plot(steps, values, label=name, marker="o" if len(points) < 20 else None, markersize=3, linewidth=1.2)
    ax.set_title(tag, fontsize=9)
    ax.set_xlabel("step", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    if tag.startswith("lr") or "/lr" in tag:
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3), useOffset=False)
    else:
        ax.ticklabel_format(axis="y", useOffset=False)
    if legend:
        ax.legend(fontsize=7)
