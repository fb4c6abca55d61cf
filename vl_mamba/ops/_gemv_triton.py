"""The Triton kernels behind ``vl_mamba.ops.gemv``; imported only when a CUDA tensor reaches them (or under
``TRITON_INTERPRET=1``, which runs them on the CPU for tests)."""

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


@triton.jit
def norm_gemv_kernel(
    HIDDEN, RESIDUAL, NORM_W, W, BIAS, Y, RES_OUT, N, K, eps, PROGRAMS,
    HAS_RESIDUAL: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """``RES_OUT = HIDDEN + RESIDUAL``; ``Y = W @ rms_norm(RES_OUT) * NORM_W (+ BIAS)``. Each of PROGRAMS programs
    normalises the whole row once (BLOCK_K >= K) and then takes every PROGRAMS-th block of BLOCK_N rows of W; the
    normalised row is rounded to HIDDEN's type before the product, as a separate norm would store it."""
    pid = tl.program_id(0)
    k = tl.arange(0, BLOCK_K)
    km = k < K
    h = tl.load(HIDDEN + k, mask=km, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        h += tl.load(RESIDUAL + k, mask=km, other=0.0).to(tl.float32)
    if pid == 0:
        tl.store(RES_OUT + k, h.to(RES_OUT.dtype.element_ty), mask=km)
    scale = tl.rsqrt(tl.sum(h * h, 0) / K + eps)
    x = (h * scale * tl.load(NORM_W + k, mask=km, other=0.0).to(tl.float32)).to(HIDDEN.dtype.element_ty)
    x = x.to(tl.float32)
    for block in range(pid, tl.cdiv(N, BLOCK_N), PROGRAMS):
        rows = block * BLOCK_N + tl.arange(0, BLOCK_N)
        w = tl.load(W + rows[:, None] * K + k[None, :], mask=(rows < N)[:, None] & km[None, :], other=0.0)
        y = tl.sum(w.to(tl.float32) * x[None, :], 1)
        if HAS_BIAS:
            y += tl.load(BIAS + rows, mask=rows < N, other=0.0).to(tl.float32)
        tl.store(Y + rows, y.to(Y.dtype.element_ty), mask=rows < N)
