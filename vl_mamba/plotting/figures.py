"""Figures without pyplot: a ``matplotlib.figure.Figure`` on the Agg canvas, so that plotting works on machines
without a display, from threads, and inside notebooks without changing their backend (a notebook displays the
returned ``Figure`` as usual). Also the one rule for turning a tag such as ``val/loss`` into a file name.
"""

from __future__ import annotations

import re
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def new_figure(width: float, height: float) -> Figure:
    """An empty figure of ``width`` x ``height`` inches rendered by Agg."""
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure: Figure, path: str | Path, dpi: int = 120) -> Path:
    """Write ``figure`` as PNG (parent folders are created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi)
    return path


def file_stem(tag: str) -> str:
    """A file-name-safe stem for a metric tag: ``val/gqa/accuracy`` -> ``val_gqa_accuracy``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", tag).strip("_") or "metric"
