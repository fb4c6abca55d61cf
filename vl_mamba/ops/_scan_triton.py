"""The two Triton kernels behind ``vl_mamba.ops.selective_scan_triton``; imported only when a CUDA tensor reaches it
(or under ``TRITON_INTERPRET=1``, which runs them on the CPU for tests).

Each program owns one sequence and a block of ``BLOCK_D`` channels of one group and walks the sequence in chunks
of ``T`` time steps; within a chunk it takes the N state indices one at a time (an unrolled loop), so that every
tile is ``(BLOCK_D, T)``. For one state index the recurrence ``h_t = a_t h_{t-1} + b_t`` over a chunk is one
``tl.associative_scan``, the state before the chunk folded into its first input; the states between chunks live
in a small float32 buffer. ``scan_fwd_kernel`` writes y (gated by silu(z)), the last state and, for a backward,
the state before every chunk. ``scan_bwd_kernel`` walks the chunks in reverse: it recomputes a chunk's states from
the stored one and runs the adjoint ``G_t = C_t dy_t + a_{t+1} G_{t+1}`` as a reverse scan. The gradients of B and
C sum over channels: each program adds its block's share into float32 buffers atomically. Decays are
``exp2(dt * A * log2 e)`` of one step, at most 1 for a stable A, only ever multiplied: nothing overflows.

(A first version scanned ``(BLOCK_D, N, T)`` tiles, all state indices at once: 1.5-2x slower on an H100.)
"""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def _recur(a1, b1, a2, b2):
    """Compose two steps of ``h -> a h + b``, the first (earlier in scan order) applied first."""
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _softplus(x):
    """log(1 + exp(x)) as torch computes it (x itself above 20), without losing small values to rounding."""
    e = tl.exp(-tl.abs(x))
    log1p = tl.where(e < 1e-4, e - 0.5 * e * e, tl.log(1.0 + e))
    return tl.where(x > 20.0, x, tl.maximum(x, 0.0) + log1p)


