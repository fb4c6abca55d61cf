"""The Triton kernels behind ``vl_mamba.ops.cross_entropy``; imported only when a CUDA tensor reaches them (or
under ``TRITON_INTERPRET=1``, which runs them on the CPU for tests).

One program a row of logits, read in blocks of BLOCK classes. The forward keeps a running maximum and a running
sum of exponentials (rescaled when the maximum grows), so that it reads the row once; the backward reads it again
and writes the gradient, ``softmax - one_hot``, scaled by the loss's incoming gradient, read from the GPU's memory
(so that the host never waits for it)."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def cross_entropy_fwd_kernel(LOGITS, TARGET, LOSS, LSE, V, stride, ignore_index, BLOCK: tl.constexpr):
    """``LOSS[row] = logsumexp(LOGITS[row]) - LOGITS[row, TARGET[row]]`` (0 where the target is ignore_index, NaN
    where it lies outside [0, V)); the log-sum-exp kept for the backward. float32 throughout."""
    row = tl.program_id(0).to(tl.int64)
    base = LOGITS + row * stride
    target = tl.load(TARGET + row)
    running_max = tl.full((BLOCK,), float("-inf"), dtype=tl.float32)
    running_sum = tl.zeros((BLOCK,), dtype=tl.float32)
    picked = tl.zeros((BLOCK,), dtype=tl.float32)
    for start in range(0, V, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        x = tl.load(base + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
        new_max = tl.maximum(running_max, x)
        # Lanes that have seen only -inf keep a zero sum (exp(-inf - -inf) would be NaN).
        scale = tl.where(new_max == float("-inf"), 0.0, tl.exp(running_max - new_max))
        running_sum = running_sum * scale + tl.where(new_max == float("-inf"), 0.0, tl.exp(x - new_max))
        running_max = new_max
        picked += tl.where(cols == target, x, 0.0)
    top = tl.max(running_max, axis=0)
    lse = top + tl.log(tl.sum(running_sum * tl.exp(running_max - top), axis=0))
    valid = (target >= 0) & (target < V)
    loss = tl.where(valid, lse - tl.sum(picked, axis=0), float("nan"))
    loss = tl.where(target == ignore_index, 0.0, loss)
    tl.store(LOSS + row, loss)
    tl.store(LSE + row, lse)


@triton.jit
def cross_entropy_bwd_kernel(LOGITS, TARGET, LSE, GRAD_LOSS, GRAD, V, stride, grad_stride, ignore_index,
                             BLOCK: tl.constexpr):
    """``GRAD[row] = (softmax(LOGITS[row]) - one_hot(TARGET[row])) * GRAD_LOSS[0]``, zero where the target is
    ignore_index; rounded once to GRAD's dtype."""
    row = tl.program_id(0).to(tl.int64)
    target = tl.load(TARGET + row)
    lse = tl.load(LSE + row)
    scale = tl.load(GRAD_LOSS).to(tl.float32)
    scale = tl.where(target == ignore_index, 0.0, scale)
    for start in range(0, V, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        x = tl.load(LOGITS + row * stride + cols, mask=cols < V, other=0.0).to(tl.float32)
        g = (tl.exp(x - lse) - tl.where(cols == target, 1.0, 0.0)) * scale
        tl.store(GRAD + row * grad_stride + cols, g.to(GRAD.dtype.element_ty), mask=cols < V)
