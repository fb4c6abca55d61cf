"""Bar charts of one number per name (a metric by sweep trial, a benchmark score by run): horizontal bars, so
that long names stay readable, with each value written at the end of its bar."""

from __future__ import annotations

import math
from pathlib import Path

from matplotlib.figure import Figure

from vl_mamba.plotting.figures import new_figure, save_figure


def plot_bars(
    values: dict[str, float],
    path: str | Path | None = None,
    title: str = "",
    xlabel: str = "",
    missing: list[str] | None = None,
) -> Figure:
    """One horizontal bar per name, in the given order (first on top).

    Args:
        values: name -> value (NaN draws no bar and is labelled ``nan``).
        path: PNG to write, or None.
        title: figure title.
        xlabel: axis label (the metric).
        missing: names without a value (e.g. failed trials), listed under the chart.
    """
    names = list(values)
    figure = new_figure(8.0, 1.2 + 0.4 * max(len(names), 1))
    ax = figure.add_subplot()
    numbers = [values[n] for n in names]
    finite = [v for v in numbers if math.isfinite(v)]
    positions = list(range(len(names)))
    ax.barh(positions, [v if math.isfinite(v) else 0.0 for v in numbers], color="tab:blue")
    ax.set_yticks(positions, names, fontsize=8)
    ax.invert_yaxis()
    span = (max(finite) - min(min(finite), 0.0)) if finite else 1.0
    for y, v in zip(positions, numbers):
        label = f"{v:.5g}" if math.isfinite(v) else "nan"
        ax.text((v if math.isfinite(v) else 0.0) + 0.01 * (span or 1.0), y, label, va="center", fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    if missing:
        figure.text(0.01, 0.0, "no value: " + ", ".join(missing), fontsize=7, va="bottom", color="tab:red")
    if path is not None:
        save_figure(figure, path)
    return figure
