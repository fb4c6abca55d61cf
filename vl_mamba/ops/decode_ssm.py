"""The middle of a Mamba-1 decode step, from in_proj's output to out_proj's input, in two kernels.

Between its two large projections, one token of a Mamba layer runs four small operations: the conv update
(shift the window, convolve, SiLU), ``x_proj`` (to dt's low-rank input, B and C), ``dt_proj`` and the state
update. At batch 1 each is a kernel of a few microseconds whose time is mostly its launch and its ramp, not its
reads (x_proj and dt_proj read about 2 MB each at Mamba-2.8B's shapes). ``ssm_step`` fuses them into two Triton
kernels (``_decode_ssm_triton``): conv + x_proj, each program writing partial sums over its channels; then
dt_proj, softplus, the state update and the conv window's shift, each program summing those partials itself. The
sums stay in float32 from x_proj to the state update, where the unfused step rounds x_proj's and dt_proj's
outputs to the model's dtype.

``ssm_step`` takes the kernels for one CUDA sequence in bf16/fp16 when no gradient is wanted, and otherwise the
same four operations one by one (each with its own kernel where installed); ``ssm_step_ref`` composes their
``_ref`` twins and is the specification.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from vl_mamba.ops.causal_conv1d import causal_conv1d_update, causal_conv1d_update_ref
from vl_mamba.ops.gemv import _needs_autograd, _next_power_of_2, linear_decode, linear_decode_ref
from vl_mamba.ops.pdl import launch_options, use_pdl
from vl_mamba.ops.selective_scan import selective_state_update, selective_state_update_ref

__all__ = ["ssm_step", "ssm_step_ref", "ssm_step_fused"]

BLOCK_C = 256
"""Channels per program of the conv + x_proj kernel; d_inner / BLOCK_C rows of partial sums."""
BLOCK_R = 64
"""``x_proj`` rows per program of the conv + x_proj kernel."""
BLOCK_D = 64
"""Channels per program of the dt_proj + state-update kernel."""
WARPS = 8
"""Warps per program of both kernels."""


@functools.cache
def _kernels():
    """The two Triton kernels, or None where Triton does not import."""
    try:
        from vl_mamba.ops._decode_ssm_triton import conv_xproj_kernel, dt_state_kernel
    except ImportError:
        return None
    return conv_xproj_kernel, dt_state_kernel


def ssm_step(
    x: Tensor,
    z: Tensor | None,
    conv_state: Tensor,
    ssm_state: Tensor,
    conv_weight: Tensor,
    conv_bias: Tensor | None,
    x_proj_weight: Tensor,
    dt_proj_weight: Tensor,
    A: Tensor,
    D: Tensor | None = None,
    dt_bias: Tensor | None = None,
) -> Tensor:
    """One token through conv, x_proj, dt_proj (+ softplus) and the state update; both states advance in place.

    Args:
        x: in_proj's x half, (batch, d_inner).
        z: in_proj's gate half, (batch, d_inner), or None for no gate.
        conv_state: the last d_conv inputs of the conv, oldest first, (batch, d_inner, d_conv).
        ssm_state: (batch, d_inner, d_state), float32.
        conv_weight: (d_inner, d_conv).
        conv_bias: (d_inner,) or None.
        x_proj_weight: (dt_rank + 2 * d_state, d_inner).
        dt_proj_weight: (d_inner, dt_rank); its bias goes in ``dt_bias``.
        A: (d_inner, d_state), float32 (-exp(A_log)).
        D, dt_bias: (d_inner,), float32, or None.

    Returns:
        y: (batch, d_inner), x's dtype, ready for out_proj.
    """
    args = (x, z, conv_state, ssm_state, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, A, D, dt_bias)
    if _fused_ok(*args) and _kernels() is not None:
        return ssm_step_fused(*args)
    return _ssm_step_apart(*args)


def ssm_step_ref(
    x: Tensor,
    z: Tensor | None,
    conv_state: Tensor,
    ssm_state: Tensor,
    conv_weight: Tensor,
    conv_bias: Tensor | None,
    x_proj_weight: Tensor,
    dt_proj_weight: Tensor,
    A: Tensor,
    D: Tensor | None = None,
    dt_bias: Tensor | None = None,
) -> Tensor:
    """The specification of ``ssm_step``: the four operations' ``_ref`` twins one after the other."""
    args = (x, z, conv_state, ssm_state, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, A, D, dt_bias)
    return _compose(args, causal_conv1d_update_ref, linear_decode_ref, selective_state_update_ref)


def _ssm_step_apart(*args) -> Tensor:
    """The four operations one by one, each with its own kernel where one applies."""
    return _compose(args, causal_conv1d_update, linear_decode, selective_state_update)


