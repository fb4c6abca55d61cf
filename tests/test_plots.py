"""Pictures: scalars read back from CSVLogger and TensorBoard logs, ``vl-mamba plot`` writing curves and
benchmark tables for several runs, the bar chart, and the scan-order figure (built from the same permutations
as the VSS modules, a registered order included)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from matplotlib.axes import Axes
from matplotlib.text import Annotation

from vl_mamba.cli import main as vl_mamba_main
from vl_mamba.connectors import scan_orders
from vl_mamba.plotting import (
    benchmark_table,
    final_values,
    find_runs,
    is_benchmark_tag,
    plot_bars,
    plot_scan_orders,
    read_run,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _history(offset: float) -> list[tuple[int, dict[str, float]]]:
    """What a short run logs: per-step loss and learning rate, per-epoch validation loss and benchmark scores."""
    steps = [(s, {"train/loss": 3.0 - 0.1 * s + offset, "lr-AdamW": 1e-3 * (s + 1) / 10}) for s in range(10)]
    epochs = [
        (4, {"val/loss": 2.7 + offset, "val/textvqa/accuracy": 20.0 + offset, "val/pope/f1/adversarial": 0.5,
             "epoch": 0.0}),
        (9, {"val/loss": 2.2 + offset, "val/textvqa/accuracy": 30.0 + offset, "val/pope/f1/adversarial": 0.75,
             "epoch": 1.0}),
    ]
    return sorted(steps + epochs, key=lambda item: item[0])


@pytest.fixture()
def two_runs(tmp_path: Path) -> Path:
    """runs/csv_run: a CSVLogger's metrics.csv; runs/tb_run: a TensorBoardLogger's event file (with hparams)."""
    root = tmp_path / "runs"
    csv_logger = CSVLogger(save_dir=root, name="csv_run", version="")
    tb_logger = TensorBoardLogger(save_dir=root, name="tb_run", version="")
    tb_logger.log_hyperparams({"lr": 1e-3})  # also writes TensorBoard's hp_metric placeholder
    for logger, offset in ((csv_logger, 0.0), (tb_logger, 1.0)):
        for step, metrics in _history(offset):
            logger.log_metrics(metrics, step=step)
        logger.finalize("success")
    return root


def _assert_png(path: Path) -> None:
    """A non-trivial PNG file is there."""
    assert path.is_file(), path
    assert path.read_bytes()[:8] == PNG_SIGNATURE and path.stat().st_size > 2000, path


def test_scalars_read_back_from_csv_and_tensorboard(two_runs: Path) -> None:
    runs = find_runs(two_runs)
    assert [p.name for p in runs] == ["csv_run", "tb_run"]
    from_csv, from_tb = read_run(runs[0]), read_run(runs[1])
    for scalars, offset in ((from_csv, 0.0), (from_tb, 1.0)):
        assert [s for s, _ in scalars["train/loss"]] == list(range(10))
        assert scalars["train/loss"][3][1] == pytest.approx(2.7 + offset, rel=1e-6)
        assert scalars["lr-AdamW"][-1] == (9, pytest.approx(1e-3, rel=1e-6))
        assert scalars["val/loss"] == [(4, pytest.approx(2.7 + offset)), (9, pytest.approx(2.2 + offset))]
        finals = final_values(scalars)
        assert finals["val/textvqa/accuracy"] == pytest.approx(30.0 + offset)
        assert finals["val/pope/f1/adversarial"] == pytest.approx(0.75)
    assert "step" not in from_csv


def test_benchmark_tags_and_table(two_runs: Path) -> None:
    assert is_benchmark_tag("val/textvqa/accuracy") and is_benchmark_tag("test/pope/f1/adversarial")
    assert not any(is_benchmark_tag(t) for t in ("val/loss", "train/loss", "data/skipped/corrupt", "lr-AdamW"))
    runs = {p.name: read_run(p) for p in find_runs(two_runs)}
    columns, table = benchmark_table(runs)
    assert columns == ["val/pope/f1/adversarial", "val/textvqa/accuracy"]
    assert table["tb_run"]["val/textvqa/accuracy"] == pytest.approx(31.0)


def test_plot_command_writes_curves_and_benchmark_tables(two_runs: Path) -> None:
    assert vl_mamba_main(["plot", str(two_runs)]) == 0
    out = two_runs / "plots"
    for name in ("train_loss", "val_loss", "lr-AdamW", "val_textvqa_accuracy", "val_pope_f1_adversarial"):
        _assert_png(out / "curves" / f"{name}.png")
    assert not (out / "curves" / "epoch.png").exists() and not (out / "curves" / "hp_metric.png").exists()
    for name in ("curves.png", "benchmarks.png", "benchmarks_table.png"):
        _assert_png(out / name)
    with open(out / "benchmarks.csv", newline="") as f:
        rows = {r["run"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"csv_run", "tb_run"}
    assert float(rows["csv_run"]["val/textvqa/accuracy"]) == pytest.approx(30.0)
    assert float(rows["tb_run"]["val/textvqa/accuracy"]) == pytest.approx(31.0)
    assert "| csv_run | 0.75 | 30 |" in (out / "benchmarks.md").read_text()
    # a second call does not read its own output as a run
    assert vl_mamba_main(["plot", str(two_runs), "--out", str(two_runs / "plots")]) == 0
    assert sorted(p.name for p in find_runs(two_runs, skip=("plots",))) == ["csv_run", "tb_run"]


def test_plot_command_refuses_what_holds_no_logs(tmp_path: Path) -> None:
    assert vl_mamba_main(["plot", str(tmp_path)]) == 1
    assert vl_mamba_main(["plot", str(tmp_path / "missing")]) == 2


def test_bar_chart(tmp_path: Path) -> None:
    figure = plot_bars({"scan=uni": 2.5, "scan=bi": 2.25, "scan=cross": math.nan}, tmp_path / "bars.png",
                       title="t", xlabel="val/loss", missing=["scan=diagonal"])
    _assert_png(tmp_path / "bars.png")
    ax = figure.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["scan=uni", "scan=bi", "scan=cross"]
    assert [round(p.get_width(), 6) for p in ax.patches] == [2.5, 2.25, 0.0]
    assert any("scan=diagonal" in t.get_text() for t in figure.texts)


def _arrows(ax: Axes) -> list[tuple[tuple[float, float], tuple[float, float]]]:
    """(from, to) cell centres (x = column, y = row) of the arrows drawn in a panel."""
    return [(a.xyann, a.xy) for a in ax.texts if isinstance(a, Annotation)]


def test_scan_order_figure_follows_the_permutations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    figure = plot_scan_orders(tmp_path / "scan_orders.png", grid=(3, 4))
    _assert_png(tmp_path / "scan_orders.png")
    visible = [ax for ax in figure.axes if ax.axison]
    assert len(figure.axes) == 3 * 4 and len(visible) == 1 + 2 + 4
    titles = [ax.get_title() for ax in visible]
    assert titles[0] == "uni [1/1]\nrow-major"
    assert titles[-1] == "cross [4/4]\ncolumn-major, reversed"
    # every panel draws one arrow per step, from each patch to the next one in scan order
    cross = scan_orders.scan_permutations("cross", 3, 4)
    column_major_panel = visible[4]
    arrows = _arrows(column_major_panel)
    expected = [((int(a) % 4, int(a) // 4), (int(b) % 4, int(b) // 4)) for a, b in zip(cross[1][:-1], cross[1][1:])]
    assert arrows == expected
    # a registered order draws like the built-in ones
    def snake(rows: int, cols: int) -> list[torch.Tensor]:
        """Boustrophedon: left to right, then right to left on the next row."""
        grid = torch.arange(rows * cols).view(rows, cols)
        grid[1::2] = grid[1::2].flip(1)
        return [grid.reshape(-1)]

    monkeypatch.setitem(scan_orders.SCAN_ORDERS, "snake", snake)
    figure = plot_scan_orders(orders=["snake"], grid=(2, 3))
    (panel,) = figure.axes
    assert panel.get_title() == "snake [1/1]\ncustom"
    assert _arrows(panel)[2] == ((2, 0), (2, 1))
