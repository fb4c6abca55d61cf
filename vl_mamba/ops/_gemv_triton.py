"""The Triton kernel behind ``vl_mamba.ops.gemv``; imported only when a CUDA tensor reaches it."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def gemv_kernel(W, X, BIAS, Y, N, K, HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """``Y[n] = sum_k W[n, k] * X[k] (+ BIAS[n])`` for this program's BLOCK_N rows; W row-major, float32 sums,
    one rounding to Y's type."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        w = tl.load(W + rows[:, None] * K + cols[None, :], mask=(rows[:, None] < N) & (cols[None, :] < K), other=0.0)
        x = tl.load(X + cols, mask=cols < K, other=0.0)
        acc += w.to(tl.float32) * x.to(tl.float32)[None, :]
    y = tl.sum(acc, 1)
    if HAS_BIAS:
        y += tl.load(BIAS + rows, mask=rows < N, other=0.0).to(tl.float32)
    tl.store(Y + rows, y.to(Y.dtype.element_ty), mask=rows < N)
