"""Selective scan, the recurrence at the heart of Mamba-1.

For every channel ``d`` and state index ``n``::

    h_t = exp(dt_t * A[d, n]) * h_{t-1} + dt_t * B_t[n] * u_t
    y_t = sum_n C_t[n] * h_t + D[d] * u_t            (then * silu(z_t) when z is given)

Three functions share one signature (mamba_ssm's):

- ``selective_scan_fn``: the entry point. mamba_ssm's CUDA kernel for CUDA tensors when mamba_ssm is installed,
  ``selective_scan_torch`` otherwise.
- ``selective_scan_torch``: a chunked two-level scan in PyTorch with a hand-written backward. It never
  exponentiates a growing sum, so it cannot overflow however large ``dt * |A|`` becomes.
- ``selective_scan_ref``: a plain loop over time, differentiated by autograd. It is the specification.

``selective_state_update`` advances the recurrence by one step for generation, with ``_ref`` beside it.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "selective_scan_fn",
    "selective_scan_torch",
    "selective_scan_ref",
    "selective_state_update",
    "selective_state_update_ref",
    "linear_scan",
]


@functools.cache
def _cuda_scan():
    """mamba_ssm's selective scan, or None where it does not import (no CUDA build)."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as kernel
    except ImportError:
        return None
    return kernel


@functools.cache
def _cuda_state_update():
    try:
        from mamba_ssm.ops.triton.selective_state_update import selective_state_update as kernel
    except ImportError:
        return None
    return kernel


def _kernel_ok(*tensors: Tensor | None) -> bool:
    present = [t for t in tensors if t is not None]
    return all(t.is_cuda for t in present) and all(t.dtype != torch.float64 for t in present)


