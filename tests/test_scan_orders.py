"""Scan orders: the visit order of each built-in direction written out on a small grid, un-scan of scan is the
identity for every order on square and non-square grids, a new order is a few lines, and orders that are not
permutations are refused."""

from __future__ import annotations

import pytest
import torch

from vl_mamba.connectors import SCAN_ORDERS, VSS, register_scan_order, scan, scan_permutations, unscan
from vl_mamba.connectors.scan_orders import num_directions

GRIDS = [(1, 1), (1, 5), (5, 1), (2, 3), (3, 2), (4, 4), (3, 7)]


def test_builtin_orders_on_a_2x3_grid():
    # Row-major patch indices of a 2x3 grid:  0 1 2 / 3 4 5
    row, col = [0, 1, 2, 3, 4, 5], [0, 3, 1, 4, 2, 5]
    assert scan_permutations("uni", 2, 3).tolist() == [row]
    assert scan_permutations("bi", 2, 3).tolist() == [row, row[::-1]]
    assert scan_permutations("cross", 2, 3).tolist() == [row, col, row[::-1], col[::-1]]
    assert [num_directions(name) for name in ("uni", "bi", "cross")] == [1, 2, 4]


@pytest.mark.parametrize("order", ["uni", "bi", "cross"])
@pytest.mark.parametrize("grid", GRIDS, ids=str)
def test_unscan_of_scan_is_identity(order, grid):
    rows, cols = grid
    perms = scan_permutations(order, rows, cols)
    x = torch.randn(2, 3, rows * cols)
    scanned = scan(x, perms)
    assert scanned.shape == (2, len(perms), 3, rows * cols)
    for k, p in enumerate(perms):
        assert torch.equal(scanned[:, k], x[:, :, p])  # direction k visits the patches in its order
    assert torch.equal(unscan(scanned, perms), x.unsqueeze(1).expand_as(scanned))


def test_unscan_puts_each_step_back_at_its_patch():
    perms = scan_permutations("cross", 2, 3)
    steps = torch.arange(6.0).expand(1, 4, 1, 6)  # value = step index in each direction
    back = unscan(steps, perms)
    for k, p in enumerate(perms):
        for step, patch in enumerate(p.tolist()):
            assert back[0, k, 0, patch] == step


def test_register_a_new_order(monkeypatch):
    """A snake (boustrophedon) order, registered in a few lines, works in a VSS module."""

    def snake(rows: int, cols: int) -> list[torch.Tensor]:
        grid = torch.arange(rows * cols).view(rows, cols)
        grid[1::2] = grid[1::2].flip(1)
        return [grid.reshape(-1)]

    monkeypatch.setitem(SCAN_ORDERS, "snake", SCAN_ORDERS["uni"])  # restored after the test
    register_scan_order("snake", snake)
    assert scan_permutations("snake", 3, 3).tolist() == [[0, 1, 2, 5, 4, 3, 6, 7, 8]]
    vss = VSS(8, scan="snake", d_state=2)
    assert vss(torch.randn(2, 12, 8), (3, 4)).shape == (2, 12, 8)


def test_refuses_unknown_and_invalid_orders(monkeypatch):
    with pytest.raises(ValueError, match="unknown scan order 'zigzag'"):
        scan_permutations("zigzag", 2, 2)
    monkeypatch.setitem(SCAN_ORDERS, "broken", lambda r, c: [torch.zeros(r * c, dtype=torch.long)])
    with pytest.raises(ValueError, match="not a permutation"):
        scan_permutations("broken", 2, 2)
