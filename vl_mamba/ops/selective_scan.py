"""Selective scan, the recurrence at the heart of Mamba-1.

For every channel ``d`` and state index ``n``::

    h_t = exp(dt_t * A[d, n]) * h_{t-1} + dt_t * B_t[n] * u_t
    y_t = sum_n C_t[n] * h_t + D[d] * u_t            (then * silu(z_t) when z is given)

Three functions share one signature (mamba_ssm's):

- ``selective_scan_fn``: the entry point. For CUDA tensors mamba_ssm's CUDA kernel when mamba_ssm is installed,
  else ``selective_scan_triton`` (``scan_triton``) when Triton is. For CPU tensors ``selective_scan_cpu``
  (``scan_cpu``: a C kernel compiled on first use with the machine's compiler) where it builds and loads,
  ``selective_scan_torch`` otherwise (``VL_MAMBA_CPU_KERNEL=0`` chooses it).
- ``selective_scan_torch``: the recurrence in PyTorch, in cache-sized tiles of time steps, with a hand-written
  backward that recomputes each tile's states instead of storing them. It only ever multiplies single-step
  decays, never exponentiates a growing sum, so it cannot overflow however large ``dt * |A|`` becomes. With
  several torch threads, a large scan runs as blocks of channels side by side on worker threads.
- ``selective_scan_ref``: a plain loop over time, differentiated by autograd. It is the specification.

``selective_state_update`` advances the recurrence by one step for generation, with ``_ref`` beside it.
"""

from __future__ import annotations

