"""Summed cross-entropy over rows of logits, the language-model loss.

``cross_entropy_sum`` runs this package's Triton kernels (``_cross_entropy_triton``) for CUDA tensors where Triton
imports: they read the half-precision logits as they are, computing in float32, where
``F.cross_entropy(logits.float())`` (``cross_entropy_sum_ref``) first writes a float32 copy of them, a float32
log-softmax and, in the backward, its float32 gradient and a half-precision copy of it. The two share one signature
and give the same loss; the gradient is rounded once to the logits' dtype by both.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ["cross_entropy_sum", "cross_entropy_sum_ref", "cross_entropy_sum_triton"]

BLOCK = 4096
"""Classes a program reads at once."""


@functools.cache
def _kernels():
    """The forward and backward kernels, or None where Triton does not import."""
    try:
        from vl_mamba.ops._cross_entropy_triton import cross_entropy_bwd_kernel, cross_entropy_fwd_kernel
    except ImportError:
        return None
    return cross_entropy_fwd_kernel, cross_entropy_bwd_kernel


def cross_entropy_sum(logits: Tensor, targets: Tensor, ignore_index: int = -100) -> Tensor:
    """The cross-entropy of each row of ``logits`` (n, V) against its class in ``targets`` (n,), summed over the
    rows (float32); rows whose target is ``ignore_index`` add nothing. On CUDA (Triton) a target outside [0, V)
    makes the sum NaN."""
    if logits.is_cuda and logits.dim() == 2 and logits.dtype != torch.float64 and _kernels() is not None:
        return cross_entropy_sum_triton(logits, targets, ignore_index)
    return cross_entropy_sum_ref(logits, targets, ignore_index)


def cross_entropy_sum_ref(logits: Tensor, targets: Tensor, ignore_index: int = -100) -> Tensor:
    """The specification: ``F.cross_entropy`` on float32 logits (float64 stays), summed."""
    cdt = torch.float64 if logits.dtype == torch.float64 else torch.float32
    return F.cross_entropy(logits.to(cdt), targets, ignore_index=ignore_index, reduction="sum")


def cross_entropy_sum_triton(logits: Tensor, targets: Tensor, ignore_index: int = -100) -> Tensor:
    """``cross_entropy_sum`` by the Triton kernels (any device Triton runs them on)."""
    if logits.dim() != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(f"cross_entropy_sum takes logits (n, V) and targets (n,), got {tuple(logits.shape)} and "
                         f"{tuple(targets.shape)}")
    return _CrossEntropySum.apply(logits, targets, ignore_index)


class _CrossEntropySum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets, ignore_index):
        fwd, _ = _kernels()
        if logits.stride(-1) != 1:
            logits = logits.contiguous()
        targets = targets.contiguous()
        rows, classes = logits.shape
        losses = torch.empty(rows, device=logits.device, dtype=torch.float32)
        lse = torch.empty(rows, device=logits.device, dtype=torch.float32)
        if rows:
            fwd[(rows,)](logits, targets, losses, lse, classes, logits.stride(0), ignore_index, BLOCK=BLOCK,
                         num_warps=8)
        ctx.save_for_backward(logits, targets, lse)
        ctx.ignore_index = ignore_index
        return losses.sum()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss):
        _, bwd = _kernels()
        logits, targets, lse = ctx.saved_tensors
        rows, classes = logits.shape
        grad = torch.empty_like(logits, memory_format=torch.contiguous_format)
        if rows:
            bwd[(rows,)](logits, targets, lse, grad_loss.float().reshape(1), grad, classes, logits.stride(0),
                         grad.stride(0), ctx.ignore_index, BLOCK=BLOCK, num_warps=8)
        return grad, None, None