def selective_scan_fn(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Selective scan: mamba_ssm's CUDA kernel when it applies, ``selective_scan_torch`` otherwise.

    Args:
        u: input, (batch, dim, L).
        delta: time steps before bias and softplus, (batch, dim, L).
        A: state matrix (negative for a stable scan), (dim, N).
        B: input projection, (batch, N, L), or (batch, G, N, L) with dim split into G groups.
        C: output projection, same shape as B.
        D: skip connection, (dim,).
        z: gate, (batch, dim, L); the output is multiplied by silu(z).
        delta_bias: added to delta before the softplus, (dim,).
        delta_softplus: apply softplus to delta.
        return_last_state: also return the final state, (batch, dim, N).

    Returns:
        y with u's dtype, (batch, dim, L); and the last state (float32) when asked for.
    """
    if _kernel_ok(u, delta, A, B, C, D, z, delta_bias):
        kernel = _cuda_scan()
        if kernel is not None:
            return kernel(
                u.contiguous(), delta.contiguous(), A.contiguous(), B.contiguous(), C.contiguous(),
                D, None if z is None else z.contiguous(), delta_bias, delta_softplus, return_last_state,
            )
    return selective_scan_torch(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)


def selective_scan_torch(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """The chunked PyTorch selective scan; arguments and result as ``selective_scan_fn``."""
    _check_shapes(u, delta, A, B, C, D, z, delta_bias)
    y, last = _SelectiveScan.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    return (y, last) if return_last_state else y


def selective_scan_ref(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """The specification: one step of the recurrence per time step, in float32 (float64 for float64 input)."""
    _check_shapes(u, delta, A, B, C, D, z, delta_bias)
    in_dtype = u.dtype
    cdt = _compute_dtype(u)
    u, delta, A, B, C = (t.to(cdt) for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.to(cdt)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    batch, dim, length = u.shape
    groups = 1 if B.dim() == 3 else B.shape[1]
    B = B.view(batch, groups, 1, -1, length).expand(-1, -1, dim // groups, -1, -1).reshape(batch, dim, -1, length)
    C = C.view(batch, groups, 1, -1, length).expand(-1, -1, dim // groups, -1, -1).reshape(batch, dim, -1, length)
    decay = torch.exp(delta.unsqueeze(-1) * A.unsqueeze(1))  # (batch, dim, L, N)
    inputs = (delta * u).unsqueeze(-1) * B.transpose(2, 3)  # (batch, dim, L, N)
    C = C.transpose(2, 3)
    h = u.new_zeros(batch, dim, A.shape[1])
    ys = []
    for decay_t, input_t, C_t in zip(decay.unbind(2), inputs.unbind(2), C.unbind(2)):
        h = decay_t * h + input_t
        ys.append((h * C_t).sum(-1))
    y = torch.stack(ys, dim=-1) if ys else u.new_zeros(batch, dim, 0)
    if D is not None:
        y = y + u * D.to(cdt)[:, None]
    if z is not None:
        y = y * F.silu(z.to(cdt))
    y = y.to(in_dtype)
    return (y, h) if return_last_state else y


def selective_state_update(
    state: Tensor,
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    dt_bias: Tensor | None = None,
    dt_softplus: bool = False,
) -> Tensor:
    """One step of the recurrence; ``state`` is updated in place (mamba_ssm's Triton kernel on CUDA).

    Args:
        state: (batch, dim, N).
        x, dt, z: (batch, dim).
        A: (dim, N).
        B, C: (batch, N) or (batch, G, N).
        D, dt_bias: (dim,).

    Returns:
        y: (batch, dim), with x's dtype.
    """
    if _kernel_ok(state, x, dt, A, B, C, D, z, dt_bias) and B.dim() == 2:
        kernel = _cuda_state_update()
        if kernel is not None:
            return kernel(state, x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus)
    return selective_state_update_ref(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)


def selective_state_update_ref(
    state: Tensor,
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    dt_bias: Tensor | None = None,
    dt_softplus: bool = False,
) -> Tensor:
    """The specification of ``selective_state_update``: same arguments, same in-place update."""
    cdt = _compute_dtype(x, state)
    batch, dim = x.shape
    dt = dt.to(cdt)
    if dt_bias is not None:
        dt = dt + dt_bias.to(cdt)
    if dt_softplus:
        dt = F.softplus(dt)
    groups = 1 if B.dim() == 2 else B.shape[1]
    B = B.to(cdt).view(batch, groups, 1, -1).expand(-1, -1, dim // groups, -1).reshape(batch, dim, -1)
    C = C.to(cdt).view(batch, groups, 1, -1).expand(-1, -1, dim // groups, -1).reshape(batch, dim, -1)
    xf = x.to(cdt)
    h = torch.exp(dt[..., None] * A.to(cdt)) * state.to(cdt) + (dt * xf)[..., None] * B
    state.copy_(h)
    y = (h * C).sum(-1)
    if D is not None:
        y = y + xf * D.to(cdt)
    if z is not None:
        y = y * F.silu(z.to(cdt))
    return y.to(x.dtype)


def linear_scan(a: Tensor, b: Tensor, reverse: bool = False) -> Tensor:
    """All states of ``h_t = a_t * h_{t-1} + b_t`` with ``h_{-1} = 0``, time on the first dimension.

    With ``reverse=True`` the recurrence runs backwards: ``h_t = a_t * h_{t+1} + b_t``.

    Args:
        a: decays, (L, ...).
        b: inputs, same shape as a.

    Returns:
        h: (L, ...), a new tensor.
    """
    length = a.shape[0]
    size, chunks = chunking(length)
    pad = size * chunks - length
    a = torch.cat([a, a.new_zeros(pad, *a.shape[1:])])
    h = torch.cat([b, b.new_zeros(pad, *b.shape[1:])])
    linear_scan_(a, h, size, reverse)
    return h[:length]


def chunking(length: int) -> tuple[int, int]:
    """(chunk size, number of chunks) for ``linear_scan_``: about sqrt(L) of each."""
    size = max(1, math.isqrt(max(length, 1) - 1) + 1)
    return size, max(1, -(-length // size))


def linear_scan_(a: Tensor, b: Tensor, size: int, reverse: bool = False) -> None:
    """``linear_scan`` in place: ``b`` becomes ``h``. Both are contiguous with a length divisible by ``size``.

    The sequence is cut into chunks of ``size`` steps. One loop over the steps of a chunk scans every chunk at
    once from a zero start; a loop over chunks carries the state across chunk borders (each chunk's total decay
    is a product of its decays); a last loop over the steps of a chunk adds the carried state, decayed. Only
    products of decays are formed, so nothing can overflow, whatever the decays' range. Not differentiable:
    ``_SelectiveScan`` supplies the backward.
    """
    length = b.shape[0]
    if length == 0:
        return
    chunks = length // size
    a = a.view(chunks, size, -1)
    h = b.view(chunks, size, -1)
    steps = range(size - 1, -1, -1) if reverse else range(size)
    for prev, t in zip(steps, steps[1:]):
        h[:, t].addcmul_(a[:, t], h[:, prev])
    if chunks == 1:
        return
    total = a.prod(1)
    carry_in = torch.empty_like(total)
    carry = torch.zeros_like(total[0])
    for c in range(chunks - 1, -1, -1) if reverse else range(chunks):
        carry_in[c] = carry
        carry = torch.addcmul(h[c, steps[-1]], total[c], carry)
    for t in steps:
        carry_in.mul_(a[:, t])
        h[:, t].add_(carry_in)


class _SelectiveScan(torch.autograd.Function):
    """Chunked selective scan with an explicit backward: two linear scans and no autograd graph over time.

    The large (L, batch, dim, N) buffers are allocated once each and padded to whole chunks; the decays get one
    extra zero row so that the backward's shifted decays (``decay_{t+1}``) are a view, not a copy.
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        cdt = _compute_dtype(u)
        length = u.shape[-1]
        size, chunks = chunking(length)
        dt, pre = _time_steps(delta, delta_bias, delta_softplus, cdt)  # (L, b, d)
        ut = _tm(u, cdt)
        Bt, Ct = _time_major(B, cdt), _time_major(C, cdt)  # (L, b, G, N)
        Af = A.to(cdt)
        decay = dt.new_empty(size * chunks + 1, *dt.shape[1:], Af.shape[1])
        torch.mul(dt.unsqueeze(-1), Af, out=decay[:length]).exp_()
        decay[length:] = 0
        h = dt.new_empty(size * chunks, *decay.shape[1:])
        _grouped_outer(dt * ut, Bt, out=h[:length])
        h[length:] = 0
        linear_scan_(decay[:-1], h, size)
        y = _grouped_contract(h[:length], Ct)  # (L, b, d)
        if D is not None:
            y = y + ut * D.to(cdt)
        out = y
        if z is not None:
            out = y * F.silu(_tm(z, cdt))
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, pre, dt, decay, h, y)
        ctx.delta_softplus = delta_softplus
        ctx.size = size
        last = h[length - 1].clone() if length else h.new_zeros(h.shape[1:])
        ctx.mark_non_differentiable(last)
        return out.permute(1, 2, 0).contiguous().to(u.dtype), last

    @staticmethod
    def backward(ctx, grad_out, grad_last):
        u, delta, A, B, C, D, z, delta_bias, pre, dt, decay, h, y = ctx.saved_tensors
        cdt = h.dtype
        length = u.shape[-1]
        g = _tm(grad_out, cdt)  # (L, b, d)
        ut = _tm(u, cdt)
        grad_z = None
        if z is not None:
            zt = _tm(z, cdt)
            sig = torch.sigmoid(zt)
            grad_z = (g * y * sig * (1 + zt * (1 - sig))).permute(1, 2, 0).to(z.dtype)
            g = g * zt * sig
        grad_u = torch.zeros_like(ut)
        grad_D = None
        if D is not None:
            grad_D = (g * ut).sum((0, 1)).to(D.dtype)
            grad_u = g * D.to(cdt)
        Bt, Ct = _time_major(B, cdt), _time_major(C, cdt)
        h = h[:length]
        # y_t = sum_n C_t h_t: adjoints of C and of h.
        grad_C = _grouped_reduce(g, h, Ct.shape[2])
        G = torch.empty_like(decay[1:])
        _grouped_outer(g, Ct, out=G[:length])
        G[length:] = 0
        if grad_last is not None and length:
            G[length - 1] += grad_last.to(cdt)
        # Total adjoint of h: G_t = gh_t + decay_{t+1} * G_{t+1}, a reverse scan over the shifted decays.
        linear_scan_(decay[1:], G, ctx.size, reverse=True)
        G = G[:length]
        # h_t = decay_t * h_{t-1} + dt_t u_t B_t
        grad_B = _grouped_reduce(dt * ut, G, Bt.shape[2])
        grad_dtu = _grouped_contract(G, Bt)
        G[1:] *= h[:-1]
        G[:1] = 0
        G *= decay[:length]  # now the adjoint of dt * A
        flat_G = G.view(-1, *G.shape[2:])
        grad_dt = grad_dtu * ut + torch.einsum("kdn,dn->kd", flat_G, A.to(cdt)).view_as(dt)
        grad_A = torch.einsum("kd,kdn->dn", dt.view(-1, dt.shape[-1]), flat_G).to(A.dtype)
        grad_u = grad_u + grad_dtu * dt
        if ctx.delta_softplus:
            grad_dt = grad_dt * torch.sigmoid(pre)
        grad_delta_bias = None if delta_bias is None else grad_dt.sum((0, 1)).to(delta_bias.dtype)
        return (
            grad_u.permute(1, 2, 0).to(u.dtype),
            grad_dt.permute(1, 2, 0).to(delta.dtype),
            grad_A,
            _from_time_major(grad_B, B),
            _from_time_major(grad_C, C),
            grad_D,
            grad_z,
            grad_delta_bias,
            None,
        )


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _time_steps(delta: Tensor, bias: Tensor | None, softplus: bool, cdt: torch.dtype) -> tuple[Tensor, Tensor]:
    """(dt, pre-activation), both time-major (L, b, d)."""
    pre = _tm(delta, cdt)
    if bias is not None:
        pre = pre + bias.to(cdt)
    return (F.softplus(pre) if softplus else pre), pre


def _time_major(M: Tensor, cdt: torch.dtype) -> Tensor:
    """(b, N, L) or (b, G, N, L) -> (L, b, G, N)."""
    if M.dim() == 3:
        M = M.unsqueeze(1)
    return M.to(cdt).permute(3, 0, 1, 2).contiguous()


def _tm(x: Tensor, cdt: torch.dtype) -> Tensor:
    """(b, d, L) -> contiguous time-major (L, b, d) in the compute dtype."""
    return x.to(cdt).permute(2, 0, 1).contiguous()


def _from_time_major(grad: Tensor, like: Tensor) -> Tensor:
    """(L, b, G, N) -> the layout and dtype of ``like``."""
    grad = grad.permute(1, 2, 3, 0)
    if like.dim() == 3:
        grad = grad.squeeze(1)
    return grad.contiguous().to(like.dtype)


def _grouped_outer(x: Tensor, M: Tensor, out: Tensor) -> Tensor:
    """x (L, b, d), M (L, b, G, N) -> out = x[d] * M[group(d), n], (L, b, d, N)."""
    L, b, d = x.shape
    G, N = M.shape[2:]
    torch.mul(x.view(L, b, G, d // G, 1), M.unsqueeze(3), out=out.view(L, b, G, d // G, N))
    return out


def _grouped_contract(h: Tensor, M: Tensor) -> Tensor:
    """h (L, b, d, N), M (L, b, G, N) -> sum_n h[d, n] M[group(d), n], (L, b, d)."""
    L, b, d, N = h.shape
    G = M.shape[2]
    out = torch.matmul(h.view(L, b, G, d // G, N), M.unsqueeze(-1))
    return out.view(L, b, d)


def _grouped_reduce(x: Tensor, h: Tensor, groups: int) -> Tensor:
    """x (L, b, d), h (L, b, d, N) -> sum over each group's d of x[d] * h[d, n], (L, b, G, N)."""
    L, b, d, N = h.shape
    out = torch.matmul(x.view(L, b, groups, 1, d // groups), h.view(L, b, groups, d // groups, N))
    return out.view(L, b, groups, N)


def _check_shapes(u, delta, A, B, C, D, z, delta_bias) -> None:
    if u.dim() != 3:
        raise ValueError(f"u must be (batch, dim, L), got shape {tuple(u.shape)}")
    batch, dim, length = u.shape
    if delta.shape != u.shape:
        raise ValueError(f"delta must have u's shape {tuple(u.shape)}, got {tuple(delta.shape)}")
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"A must be (dim={dim}, N), got {tuple(A.shape)}")
    n = A.shape[1]
    for name, M in (("B", B), ("C", C)):
        ok = (M.dim() == 3 and M.shape == (batch, n, length)) or (
            M.dim() == 4 and M.shape[0] == batch and M.shape[2:] == (n, length) and dim % M.shape[1] == 0
        )
        if not ok:
            raise ValueError(
                f"{name} must be (batch={batch}, N={n}, L={length}) or (batch, G, N, L) with G dividing "
                f"dim={dim}; got {tuple(M.shape)}"
            )
    if B.dim() != C.dim() or (B.dim() == 4 and B.shape[1] != C.shape[1]):
        raise ValueError(f"B and C must have the same number of groups, got {tuple(B.shape)} and {tuple(C.shape)}")
    for name, v in (("D", D), ("delta_bias", delta_bias)):
        if v is not None and v.shape != (dim,):
            raise ValueError(f"{name} must be (dim={dim},), got {tuple(v.shape)}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"z must have u's shape {tuple(u.shape)}, got {tuple(z.shape)}")
