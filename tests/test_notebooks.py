"""The notebooks: stored without outputs, and both run from top to bottom in a fresh ``python3`` kernel (the
inference notebook trains the tiny model for a few steps and answers from its checkpoint)."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_the_notebooks_exist() -> None:
    assert {p.name for p in NOTEBOOKS} >= {"explore_submodules.ipynb", "inference.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_without_outputs(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name} cell {index} has stored outputs (clear them before committing)"
            assert cell.execution_count is None, f"{path.name} cell {index} has an execution count"
    assert "widgets" not in notebook.metadata


def _run(path: Path) -> nbformat.NotebookNode:
    """Execute a notebook in a fresh kernel; a cell that raises fails the test."""
    notebook = nbformat.read(path, as_version=4)
    # the kernel starts in notebooks/, as in Jupyter; the first cell finds the repository root itself
    NotebookClient(notebook, timeout=240, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    return notebook


def _outputs(notebook: nbformat.NotebookNode) -> tuple[str, int]:
    """All text the cells printed or returned, and the number of PNG images they showed."""
    text, images = [], 0
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if output.output_type == "stream":
                text.append(output.text)
            elif output.output_type in ("execute_result", "display_data"):
                text.append(output.data.get("text/plain", ""))
                images += "image/png" in output.data
    return "".join(text), images


def test_explore_submodules_runs() -> None:
    text, images = _outputs(_run(ROOT / "notebooks" / "explore_submodules.ipynb"))
    assert "TimmViTEncoder -> VSSL2Connector -> MambaDecoder" in text
    assert "visual tokens (2, 64, 32)" in text  # 112 px / 14 px patches = 8 x 8 tokens at the tiny LM's width
    assert "connector_vss_l2     VSSL2Connector   scan=cross" in text
    reached = {scan: int(n) for scan, n in re.findall(r"(uni|bi|cross): (\d+) of 64 patches reach", text)}
    assert 1 < reached["uni"] < 64 and reached["bi"] == reached["cross"] == 64  # uni sees only what came before
    assert images == 4  # scan orders, norms per patch, channels, receptive fields


def test_inference_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VL_MAMBA_CHECKPOINT", raising=False)
    text, images = _outputs(_run(ROOT / "notebooks" / "inference.ipynb"))
    assert "checkpoint: " in text and ".ckpt" in text
    assert text.count("    -> ") == 4
    assert "same tokens alone and in the batch: True" in text
    assert images == 1