def _compose(args: tuple, conv_update, linear, state_update) -> Tensor:
    x, z, conv_state, ssm_state, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, A, D, dt_bias = args
    n = A.shape[1]
    x = conv_update(x, conv_state, conv_weight, conv_bias, "silu")
    dt, B, C = linear(x, x_proj_weight).split([dt_proj_weight.shape[1], n, n], dim=-1)
    dt = linear(dt, dt_proj_weight)
    return state_update(ssm_state, x, dt, A, B, C, D, z, dt_bias=dt_bias, dt_softplus=True)


def _fused_ok(x, z, conv_state, ssm_state, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, A, D, dt_bias):
    half = (torch.bfloat16, torch.float16)
    floats = [t for t in (A, D, dt_bias) if t is not None]
    return (
        not _needs_autograd(x, z, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, A, D, dt_bias)
        and x.is_cuda
        and x.dim() == 2
        and x.shape[0] == 1
        and x.dtype in half
        and all(t.dtype == x.dtype for t in (conv_state, conv_weight, x_proj_weight, dt_proj_weight))
        and (z is None or z.dtype == x.dtype)
        and (conv_bias is None or conv_bias.dtype == x.dtype)
        and ssm_state.dtype == torch.float32
        and conv_state.is_contiguous()
        and ssm_state.is_contiguous()
        and all(t.dtype == torch.float32 for t in floats)
    )


def ssm_step_fused(
    x: Tensor,
    z: Tensor | None,
    conv_state: Tensor,
    ssm_state: Tensor,
    conv_weight: Tensor,
    conv_bias: Tensor | None,
    x_proj_weight: Tensor,
    dt_proj_weight: Tensor,
    A: Tensor,
    D: Tensor | None = None,
    dt_bias: Tensor | None = None,
) -> Tensor:
    """``ssm_step`` as the two Triton kernels, for one sequence; no device or dtype checks (``ssm_step`` makes
    them). Float32 tensors work too: under ``TRITON_INTERPRET=1`` the kernels run on the CPU this way in tests."""
    e, width = conv_weight.shape
    rows, rank = x_proj_weight.shape[0], dt_proj_weight.shape[1]
    n = A.shape[1]
    if x.shape != (1, e) or rows != rank + 2 * n or conv_state.shape != (1, e, width):
        raise ValueError(
            f"ssm_step_fused takes one sequence: x (1, {e}), conv_state (1, {e}, {width}), x_proj rows = dt_rank "
            f"+ 2 d_state; got x {tuple(x.shape)}, conv_state {tuple(conv_state.shape)}, x_proj {rows} rows"
        )
    conv_xproj_kernel, dt_state_kernel = _kernels()
    x, conv_state, ssm_state = x.contiguous(), _contiguous(conv_state), _contiguous(ssm_state)
    conv_weight, x_proj_weight, dt_proj_weight, A = (
        t.contiguous() for t in (conv_weight, x_proj_weight, dt_proj_weight, A)
    )
    programs = -(-e // BLOCK_C)
    pdl = use_pdl(x)
    partial = torch.empty(programs, rows, device=x.device, dtype=torch.float32)
    xc = torch.empty_like(x)
    conv_xproj_kernel[(programs, -(-rows // BLOCK_R))](
        x, conv_state, conv_weight, conv_bias if conv_bias is not None else x, x_proj_weight, xc, partial,
        e, rows, rows, WIDTH=width, HAS_CONV_BIAS=conv_bias is not None, BLOCK_C=BLOCK_C, BLOCK_R=BLOCK_R,
        BLOCK_W=_next_power_of_2(width), GDC=pdl, num_warps=WARPS, **launch_options(pdl),
    )
    y = torch.empty_like(x)
    dt_state_kernel[(-(-e // BLOCK_D),)](
        partial, programs, rows, dt_proj_weight, dt_bias if dt_bias is not None else A, A,
        D if D is not None else A, x, xc, z.contiguous() if z is not None else x, conv_state, ssm_state, y, e, rank,
        n, HAS_DT_BIAS=dt_bias is not None, HAS_D=D is not None, HAS_Z=z is not None, WIDTH=width,
        BLOCK_D=BLOCK_D, BLOCK_RDT=_next_power_of_2(rank), BLOCK_N=_next_power_of_2(n),
        BLOCK_P=_next_power_of_2(programs), BLOCK_W=_next_power_of_2(width), GDC=pdl, num_warps=WARPS,
        **launch_options(pdl),
    )
    return y


def _contiguous(state: Tensor) -> Tensor:
    """The kernels update states in place, so a copy would lose the update: states must be contiguous."""
    if not state.is_contiguous():
        raise ValueError("ssm_step_fused updates its states in place; they must be contiguous")
    return state