@triton.jit
def _time_steps(DELTA, d, t, m, sdt_d, sdt_l, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """The pre-activation and dt of a (BLOCK_D, T) tile in float32; dt is zero where ``m`` is false."""
    pre = tl.load(DELTA + d[:, None] * sdt_d + t[None, :] * sdt_l, mask=m, other=0.0).to(tl.float32)
    if HAS_BIAS:
        pre += bias[:, None]
    dt = _softplus(pre) if SOFTPLUS else pre
    return pre, tl.where(m, dt, 0.0)


@triton.jit
def scan_fwd_kernel(
    U, DELTA, A, BM, CM, DSKIP, Z, BIAS, OUT, STATES, LAST,
    L, DIM, N, DG, NCHUNK,
    su_b, su_d, su_l, sdt_b, sdt_d, sdt_l, sb_b, sb_g, sb_n, sb_l, sc_b, sc_g, sc_n, sc_l,
    sz_b, sz_d, sz_l, so_b, so_d, so_l,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    STORE_STATES: tl.constexpr, BLOCK_D: tl.constexpr, NS: tl.constexpr, T: tl.constexpr,
):
    """u, delta, z, out: (batch, DIM, L) by their strides; A: (DIM, N) float32, contiguous; B, C: (batch, G, N, L);
    DSKIP, BIAS: (DIM,). STATES: (batch, DIM, NCHUNK, N) float32, the state before each chunk (written when
    STORE_STATES); LAST: (batch, DIM, N) float32, zeroed by the caller, the running state between chunks and the
    last state at the end. DG channels per group; BLOCK_D divides DG. NS = N, the unrolled loop's length."""
    pid_d, pid_b = tl.program_id(0), tl.program_id(1).to(tl.int64)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    dm = d < DIM
    g = (pid_d * BLOCK_D) // DG
    U += pid_b * su_b
    DELTA += pid_b * sdt_b
    BM += pid_b * sb_b + g * sb_g
    CM += pid_b * sc_b + g * sc_g
    Z += pid_b * sz_b
    OUT += pid_b * so_b
    if HAS_D:
        skip = tl.load(DSKIP + d, mask=dm, other=0.0).to(tl.float32)
    bias = tl.zeros((BLOCK_D,), dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(BIAS + d, mask=dm, other=0.0).to(tl.float32)
    tt = tl.arange(0, T)
    first = (tt == 0)[None, :]
    last_col = (tt == T - 1)[None, :]
    state_at = (pid_b * DIM + d) * N  # (BLOCK_D,), + k
    chunk_at = (pid_b * DIM + d) * NCHUNK * N
    for c in range(NCHUNK):
        t = c * T + tt
        tm = t < L
        m = dm[:, None] & tm[None, :]
        u = tl.load(U + d[:, None] * su_d + t[None, :] * su_l, mask=m, other=0.0).to(tl.float32)
        _, dt = _time_steps(DELTA, d, t, m, sdt_d, sdt_l, bias, HAS_BIAS, SOFTPLUS)
        dtu = dt * u
        y = tl.zeros((BLOCK_D, T), dtype=tl.float32)
        for k in tl.static_range(NS):
            a2 = tl.load(A + d * N + k, mask=dm, other=0.0) * LOG2E
            h0 = tl.load(LAST + state_at + k, mask=dm, other=0.0)
            if STORE_STATES:
                tl.store(STATES + chunk_at + c * N + k, h0, mask=dm)
            bk = tl.load(BM + k * sb_n + t * sb_l, mask=tm, other=0.0).to(tl.float32)
            ck = tl.load(CM + k * sc_n + t * sc_l, mask=tm, other=0.0).to(tl.float32)
            a = tl.exp2(dt * a2[:, None])
            x = dtu * bk[None, :]
            _, hs = tl.associative_scan((a, tl.where(first, x + a * h0[:, None], x)), 1, _recur)
            y += hs * ck[None, :]
            tl.store(LAST + state_at + k, tl.sum(tl.where(last_col, hs, 0.0), 1), mask=dm)
        tl.debug_barrier()
        if HAS_D:
            y += skip[:, None] * u
        if HAS_Z:
            z = tl.load(Z + d[:, None] * sz_d + t[None, :] * sz_l, mask=m, other=0.0).to(tl.float32)
            y *= z * tl.sigmoid(z)
        tl.store(OUT + d[:, None] * so_d + t[None, :] * so_l, y.to(OUT.dtype.element_ty), mask=m)


@triton.jit
def scan_bwd_kernel(
    U, DELTA, A, BM, CM, DSKIP, Z, BIAS, DOUT, STATES, CARRY,
    DU, DDELTA, DZ, DB, DC, DA, DDSKIP, DBIAS,
    L, DIM, N, DG, NCHUNK,
    su_b, su_d, su_l, sdt_b, sdt_d, sdt_l, sb_b, sb_g, sb_n, sb_l, sc_b, sc_g, sc_n, sc_l,
    sz_b, sz_d, sz_l, sg_b, sg_d, sg_l,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_DLAST: tl.constexpr, BLOCK_D: tl.constexpr, NS: tl.constexpr, T: tl.constexpr,
):
    """Inputs as ``scan_fwd_kernel``'s; DOUT: gradient of out, same strides as DU, DDELTA, DZ (sg_*), which are
    written. CARRY: (batch, DIM, N) float32, the gradient of the last state (zeros without one), then the adjoint
    carried between chunks. DB, DC: (batch, G, N, L) float32, contiguous, zeroed, summed into atomically. DA:
    (batch, DIM, N), zeroed, DDSKIP, DBIAS: (batch, DIM), float32, each program's sums over time (the caller sums
    over the batch)."""
    pid_d, pid_b = tl.program_id(0), tl.program_id(1).to(tl.int64)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    dm = d < DIM
    g = (pid_d * BLOCK_D) // DG
    groups = DIM // DG
    U += pid_b * su_b
    DELTA += pid_b * sdt_b
    BM += pid_b * sb_b + g * sb_g
    CM += pid_b * sc_b + g * sc_g
    Z += pid_b * sz_b
    DOUT += pid_b * sg_b
    DU += pid_b * sg_b
    DDELTA += pid_b * sg_b
    DZ += pid_b * sg_b
    DB += (pid_b * groups + g) * N * L
    DC += (pid_b * groups + g) * N * L
    if HAS_D:
        skip = tl.load(DSKIP + d, mask=dm, other=0.0).to(tl.float32)
    bias = tl.zeros((BLOCK_D,), dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(BIAS + d, mask=dm, other=0.0).to(tl.float32)
    tt = tl.arange(0, T)
    first = (tt == 0)[None, :]
    last_col = (tt == T - 1)[None, :]
    state_at = (pid_b * DIM + d) * N
    chunk_at = (pid_b * DIM + d) * NCHUNK * N
    grad_skip = tl.zeros((BLOCK_D,), dtype=tl.float32)
    grad_bias = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for i in range(NCHUNK):
        c = NCHUNK - 1 - i
        t = c * T + tt
        tm = t < L
        m = dm[:, None] & tm[None, :]
        u = tl.load(U + d[:, None] * su_d + t[None, :] * su_l, mask=m, other=0.0).to(tl.float32)
        pre, dt = _time_steps(DELTA, d, t, m, sdt_d, sdt_l, bias, HAS_BIAS, SOFTPLUS)
        # The decay of the step after each one, for the adjoint: dt shifted by one step, read again.
        m1 = dm[:, None] & (t + 1 < L)[None, :]
        _, dt1 = _time_steps(DELTA, d, t + 1, m1, sdt_d, sdt_l, bias, HAS_BIAS, SOFTPLUS)
        dtu = dt * u
        dout = tl.load(DOUT + d[:, None] * sg_d + t[None, :] * sg_l, mask=m, other=0.0).to(tl.float32)
        if HAS_Z:
            z = tl.load(Z + d[:, None] * sz_d + t[None, :] * sz_l, mask=m, other=0.0).to(tl.float32)
            sz = tl.sigmoid(z)
            dy = dout * z * sz
        else:
            dy = dout
        y = tl.zeros((BLOCK_D, T), dtype=tl.float32)
        grad_dtu = tl.zeros((BLOCK_D, T), dtype=tl.float32)
        grad_dta = tl.zeros((BLOCK_D, T), dtype=tl.float32)
        for k in tl.static_range(NS):
            ak = tl.load(A + d * N + k, mask=dm, other=0.0)
            a2 = ak * LOG2E
            h0 = tl.load(STATES + chunk_at + c * N + k, mask=dm, other=0.0)
            bk = tl.load(BM + k * sb_n + t * sb_l, mask=tm, other=0.0).to(tl.float32)
            ck = tl.load(CM + k * sc_n + t * sc_l, mask=tm, other=0.0).to(tl.float32)
            a = tl.exp2(dt * a2[:, None])
            x = dtu * bk[None, :]
            _, hs = tl.associative_scan((a, tl.where(first, x + a * h0[:, None], x)), 1, _recur)
            y += hs * ck[None, :]
            a1 = tl.where(m1, tl.exp2(dt1 * a2[:, None]), 0.0)
            rhs = ck[None, :] * dy
            carry = tl.load(CARRY + state_at + k, mask=dm, other=0.0)
            if HAS_DLAST:
                rhs = tl.where((t == L - 1)[None, :], rhs + carry[:, None], rhs)
                carry = tl.where(c == NCHUNK - 1, 0.0, carry)
            rhs = tl.where(last_col, rhs + a1 * carry[:, None], rhs)
            _, G = tl.associative_scan((a1, rhs), 1, _recur, reverse=True)
            tl.store(CARRY + state_at + k, tl.sum(tl.where(first, G, 0.0), 1), mask=dm)
            tl.atomic_add(DC + k * L + t, tl.sum(hs * dy, 0), mask=tm, sem="relaxed")
            tl.atomic_add(DB + k * L + t, tl.sum(G * dtu, 0), mask=tm, sem="relaxed")
            grad_dtu += G * bk[None, :]
            decayed = G * (hs - x)  # G_t * a_t * h_{t-1}
            grad_a = tl.load(DA + state_at + k, mask=dm, other=0.0)
            tl.store(DA + state_at + k, grad_a + tl.sum(decayed * dt, 1), mask=dm)
            grad_dta += decayed * ak[:, None]
        tl.debug_barrier()
        if HAS_D:
            y += skip[:, None] * u
            grad_skip += tl.sum(dy * u, 1)
        if HAS_Z:
            tl.store(DZ + d[:, None] * sg_d + t[None, :] * sg_l,
                     (dout * y * sz * (1.0 + z * (1.0 - sz))).to(DZ.dtype.element_ty), mask=m)
        grad_dt = grad_dta + grad_dtu * u
        grad_u = grad_dtu * dt
        if HAS_D:
            grad_u += skip[:, None] * dy
        if SOFTPLUS:
            grad_dt = tl.where(pre > 20.0, grad_dt, grad_dt * tl.sigmoid(pre))
        grad_dt = tl.where(m, grad_dt, 0.0)
        grad_bias += tl.sum(grad_dt, 1)
        tl.store(DU + d[:, None] * sg_d + t[None, :] * sg_l, grad_u.to(DU.dtype.element_ty), mask=m)
        tl.store(DDELTA + d[:, None] * sg_d + t[None, :] * sg_l, grad_dt.to(DDELTA.dtype.element_ty), mask=m)
    at = pid_b * DIM + d
    if HAS_D:
        tl.store(DDSKIP + at, grad_skip, mask=dm)
    if HAS_BIAS:
        tl.store(DBIAS + at, grad_bias, mask=dm)
