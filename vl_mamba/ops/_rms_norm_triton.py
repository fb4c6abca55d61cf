"""The Triton kernels behind ``vl_mamba.ops.rms_norm``: the residual add and RMSNorm that begin every Mamba block,
forward and backward; imported only when a CUDA tensor reaches them (or under ``TRITON_INTERPRET=1``, which runs
them on the CPU for tests).

Every row (one position's width) is held whole by one program. The forward takes one row a program; the backward
takes ``ROWS`` rows a program, one after another, so that each program sums its own part of the weight's gradient
into a partial row, and ``sum_rows_kernel`` adds up the partial rows, in a fixed order."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def add_rms_norm_fwd_kernel(
    X, RES, W, OUT, RES_OUT, RSTD, D, eps, sx, sres, sout, sres_out,
    HAS_RES: tl.constexpr, BLOCK: tl.constexpr,
):
    """``total = X + RES`` (float32) stored to RES_OUT in its dtype; ``OUT = total * rstd * W`` with
    ``rstd = 1 / sqrt(mean(total^2) + eps)``, also stored (float32) for the backward. The norm is taken from the
    float32 sum, before RES_OUT's rounding."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < D
    total = tl.load(X + row * sx + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_RES:
        total += tl.load(RES + row * sres + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(RES_OUT + row * sres_out + cols, total.to(RES_OUT.dtype.element_ty), mask=mask)
    rstd = 1.0 / tl.sqrt(tl.sum(total * total, axis=0) / D + eps)
    tl.store(RSTD + row, rstd)
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(OUT + row * sout + cols, (total * rstd * w).to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def add_rms_norm_bwd_kernel(
    DY, DRES_OUT, TOTAL, W, RSTD, DX, DRES, DW_PART, N, D, sdy, sdres_out, stotal, sdx, sdres,
    HAS_DRES_OUT: tl.constexpr, STORE_DRES: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr,
):
    """For this program's ROWS rows: ``g = (W * DY - xhat * mean(xhat * W * DY)) * rstd + DRES_OUT`` with
    ``xhat = TOTAL * rstd``, stored to DX (and to DRES, in its dtype, where asked); and the program's partial sum of
    ``DY * xhat`` over its rows, the weight's gradient, to its row of DW_PART (float32)."""
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < D
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    dw = tl.zeros((BLOCK,), dtype=tl.float32)
    for i in range(ROWS):
        row = pid.to(tl.int64) * ROWS + i
        on = mask & (row < N)
        xhat = tl.load(TOTAL + row * stotal + cols, mask=on, other=0.0).to(tl.float32)
        rstd = tl.load(RSTD + row, mask=row < N, other=0.0)
        xhat = xhat * rstd
        dy = tl.load(DY + row * sdy + cols, mask=on, other=0.0).to(tl.float32)
        dw += dy * xhat
        wdy = w * dy
        g = (wdy - xhat * (tl.sum(xhat * wdy, axis=0) / D)) * rstd
        if HAS_DRES_OUT:
            g += tl.load(DRES_OUT + row * sdres_out + cols, mask=on, other=0.0).to(tl.float32)
        tl.store(DX + row * sdx + cols, g.to(DX.dtype.element_ty), mask=on)
        if STORE_DRES:
            tl.store(DRES + row * sdres + cols, g.to(DRES.dtype.element_ty), mask=on)
    tl.store(DW_PART + pid.to(tl.int64) * D + cols, dw, mask=mask)


@triton.jit
def sum_rows_kernel(PART, OUT, P, D, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr):
    """``OUT = PART.sum(0)`` for this program's BLOCK_D columns of the (P, D) float32 PART, in tiles of BLOCK_P
    rows (the same order on every run)."""
    cols = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    acc = tl.zeros((BLOCK_P, BLOCK_D), dtype=tl.float32)
    for p0 in range(0, P, BLOCK_P):
        rows = p0 + tl.arange(0, BLOCK_P)
        acc += tl.load(PART + rows[:, None] * D + cols[None, :], mask=(rows[:, None] < P) & (cols[None, :] < D),
                       other=0.0)
    tl.store(OUT + cols, tl.sum(acc, axis=0).to(OUT.dtype.element_ty), mask=cols < D)
