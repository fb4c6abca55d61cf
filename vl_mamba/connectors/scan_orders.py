"""2D scan orders: how a patch grid is unrolled into 1D sequences for the selective scan, and rolled back.

An order is a function ``(rows, cols) -> list of permutations``; permutation ``k`` lists, in scan order, the
row-major patch indices that direction ``k`` visits. Built in:

- ``uni``: row-major.
- ``bi`` (BSM, the paper's choice): row-major, forward and backward.
- ``cross`` (CSM, VMamba's cross scan): row-major, column-major, and both reversed.

Adding an order is one function and one ``register_scan_order`` call.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

ScanOrder = Callable[[int, int], list[Tensor]]


def row_major(rows: int, cols: int) -> Tensor:
    return torch.arange(rows * cols)


def column_major(rows: int, cols: int) -> Tensor:
    return torch.arange(rows * cols).view(rows, cols).t().reshape(-1)


SCAN_ORDERS: dict[str, ScanOrder] = {
    "uni": lambda r, c: [row_major(r, c)],
    "bi": lambda r, c: [row_major(r, c), row_major(r, c).flip(0)],
    "cross": lambda r, c: [row_major(r, c), column_major(r, c), row_major(r, c).flip(0), column_major(r, c).flip(0)],
}


def register_scan_order(name: str, order: ScanOrder) -> None:
    """Make ``order`` available to every VSS module as ``scan=name``."""
    SCAN_ORDERS[name] = order


def num_directions(name: str) -> int:
    return len(scan_permutations(name, 1, 1))


def scan_permutations(name: str, rows: int, cols: int) -> Tensor:
    """(K, rows * cols) long tensor: the patch visited at each step of each direction."""
    if name not in SCAN_ORDERS:
        raise ValueError(f"unknown scan order {name!r}; known: {sorted(SCAN_ORDERS)}")
    perms = torch.stack([p.long() for p in SCAN_ORDERS[name](rows, cols)])
    expected = torch.arange(rows * cols)
    for k, p in enumerate(perms):
        if not torch.equal(p.sort().values, expected):
            raise ValueError(f"scan order {name!r} direction {k} is not a permutation of the {rows}x{cols} grid")
    return perms


def scan(x: Tensor, perms: Tensor) -> Tensor:
    """Unroll: x (batch, C, L) in row-major patch order -> (batch, K, C, L) in each direction's order."""
    return _Scan.apply(x, perms)


def merge(ys: Tensor, perms: Tensor) -> Tensor:
    """Roll back and sum: ys (batch, K, C, L) in scan order -> (batch, C, L) in row-major patch order."""
    return _Merge.apply(ys, perms)


def unscan(ys: Tensor, perms: Tensor) -> Tensor:
    """Roll back: ys (batch, K, C, L) in scan order -> (batch, K, C, L) in row-major patch order."""
    return _gather(ys, torch.argsort(perms, dim=-1))


def _gather(ys: Tensor, index: Tensor) -> Tensor:
    """out[:, k, :, i] = ys[:, k, :, index[k, i]]."""
    batch, k, c, length = ys.shape
    return ys.gather(-1, index.view(1, k, 1, length).expand(batch, k, c, length))


class _Scan(torch.autograd.Function):
    """Gather by K permutations. Each direction visits every patch once, so the backward is a gather by the
    inverse permutations and a sum over K, with no scatter and no atomic accumulation."""

    @staticmethod
    def forward(ctx, x: Tensor, perms: Tensor) -> Tensor:
        ctx.save_for_backward(perms)
        return x[:, :, perms].transpose(1, 2)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (perms,) = ctx.saved_tensors
        return _gather(grad.contiguous(), torch.argsort(perms, dim=-1)).sum(1), None


class _Merge(torch.autograd.Function):
    """Inverse-permutation gather and sum over K; its backward is the scan of the gradient."""

    @staticmethod
    def forward(ctx, ys: Tensor, perms: Tensor) -> Tensor:
        ctx.save_for_backward(perms)
        return _gather(ys, torch.argsort(perms, dim=-1)).sum(1)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (perms,) = ctx.saved_tensors
        return grad[:, :, perms].transpose(1, 2), None