import functools
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor

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
def _triton_scan():
    """``selective_scan_triton``, or None where Triton does not import."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return None
    from vl_mamba.ops.scan_triton import selective_scan_triton

    return selective_scan_triton


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
    """Selective scan. On CUDA: this package's own kernel (``selective_scan_cuda``) where it takes the operands
    and builds and ``VL_MAMBA_CUDA_SCAN`` lets it (by default on compute capability 9.0 and up,
    ``cuda_build.enabled``); else mamba_ssm's kernel when it applies; else the Triton scan. On the CPU: the
    compiled kernel (``selective_scan_cpu``) where it builds, else ``selective_scan_torch``.

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
        if _own_cuda_ok(u, A, B):
            from vl_mamba.ops.scan_cuda import selective_scan_cuda

            return selective_scan_cuda(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
        kernel = _cuda_scan()
        if kernel is not None:
            return kernel(
                # The kernel takes any strides but a unit one along L, and copies only what lacks it.
                u, delta, A.contiguous(), B, C, D, z, delta_bias, delta_softplus, return_last_state,
            )
        kernel = _triton_scan()
        if kernel is not None:
            return kernel(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    if _cpu_kernel_ok(u, delta, A, B, C, D, z, delta_bias):
        from vl_mamba.ops.scan_cpu import selective_scan_cpu

        return selective_scan_cpu(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    return selective_scan_torch(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)


def _own_cuda_ok(u: Tensor, A: Tensor, B: Tensor) -> bool:
    """``VL_MAMBA_CUDA_SCAN`` lets this package's CUDA kernel run (``cuda_build.enabled``), it takes these operands
    and it builds here."""
    from vl_mamba.ops import scan_cuda

    return scan_cuda.supports(u, A, B) and scan_cuda.switched_on()


def _cpu_kernel_ok(*tensors: Tensor | None) -> bool:
    """CPU tensors, and the compiled CPU kernel builds here (``vl_mamba.ops.cpu_build``)."""
    if not all(t.device.type == "cpu" for t in tensors if t is not None):
        return False
    from vl_mamba.ops.scan_cpu import kernel_available

    return kernel_available()


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
    """The tiled PyTorch selective scan (``_SelectiveScan``); arguments and result as ``selective_scan_fn``.

    As in the reference, gradients also flow back from the last state (mamba_ssm's kernel ignores them).
    """
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
    n = A.shape[1]
    groups = 1 if B.dim() == 3 else B.shape[1]
    B = B.view(batch, groups, 1, n, length).expand(-1, -1, dim // groups, -1, -1).reshape(batch, dim, n, length)
    C = C.view(batch, groups, 1, n, length).expand(-1, -1, dim // groups, -1, -1).reshape(batch, dim, n, length)
    decay = torch.exp(delta.unsqueeze(-1) * A.unsqueeze(1))  # (batch, dim, L, N)
    inputs = (delta * u).unsqueeze(-1) * B.transpose(2, 3)  # (batch, dim, L, N)
    C = C.transpose(2, 3)
    h = u.new_zeros(batch, dim, n)
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
    # mamba_ssm 2.3's Triton kernel fails without D (it unpacks D's strides unconditionally): the reference
    # handles that case.
    if _kernel_ok(state, x, dt, A, B, C, D, z, dt_bias) and B.dim() == 2 and D is not None:
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

    With ``reverse=True`` the recurrence runs backwards: ``h_t = a_t * h_{t+1} + b_t``. One in-place
    ``addcmul_`` per step on contiguous time slices; not differentiable.

    Args:
        a: decays, (L, ...).
        b: inputs, same shape as a.

    Returns:
        h: (L, ...), a new tensor.
    """
    h = b.contiguous().clone()
    a_rows, h_rows = a.unbind(0), h.unbind(0)
    steps = range(len(h_rows) - 2, -1, -1) if reverse else range(1, len(h_rows))
    for t in steps:
        prev = t + 1 if reverse else t - 1
        h_rows[t].addcmul_(a_rows[t], h_rows[prev])
    return h


_TILE_ELEMENTS = 1 << 19
"""Size of each work buffer of ``_SelectiveScan`` in elements (2 MiB in float32, so that a tile's work stays in
the processor's caches); a tile holds as many time steps as fit, at least one."""


class _SelectiveScan(torch.autograd.Function):
    """The selective scan in tiles of consecutive time steps, with a hand-written backward.

    Layout: time first, then batch, group, state, channel: ``(L, batch, G, N, dim / G)``. One time step of every
    sequence is then one contiguous slab, so the recurrence is a loop of one in-place ``addcmul_`` per step,
    and every contraction over N or over the channels is a batched row-vector product.

    The sequence is cut into tiles of ``steps`` time steps; per tile, the decays and the inputs are formed in
    two small buffers that stay in cache, the states are scanned in place, and y is contracted out. The
    forward keeps only the state at the start of each tile; the backward walks the tiles in reverse,
    recomputes each tile's decays and states from its start state, and runs the adjoint recurrence
    ``G_t = C_t g_t + decay_{t+1} G_{t+1}`` through it. Decays are ``exp(dt * A)`` of one step, at most 1 for
    a stable A, and only ever multiplied: nothing can overflow, whatever ``dt * |A|``. The time steps, the
    inputs ``dt * u`` (time-major) and the packed B and C are kept from the forward for the backward: a few
    tensors of the size of u, against the (L, batch, dim, N) states and decays, which are never stored whole.

    Channels never interact, so with several torch threads a large scan is cut into blocks of channels that
    run side by side (``_channel_parts``), each on one thread: most of the work is on rows too short for torch to
    share among threads by itself (one time step of the recurrence is ``batch * N * dim`` elements).
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        keep = any(ctx.needs_input_grad[:8])
        parts = _channel_parts(u, A, B)
        results = _run_parts(
            lambda sl: _forward(*_part_inputs(sl, u, delta, A, B, C, D, z, delta_bias), delta_softplus, keep), parts
        )
        out = _join([r[0] for r in results], 1)
        last = _join([r[1] for r in results], 1)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, *(t for r in results for t in r[2]))
        ctx.parts = parts
        ctx.delta_softplus = delta_softplus
        ctx.set_materialize_grads(False)
        return out, last

    @staticmethod
    def backward(ctx, grad_out, grad_last):
        saved = ctx.saved_tensors
        inputs, per_part = saved[:8], saved[8:]
        size = len(per_part) // len(ctx.parts)

        def part(i: int) -> tuple:
            sl = ctx.parts[i]
            return _backward(
                _part_inputs(sl, *inputs),
                per_part[i * size : (i + 1) * size],
                None if grad_out is None else grad_out[:, sl],
                None if grad_last is None else grad_last[:, sl],
                ctx.delta_softplus,
            )

        indices = list(range(len(ctx.parts)))
        # A backward under grad mode keeps to this thread. It is not differentiable itself (its tile buffers are
        # written with out= ops, which autograd refuses): for double backward the compiled kernel's Function
        # (``scan_cpu``) or ``selective_scan_ref``.
        results = [part(i) for i in indices] if torch.is_grad_enabled() else _run_parts(part, indices)
        return (*_join_grads(results, inputs[3]), None)


def _forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus: bool, keep: bool) -> tuple:
    """The forward of one block of channels: (output, last state, tensors for ``_backward``)."""
    cdt = _compute_dtype(u)
    batch, dim, length = u.shape
    pre, dt = _time_steps(delta, delta_bias, delta_softplus, cdt)  # (b, d, L)
    uf = u.to(cdt)
    tiles = _Tiles(_time_major(dt), _time_major(dt * uf), A, _pack_bc(B, cdt), _pack_bc(C, cdt))
    decay, h = tiles.buffer(), tiles.buffer()
    decay_rows, h_rows = decay.unbind(0), h.unbind(0)
    # The state before each tile: all of them when a backward will follow, else the current one only.
    starts = h.new_empty(max(1, len(tiles.bounds)) if keep else 1, *h.shape[1:])
    starts[0].zero_()
    y = h.new_empty(length, *tiles.dtu.shape[1:])  # (L, b, G, 1, dg)
    last = starts[0]
    for c, (t0, t1) in enumerate(tiles.bounds):
        steps = tiles.scan(t0, t1, starts[c if keep else 0], decay, h, decay_rows, h_rows)
        torch.matmul(tiles.C[t0:t1].transpose(-1, -2), h[:steps], out=y[t0:t1])
        last = h[steps - 1]
        if c + 1 < len(tiles.bounds):
            starts[c + 1 if keep else 0].copy_(last)
    last = last.transpose(-1, -2).reshape(batch, dim, A.shape[1]).clone()  # never a view of a buffer
    y = _batch_major(y.view(length, batch, dim))
    if D is not None:
        y.addcmul_(uf, D.to(cdt)[:, None])
    out = y if z is None else y * F.silu(z.to(cdt))
    saved = (pre, dt, tiles.dt, tiles.dtu, tiles.B, tiles.C, starts, None if z is None else y)
    return out.to(u.dtype), last, saved


def _backward(inputs: tuple, saved: tuple, grad_out: Tensor | None, grad_last: Tensor | None, softplus: bool) -> tuple:
    """The gradients of one block of channels' inputs, from what ``_forward`` kept."""
    u, delta, A, B, C, D, z, delta_bias = inputs
    pre, dt, dt_t, dtu_t, B_t, C_t, starts, y = saved
    cdt = dt.dtype
    batch, dim, length = u.shape
    uf = u.to(cdt)
    tiles = _Tiles(dt_t, dtu_t, A, B_t, C_t)
    # (b, d, L), dense: the gradient often arrives as the transpose of a (b, L, d) tensor (the layer's out_proj
    # reads y that way), and every elementwise op below would run several times slower on that layout.
    g = uf.new_zeros(u.shape) if grad_out is None else grad_out.to(cdt).contiguous()
    grad_z = None
    if z is not None:
        zf = z.to(cdt)
        grad_z = torch.ops.aten.silu_backward(g * y, zf).to(z.dtype)
        g = g * F.silu(zf)
    grad_D = None if D is None else (g * uf).sum((0, 2)).to(D.dtype)
    g_t = _time_major(g).view(dtu_t.shape)  # (L, b, G, 1, dg)
    decay, h, adj = tiles.buffer(), tiles.buffer(), tiles.buffer()  # adj: adjoints of the states
    decay_rows, h_rows, adj_rows = decay.unbind(0), h.unbind(0), adj.unbind(0)
    carry = h.new_zeros(h.shape[1:])  # decay_{t1} * G_{t1} from the tile after this one: (b, G, N, dg)
    if grad_last is not None:
        groups, n = carry.shape[1:3]
        carry.copy_(grad_last.to(cdt).reshape(batch, groups, -1, n).transpose(-1, -2))
    grad_B, grad_C = torch.empty_like(B_t), torch.empty_like(C_t)  # (L, b, G, N, 1)
    grad_dtu, grad_dtA = torch.empty_like(dtu_t), torch.empty_like(dtu_t)  # (L, b, G, 1, dg)
    grad_A = torch.zeros_like(tiles.A)  # (G, N, dg)
    for c, (t0, t1) in reversed(list(enumerate(tiles.bounds))):
        steps = tiles.scan(t0, t1, starts[c], decay, h, decay_rows, h_rows)
        G = adj[:steps]
        torch.mul(g_t[t0:t1], C_t[t0:t1], out=G)
        adj_rows[steps - 1].add_(carry)
        _recur(adj_rows[: steps - 1][::-1], decay_rows[1:steps][::-1], adj_rows[1:steps][::-1])
        torch.mul(decay_rows[0], adj_rows[0], out=carry)
        # h_t = decay_t * h_{t-1} + dtu_t * B_t and y_t = C_t . h_t
        torch.matmul(h[:steps], _column(g_t[t0:t1], h.shape[-2]), out=grad_C[t0:t1])
        torch.matmul(G, _column(dtu_t[t0:t1], G.shape[-2]), out=grad_B[t0:t1])
        torch.matmul(B_t[t0:t1].transpose(-1, -2), G, out=grad_dtu[t0:t1])
        G[1:].mul_(h[: steps - 1])  # times the state before each step: now the adjoint of the decays
        G[0].mul_(starts[c])
        G.mul_(decay[:steps])  # now the adjoint of dt * A
        grad_A.add_(torch.mul(G, dt_t[t0:t1], out=decay[:steps]).sum((0, 1)))
        torch.sum(G.mul_(tiles.A), -2, keepdim=True, out=grad_dtA[t0:t1])
    grad_dtu = _batch_major(grad_dtu.view(length, batch, dim))
    grad_dt = _batch_major(grad_dtA.view(length, batch, dim)).addcmul_(grad_dtu, uf)
    grad_u = grad_dtu.mul_(dt)
    if D is not None:
        grad_u.addcmul_(g, D.to(cdt)[:, None])
    if softplus:
        grad_dt = torch.ops.aten.softplus_backward(grad_dt, pre, 1.0, 20.0)
    grad_delta_bias = None if delta_bias is None else grad_dt.sum((0, 2)).to(delta_bias.dtype)
    return (
        grad_u.to(u.dtype),
        grad_dt.to(delta.dtype),
        grad_A.transpose(1, 2).reshape(A.shape).to(A.dtype),
        _unpack_bc(grad_B, B),
        _unpack_bc(grad_C, C),
        grad_D,
        grad_z,
        grad_delta_bias,
    )


_PART_ELEMENTS = 1 << 20
"""Least work of one block of channels run on its own thread, in state elements (batch * channels * L * N). Below
it (the demo's decoder, 32 x 256 channels x 20 steps x N = 8, is 1.3M) the blocks gained nothing on two cores."""
_PART_CHANNELS = 16
"""Least channels in one block; blocks are cut at multiples of 16 channels where the channel count allows."""


def _channel_parts(u: Tensor, A: Tensor, B: Tensor, least: int | None = None) -> list[slice]:
    """The blocks of channels that run side by side: one block per torch thread, for a scan large enough that
    each block has ``least`` (default ``_PART_ELEMENTS``) of work and ``_PART_CHANNELS`` channels; with groups,
    whole groups."""
    batch, dim, length = u.shape
    least = _PART_ELEMENTS if least is None else least
    if u.device.type != "cpu":
        return [slice(0, dim)]
    groups = 1 if B.dim() == 3 else B.shape[1]
    count = min(torch.get_num_threads(), batch * dim * length * A.shape[1] // least, dim // _PART_CHANNELS)
    if groups > 1:
        count = min(count, groups)
        while count > 1 and groups % count:
            count -= 1
    unit = dim // groups if groups > 1 else (16 if dim % 16 == 0 and dim >= 16 * count else 1)
    units = dim // unit
    count = min(count, units)
    if count < 2:
        return [slice(0, dim)]
    bounds = [round(i * units / count) * unit for i in range(count + 1)]
    return [slice(a, b) for a, b in zip(bounds, bounds[1:])]


_CHANNEL_AXES = (1, 1, 0, 1, 1, 0, 1, 0)
"""The channel (for B and C: group) axis of each input u, delta, A, B, C, D, z, delta_bias."""


def _part_inputs(sl: slice, *inputs: Tensor | None) -> tuple:
    """The scan's inputs restricted to the channels ``sl``: B and C to those channels' groups, or whole when all
    channels share them."""
    u, B = inputs[0], inputs[3]
    dim = u.shape[1]
    if sl == slice(0, dim):
        return inputs
    per_group = dim // B.shape[1] if B.dim() == 4 else None
    cut = []
    for i, (t, axis) in enumerate(zip(inputs, _CHANNEL_AXES)):
        if t is not None and i in (3, 4):  # B, C
            t = t if per_group is None else t.narrow(axis, sl.start // per_group, (sl.stop - sl.start) // per_group)
        elif t is not None:
            t = t.narrow(axis, sl.start, sl.stop - sl.start)
        cut.append(t)
    return tuple(cut)


def _join(tensors: list[Tensor], dim: int) -> Tensor:
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim)


def _join_grads(results: list[tuple], B: Tensor) -> tuple:
    """The gradients of the inputs from those of each block of channels: concatenated along the channels (groups);
    for B and C shared by all channels, summed."""
    if len(results) == 1:
        return results[0]
    joined = []
    for i, (grads, axis) in enumerate(zip(zip(*results), _CHANNEL_AXES)):
        if grads[0] is None:
            joined.append(None)
        elif i in (3, 4) and B.dim() == 3:
            joined.append(torch.stack(grads).sum(0))
        else:
            joined.append(torch.cat(grads, axis))
    return tuple(joined)


_pool: tuple[ThreadPoolExecutor, int, int] | None = None
"""The workers of ``_run_parts``: (pool, its size, the process that started it; a forked child starts its own)."""


def _run_parts(fn, items: list) -> list:
    """``[fn(item) for item in items]``, side by side on worker threads of one torch thread each when there are
    several items. No gradient is recorded on the workers (nor is any on the calling thread inside an autograd
    Function's forward, or in a backward that builds no graph)."""
    if len(items) == 1:
        return [fn(items[0])]
    pool = _workers(len(items))

    def run(item):
        with torch.no_grad():
            return fn(item)

    return [f.result() for f in [pool.submit(run, item) for item in items]]


def _workers(count: int) -> ThreadPoolExecutor:
    """A pool of at least ``count`` threads that run torch ops on one thread each, started on first use."""
    global _pool
    if _pool is not None and _pool[1] >= count and _pool[2] == os.getpid():
        return _pool[0]
    threads = torch.get_num_threads()
    ready = threading.Barrier(count)
    pool = ThreadPoolExecutor(count, "vl-mamba-scan", initializer=_one_thread)
    # Start every worker (each holds the barrier until all have started), then restore the caller's thread
    # count: a worker's torch.set_num_threads(1) also becomes the default of threads started later.
    for f in [pool.submit(ready.wait) for _ in range(count)]:
        f.result()
    torch.set_num_threads(threads)
    if _pool is not None and _pool[2] == os.getpid():
        _pool[0].shutdown(wait=False)
    _pool = (pool, count, os.getpid())
    return pool


def _one_thread() -> None:
    """Make torch ops on this thread run on one thread. torch sets a thread's count on the thread's first parallel
    op, from the process-wide default: one such op runs first, so that it cannot undo the setting."""
    torch.ones(1 << 16).add_(1)
    torch.set_num_threads(1)


class _Tiles:
    """The scan's operands in the tile layout, and the work on one tile, shared by forward and backward.

    Args:
        dt: time steps, time-major, (L, batch, dim) or already (L, batch, G, 1, dim / G).
        dtu: dt * u, same shape.
        A: (dim, N).
        B, C: (L, batch, G, N, 1).
    """

    def __init__(self, dt: Tensor, dtu: Tensor, A: Tensor, B: Tensor, C: Tensor) -> None:
        length, batch = dt.shape[:2]
        groups, n = B.shape[2:4]
        dim = A.shape[0]
        shape = (length, batch, groups, 1, dim // groups)
        self.dt, self.dtu, self.B, self.C = dt.view(shape), dtu.view(shape), B, C
        self.A = A.to(dt.dtype).view(groups, dim // groups, n).transpose(1, 2).contiguous()  # (G, N, dg)
        # Decays as exp2(dt * A * log2(e)), as mamba_ssm's kernel computes them: exp2 is about twice as fast as
        # exp here, for one more rounding in the exponent (a relative error below |dt * A| * 2^-24).
        self.A_log2e = self.A * (1 / math.log(2))
        self.steps = max(1, min(length, _TILE_ELEMENTS // max(1, batch * dim * n)))
        self.bounds = [(t0, min(length, t0 + self.steps)) for t0 in range(0, length, self.steps)]

    def buffer(self) -> Tensor:
        """A work buffer, (steps, batch, G, N, dim / G)."""
        _, batch, groups, _, dg = self.dt.shape
        return self.dt.new_empty(self.steps, batch, groups, self.A.shape[1], dg)

    def scan(
        self, t0: int, t1: int, start: Tensor, decay: Tensor, h: Tensor, decay_rows: tuple, h_rows: tuple
    ) -> int:
        """Fill ``decay[:m]`` and the states ``h[:m]`` (m = t1 - t0) of steps t0..t1-1, from ``start``, the state
        before step t0, (batch, G, N, dim / G); ``*_rows`` are the buffers' ``unbind(0)``. Returns m."""
        steps = t1 - t0
        torch.mul(self.dt[t0:t1], self.A_log2e, out=decay[:steps]).exp2_()
        torch.mul(self.dtu[t0:t1], self.B[t0:t1], out=h[:steps])
        h_rows[0].addcmul_(decay_rows[0], start)
        _recur(h_rows[1:steps], decay_rows[1:steps], h_rows[: steps - 1])
        return steps


def _column(row: Tensor, n: int) -> Tensor:
    """(..., 1, k) -> (..., k, 1): the right operand of the matrix-vector products (..., n, k) @ (..., k, 1).

    Which layout the CPU's batched product runs fast differs with n: on a Xeon, at 128 x (16 x 256) @ (256 x 1),
    the transpose took 1.07 ms against 0.23 ms for a view with unit stride along k; with n below 16 the transpose
    was the faster one (0.07 against 0.13 ms at n = 8). Hence a view for the states' width of 16 and up.
    """
    if n >= 16 and row.is_contiguous():
        return row.view(*row.shape[:-2], row.shape[-1], 1)
    return row.transpose(-1, -2)


def _recur(dst: tuple, a: tuple, src: tuple) -> None:
    """``dst[i] += a[i] * src[i]`` for i = 0, 1, ... in that order, where ``src[i]`` may be ``dst[i - 1]``: a
    sequential recurrence. On the CPU one list call instead of a Python loop: torch's CPU list ops run their
    elements one after another in list order (the scan tests compare the result with the reference loop).
    Elsewhere a list op may run its elements at once, so the loop stays."""
    if dst and dst[0].device.type == "cpu":
        torch._foreach_addcmul_(list(dst), list(a), list(src))
        return
    for d, x, s in zip(dst, a, src):
        d.addcmul_(x, s)


def _time_steps(delta: Tensor, bias: Tensor | None, softplus: bool, cdt: torch.dtype) -> tuple[Tensor, Tensor]:
    """(pre-activation, dt), both (b, d, L) in the compute dtype."""
    pre = delta.to(cdt)
    if bias is not None:
        pre = pre + bias.to(cdt)[:, None]
    return pre, (F.softplus(pre) if softplus else pre)


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _time_major(x: Tensor) -> Tensor:
    """(b, d, L) of any strides -> contiguous (L, b, d)."""
    batch, dim, length = x.shape
    if x.stride(1) == 1 and dim > 1:
        # The channels are already innermost (a gradient arriving as the transpose of a (b, L, d) tensor): the
        # copy moves whole rows of channels, where reshaping first would copy twice.
        return x.permute(2, 0, 1).contiguous()
    return _transpose(x.reshape(batch * dim, length)).view(length, batch, dim)


def _batch_major(x: Tensor) -> Tensor:
    """(L, b, d) -> contiguous (b, d, L)."""
    length, batch, dim = x.shape
    return _transpose(x.reshape(length, batch * dim)).view(batch, dim, length)


_SHORT_SIDE = 128
"""Up to this many rows or columns, ``_transpose`` copies in blocks of 16 along the long side."""


def _transpose(x: Tensor) -> Tensor:
    """(R, C) -> contiguous (C, R).

    When one side is short (a few dozen time steps) torch's copy of a plain transpose runs along that side and
    is about twice as slow as the same copy seen as a 3D permute that moves 16 consecutive elements of the long
    side at a time; for long sides both are alike and the plain one is kept.
    """
    rows, cols = x.shape
    if rows <= _SHORT_SIDE and cols % 16 == 0 and cols > rows:
        return x.reshape(rows, cols // 16, 16).permute(1, 2, 0).contiguous().view(cols, rows)
    if cols <= _SHORT_SIDE and rows % 16 == 0 and rows > cols:
        return x.reshape(rows // 16, 16, cols).permute(2, 0, 1).contiguous().view(cols, rows)
    return x.t().contiguous()


def _pack_bc(M: Tensor, cdt: torch.dtype) -> Tensor:
    """B or C, (b, N, L) or (b, G, N, L) -> (L, b, G, N, 1)."""
    if M.dim() == 3:
        M = M.unsqueeze(1)
    return M.to(cdt).permute(3, 0, 1, 2).contiguous().unsqueeze(-1)


def _unpack_bc(grad: Tensor, like: Tensor) -> Tensor:
    """(L, b, G, N, 1) -> the layout and dtype of ``like``."""
    grad = grad.squeeze(-1).permute(1, 2, 3, 0)
    if like.dim() == 3:
        grad = grad.squeeze(1)
    return grad.contiguous().to(like.dtype)


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
