"""The Triton kernels behind ``vl_mamba.ops.gemv``; imported only when a CUDA tensor reaches them (or under
``TRITON_INTERPRET=1``, which runs them on the CPU for tests).

With ``PDL`` (see ``vl_mamba.ops.pdl``) each kernel loads its first block of weights, then waits for the kernel
before it (``grid_wait``), and only then reads the vector and writes anything. ``GDC`` says whether that wait is
the real instruction: tests run the PDL order under the interpreter, which has none, with ``GDC=False``."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def grid_wait(GDC: tl.constexpr):
    """Wait until the kernel before this one in the stream has finished and its writes are visible, then let the
    kernel after this one start: the two grid dependency controls of programmatic dependent launch."""
    if GDC:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()


@triton.jit
def gemv_kernel(
    W, X, BIAS, Y, N, K, HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr,
    GDC: tl.constexpr,
):
    """``Y[n] = sum_k W[n, k] * X[k] (+ BIAS[n])`` for this program's BLOCK_N rows; W row-major, float32 sums,
    one rounding to Y's type."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    start = 0
    if PDL:
        cols = tl.arange(0, BLOCK_K)
        w = tl.load(W + rows[:, None] * K + cols[None, :], mask=(rows[:, None] < N) & (cols[None, :] < K), other=0.0)
        grid_wait(GDC)
        x = tl.load(X + cols, mask=cols < K, other=0.0)
        acc += w.to(tl.float32) * x.to(tl.float32)[None, :]
        start = BLOCK_K
    for k0 in range(start, K, BLOCK_K):
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
    PDL: tl.constexpr, GDC: tl.constexpr,
):
    """``RES_OUT = HIDDEN + RESIDUAL``; ``Y = W @ rms_norm(RES_OUT) * NORM_W (+ BIAS)``. Each of PROGRAMS programs
    normalises the whole row once (BLOCK_K >= K) and then takes every PROGRAMS-th block of BLOCK_N rows of W; the
    normalised row is rounded to HIDDEN's type before the product, as a separate norm would store it."""
    pid = tl.program_id(0)
    k = tl.arange(0, BLOCK_K)
    km = k < K
    first = pid
    if PDL:  # this program's first block of rows, read before the wait; PROGRAMS <= the number of blocks
        rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        w = tl.load(W + rows[:, None] * K + k[None, :], mask=(rows < N)[:, None] & km[None, :], other=0.0)
        grid_wait(GDC)
        first = pid + PROGRAMS
    h = tl.load(HIDDEN + k, mask=km, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        h += tl.load(RESIDUAL + k, mask=km, other=0.0).to(tl.float32)
    if pid == 0:
        tl.store(RES_OUT + k, h.to(RES_OUT.dtype.element_ty), mask=km)
    scale = tl.rsqrt(tl.sum(h * h, 0) / K + eps)
    x = (h * scale * tl.load(NORM_W + k, mask=km, other=0.0).to(tl.float32)).to(HIDDEN.dtype.element_ty)
    x = x.to(tl.float32)
    if PDL:
        _store_rows(w, x, BIAS, Y, rows, N, HAS_BIAS)
    for block in range(first, tl.cdiv(N, BLOCK_N), PROGRAMS):
        rows = block * BLOCK_N + tl.arange(0, BLOCK_N)
        w = tl.load(W + rows[:, None] * K + k[None, :], mask=(rows < N)[:, None] & km[None, :], other=0.0)
        _store_rows(w, x, BIAS, Y, rows, N, HAS_BIAS)


@triton.jit
def _store_rows(w, x, BIAS, Y, rows, N, HAS_BIAS: tl.constexpr):
    """``Y[rows] = w @ x (+ BIAS[rows])`` for a block of whole rows w and the float32 vector x."""
    y = tl.sum(w.to(tl.float32) * x[None, :], 1)
    if HAS_BIAS:
        y += tl.load(BIAS + rows, mask=rows < N, other=0.0).to(tl.float32)
    tl.store(Y + rows, y.to(Y.dtype.element_ty), mask=rows < N)
