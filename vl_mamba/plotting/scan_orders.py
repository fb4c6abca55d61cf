"""The scan-order figure: how each 2D scan order (``uni``, ``bi`` = BSM, ``cross`` = CSM, or any registered one)
walks a small patch grid. One row per order, one panel per direction; arrows join the patches in the order the
selective scan reads them, coloured from the first step (dark) to the last (light), with dashed arrows where
the path jumps to the next row or column. The permutations come from ``scan_permutations``, the same ones the
VSS modules use."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from vl_mamba.connectors.scan_orders import column_major, row_major, scan_permutations
from vl_mamba.plotting.figures import new_figure, save_figure


def direction_name(perm: torch.Tensor, rows: int, cols: int) -> str:
    """``row-major``, ``column-major`` or their reverses, else ``custom``, for a (rows * cols,) permutation."""
    known = {
        "row-major": row_major(rows, cols),
        "row-major, reversed": row_major(rows, cols).flip(0),
        "column-major": column_major(rows, cols),
        "column-major, reversed": column_major(rows, cols).flip(0),
    }
    return next((name for name, p in known.items() if torch.equal(perm.cpu(), p)), "custom")


def plot_scan_orders(
    path: str | Path | None = None,
    orders: Sequence[str] = ("uni", "bi", "cross"),
    grid: tuple[int, int] = (4, 4),
    numbers: bool = True,
) -> Figure:
    """Draw each order's scan paths over a ``grid`` of patches.

    Args:
        path: PNG to write, or None.
        orders: scan order names, one row each.
        grid: (rows, cols) of the patch grid.
        numbers: write each patch's step number in its cell.
    """
    rows, cols = grid
    perms = {name: scan_permutations(name, rows, cols) for name in orders}
    columns = max(p.shape[0] for p in perms.values())
    size = 2.4 * max(rows, cols) / 4
    figure = new_figure(size * columns + 0.6, size * len(orders) + 0.4)
    axes = figure.subplots(len(orders), columns, squeeze=False)
    for r, (name, directions) in enumerate(perms.items()):
        for k in range(columns):
            ax = axes[r, k]
            if k >= directions.shape[0]:
                ax.set_axis_off()
                continue
            draw_scan_path(ax, directions[k], rows, cols, numbers)
            ax.set_title(f"{name} [{k + 1}/{directions.shape[0]}]\n{direction_name(directions[k], rows, cols)}",
                         fontsize=8)
    if path is not None:
        save_figure(figure, path)
    return figure


def draw_scan_path(ax: Axes, perm: torch.Tensor, rows: int, cols: int, numbers: bool = True) -> None:
    """One direction: the grid, arrows between consecutive patches, a dot at the start and a square at the end.

    Args:
        ax: where to draw.
        perm: (rows * cols,) row-major patch indices in scan order.
        rows, cols: the grid.
        numbers: write the step number in each cell.
    """
    order = perm.tolist()
    cmap = colormaps["viridis"]
    last = max(len(order) - 1, 1)
    for index in range(rows * cols):
        y, x = divmod(index, cols)
        ax.add_patch(Rectangle((x - 0.5, y - 0.5), 1, 1, facecolor="0.96", edgecolor="0.75", linewidth=0.8))
    for step, (a, b) in enumerate(zip(order[:-1], order[1:])):
        (y0, x0), (y1, x1) = divmod(a, cols), divmod(b, cols)
        jump = abs(y1 - y0) + abs(x1 - x0) > 1
        ax.annotate(
            "", xy=(x1, y1), xytext=(x0, y0),
            arrowprops={"arrowstyle": "-|>", "color": cmap(0.85 * step / last), "linewidth": 1.0 if jump else 1.6,
                        "linestyle": (0, (3, 2)) if jump else "-", "shrinkA": 4, "shrinkB": 4, "mutation_scale": 9},
        )
    (ys, xs), (ye, xe) = divmod(order[0], cols), divmod(order[-1], cols)
    ax.plot([xs], [ys], "o", color=cmap(0.0), markersize=7)
    ax.plot([xe], [ye], "s", color=cmap(0.85), markersize=6)
    if numbers:
        for step, index in enumerate(order):
            y, x = divmod(index, cols)
            ax.text(x + 0.3, y - 0.28, str(step), fontsize=6, ha="center", va="center", color="0.35")
    ax.set_xlim(-0.5, cols - 0.5)
    ax.set_ylim(rows - 0.5, -0.5)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
