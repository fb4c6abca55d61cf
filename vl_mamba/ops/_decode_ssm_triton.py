"""The two Triton kernels behind ``vl_mamba.ops.ssm_step``; imported only when a CUDA tensor reaches it (or under
``TRITON_INTERPRET=1``, which runs them on the CPU for tests).

One token, one sequence. ``conv_xproj_kernel``: each program owns a block of channels and a block of ``x_proj``'s
rows; it convolves its channels' window with the new input, applies SiLU, and writes its share of ``x_proj`` (the
product over its channels) to one row of partial sums. ``dt_state_kernel``: each program sums those rows (dt's
low-rank input, B and C), forms dt for its block of channels through ``dt_proj`` and softplus, advances their SSM
state and shifts their conv window (only after every program of the first kernel has read it).

Both kernels load their weights first, then wait for the kernel before them (``grid_wait``, a no-op unless ``GDC``,
launched with programmatic dependent launch: see ``vl_mamba.ops.pdl``), and only then read activations and states
and write anything.
"""

from __future__ import annotations

import triton
import triton.language as tl

from vl_mamba.ops._gemv_triton import grid_wait


@triton.jit
def conv_xproj_kernel(
    X, CONV_STATE, CONV_W, CONV_B, XPROJ_W, XC, PARTIAL, E, R, RP,
    WIDTH: tl.constexpr, HAS_CONV_BIAS: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr,
    BLOCK_W: tl.constexpr, GDC: tl.constexpr,
):
    """X: (E,) new conv input; CONV_STATE: (E, WIDTH), oldest first; CONV_W: (E, WIDTH); XPROJ_W: (R, E);
    XC: (E,) out, silu(conv); PARTIAL: (programs along E, RP) out, float32, each program's share of XPROJ_W @ XC.
    CONV_STATE is only read here (``dt_state_kernel`` shifts it), since programs of other row blocks read it too.

    Program (i, j) owns channels i * BLOCK_C... and rows j * BLOCK_R... of XPROJ_W. Every program convolves its
    channels (a few hundred bytes); those with j == 0 write XC. All loads are issued first, so that their
    latencies overlap."""
    pid_c, pid_r = tl.program_id(0), tl.program_id(1)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cm = c < E
    r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    rm = r < R
    w = tl.load(XPROJ_W + r[:, None] * E + c[None, :], mask=rm[:, None] & cm[None, :], other=0.0)
    j = tl.arange(0, BLOCK_W)
    window_at = c[:, None] * WIDTH + j[None, :]
    in_window = cm[:, None] & (j < WIDTH)[None, :]
    conv_w = tl.load(CONV_W + window_at, mask=in_window, other=0.0).to(tl.float32)
    if HAS_CONV_BIAS:
        conv_b = tl.load(CONV_B + c, mask=cm, other=0.0).to(tl.float32)
    grid_wait(GDC)
    # the window after the shift: the old window's last WIDTH - 1 inputs, then x
    older = tl.load(CONV_STATE + window_at + 1, mask=cm[:, None] & (j < WIDTH - 1)[None, :], other=0.0)
    x = tl.load(X + c, mask=cm, other=0.0)
    window = tl.where((j == WIDTH - 1)[None, :], x[:, None], older)
    acc = tl.sum(window.to(tl.float32) * conv_w, 1)
    if HAS_CONV_BIAS:
        acc += conv_b
    xc = (acc * tl.sigmoid(acc)).to(XC.dtype.element_ty)
    if pid_r == 0:
        tl.store(XC + c, xc, mask=cm)
    # x_proj reads the rounded activation, as the unfused step does
    part = tl.sum(w.to(tl.float32) * xc.to(tl.float32)[None, :], 1)
    tl.store(PARTIAL + pid_c * RP + r, part, mask=rm)


@triton.jit
def dt_state_kernel(
    PARTIAL, P, RP, DT_W, DT_BIAS, A, D, X, XC, Z, CONV_STATE, STATE, Y, E, R_DT, N,
    HAS_DT_BIAS: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, WIDTH: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_RDT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr,
    BLOCK_W: tl.constexpr, GDC: tl.constexpr,
):
    """PARTIAL: (P, RP) float32 rows that sum to x_proj's output [dt_low (R_DT), B (N), C (N)], P <= BLOCK_P;
    DT_W: (E, R_DT); DT_BIAS, D: (E,) float32; A: (E, N) float32; X (the conv input), XC, Z, Y: (E,); STATE:
    (E, N) float32, updated; CONV_STATE: (E, WIDTH), shifted by one with X appended. All loads are issued first,
    so that their latencies overlap."""
    pid = tl.program_id(0)
    p = tl.arange(0, BLOCK_P)
    pm = (p < P)[:, None]
    rows = PARTIAL + p[:, None] * RP
    k = tl.arange(0, BLOCK_RDT)
    km = k < R_DT
    n = tl.arange(0, BLOCK_N)
    nm = n < N
    d = pid * BLOCK_D + tl.arange(0, BLOCK_D)
    dm = d < E
    sm = dm[:, None] & nm[None, :]
    offsets = d[:, None] * N + n[None, :]
    w = tl.load(DT_W + d[:, None] * R_DT + k[None, :], mask=dm[:, None] & km[None, :], other=0.0)
    a = tl.load(A + offsets, mask=sm, other=0.0)
    if HAS_DT_BIAS:
        dt_bias = tl.load(DT_BIAS + d, mask=dm, other=0.0)
    if HAS_D:
        skip = tl.load(D + d, mask=dm, other=0.0)
    grid_wait(GDC)
    dt_parts = tl.load(rows + k[None, :], mask=pm & km[None, :], other=0.0)
    b_parts = tl.load(rows + R_DT + n[None, :], mask=pm & nm[None, :], other=0.0)
    c_parts = tl.load(rows + R_DT + N + n[None, :], mask=pm & nm[None, :], other=0.0)
    h = tl.load(STATE + offsets, mask=sm, other=0.0)
    x = tl.load(XC + d, mask=dm, other=0.0).to(tl.float32)
    if HAS_Z:
        z = tl.load(Z + d, mask=dm, other=0.0).to(tl.float32)
    j = tl.arange(0, BLOCK_W)
    window_at = d[:, None] * WIDTH + j[None, :]
    older = tl.load(CONV_STATE + window_at + 1, mask=dm[:, None] & (j < WIDTH - 1)[None, :], other=0.0)
    x_in = tl.load(X + d, mask=dm, other=0.0)
    dt = tl.sum(w.to(tl.float32) * tl.sum(dt_parts, 0)[None, :], 1)
    if HAS_DT_BIAS:
        dt += dt_bias
    dt = tl.where(dt <= 20.0, tl.log(1.0 + tl.exp(dt)), dt)  # softplus, linear above 20 as torch's
    h = tl.exp(a * dt[:, None]) * h + (dt * x)[:, None] * tl.sum(b_parts, 0)[None, :]
    y = tl.sum(h * tl.sum(c_parts, 0)[None, :], 1)
    tl.debug_barrier()  # every thread has read the old states before any writes the new ones
    tl.store(STATE + offsets, h, mask=sm)
    window = tl.where((j == WIDTH - 1)[None, :], x_in[:, None], older)
    tl.store(CONV_STATE + window_at, window, mask=dm[:, None] & (j < WIDTH)[None, :])
    if HAS_D:
        y += x * skip
    if HAS_Z:
        y *= z * tl.sigmoid(z)
    tl.store(Y + d, y.to(Y.dtype.element_ty), mask=dm)
