"""``mamba_inner_cuda``: the Mamba-1 layer body (conv, projections, scan, gate, out_proj) around this package's own
CUDA scan (``scan_cuda``), with mamba_ssm's memory plan.

The forward keeps in_proj's output, the weights as its products read them (their bf16 copies under bf16 autocast, so
that the backward does not cast them again) and the scan's saved states (a float32 state every 32 steps, as large as
a bf16 input at 16 states); the backward recomputes the convolution and the projections from it, as mamba_ssm's
``mamba_inner_fn`` does (``checkpoint_lvl=0`` keeps them instead, as there), and has the scan's backward write y
again for out_proj's weight gradient instead of keeping it. y, the gradient of y and the gradient of in_proj's
output are laid out channel-major, (channels, batch * L) viewed as (batch, channels, L), so that out_proj's products
and in_proj's backward read them without copies; so are the scan's gradients of u and delta, which the projections'
backward reads as matrices and adds x_proj's part to in place. The backward is written out (no autograd inside it),
and the conv's backward writes x's gradient straight into in_proj's. It needs no mamba_ssm: the convolution is
``causal_conv1d_forward`` and ``causal_conv1d_backward`` (causal-conv1d's kernel where installed).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from vl_mamba.ops.causal_conv1d import causal_conv1d_backward, causal_conv1d_forward
from vl_mamba.ops.channel_major import as_matrix, compute_dtype, from_matrix, project_matrix, state_rows, weight_grad
from vl_mamba.ops.mamba_inner import check_checkpoint_lvl, check_one_a
from vl_mamba.ops.scan_cuda import scan_backward, scan_forward, scan_operands

__all__ = ["mamba_inner_cuda"]


def mamba_inner_cuda(
    xz: Tensor,
    conv1d_weight: Tensor,
    conv1d_bias: Tensor | None,
    x_proj_weight: Tensor,
    delta_proj_weight: Tensor,
    out_proj_weight: Tensor,
    out_proj_bias: Tensor | None,
    A: Tensor | None,
    D: Tensor | None = None,
    delta_bias: Tensor | None = None,
    checkpoint_lvl: int = 1,
    A_log: Tensor | None = None,
) -> Tensor:
    """``mamba_inner_fn``'s arguments and result (``vl_mamba.ops.mamba_inner``), softplus on delta.

    ``A_log`` (in A's place) is Mamba's parametrisation, A = -exp(A_log): the scan's kernel exponentiates it as it
    reads it and gives its gradient, so that neither takes kernels of its own.

    ``checkpoint_lvl`` as mamba_ssm's: 1 recomputes the conv's output and the x_proj and dt_proj products in the
    backward; 0 keeps them from the forward (two more (batch, d_inner, L) tensors a layer in the activations' dtype,
    for a faster backward).

    Raises:
        RuntimeError: the scan's kernel does not take these operands or is not available (``scan_cuda``).
    """
    check_checkpoint_lvl(checkpoint_lvl)
    check_one_a(A, A_log)
    out = _MambaInner.apply(
        xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, out_proj_weight,
        A if A_log is None else A_log, D, delta_bias, checkpoint_lvl == 0, A_log is not None,
    )
    return out if out_proj_bias is None else out + out_proj_bias


def _channel_major(batch: int, channels: int, length: int, like: Tensor) -> Tensor:
    """An empty (batch, channels, L) tensor stored as (channels, batch, L)."""
    return torch.empty(channels, batch, length, device=like.device, dtype=like.dtype).transpose(0, 1)


def _project(conv: Tensor, x_proj_w: Tensor, dt_proj_w: Tensor):
    """The conv's output (batch, d_inner, L) -> (its matrix, x_proj's output as a (rank + 2N, batch * L) matrix,
    dt before bias, B, C, the two weights), all in the conv's dtype (``project_matrix``)."""
    x_proj_w, dt_proj_w = x_proj_w.to(conv.dtype), dt_proj_w.to(conv.dtype)
    conv_m = as_matrix(conv)
    return (conv_m, *project_matrix(conv_m, x_proj_w, dt_proj_w, conv.shape[0]), x_proj_w, dt_proj_w)


class _MambaInner(torch.autograd.Function):
    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, xz, conv_w, conv_b, x_proj_w, dt_proj_w, out_proj_w, A, D, delta_bias, keep, a_log):
        batch, channels, length = xz.shape
        d = channels // 2
        conv = causal_conv1d_forward(xz[:, :d], conv_w.squeeze(1), conv_b, silu=True)
        with torch.autocast(xz.device.type, enabled=False):  # in the conv's dtype, as the backward recomputes them
            _, x_dbl, dt, B, C, xp_w, dtp_w = _project(conv, x_proj_w, dt_proj_w)
        ops = scan_operands(conv, dt, A, B, C, D, xz[:, d:], delta_bias)
        y = _channel_major(batch, d, length, conv)
        _, _, ckpt = scan_forward(ops, True, keep=True, out=y, a_log=a_log)
        # out_proj in the dtype autocast gives nn.Linear (the activations' otherwise). The three weights are kept
        # for the backward as the products read them, so that the backward does not cast them again.
        out_dtype = compute_dtype(y)
        out_w = out_proj_w.to(out_dtype)
        out = F.linear(as_matrix(y).t().to(out_dtype), out_w)
        ctx.weight_dtypes = (x_proj_w.dtype, dt_proj_w.dtype, out_proj_w.dtype)
        ctx.a_log = a_log
        kept = (conv, x_dbl, dt) if keep else (None, None, None)
        ctx.save_for_backward(xz, conv_w, conv_b, xp_w, dtp_w, out_w, A, D, delta_bias, ckpt, *kept)
        return out.view(batch, length, -1)

    @staticmethod
    @once_differentiable
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, dout):
        xz, conv_w, conv_b, xp_w, dtp_w, out_w, A, D, delta_bias, ckpt, conv, x_dbl, dt = ctx.saved_tensors
        xp_dtype, dtp_dtype, out_dtype = ctx.weight_dtypes
        needs = ctx.needs_input_grad
        batch, channels, length = xz.shape
        d, rank = channels // 2, dtp_w.shape[1]
        x = xz[:, :d]
        with torch.autocast(xz.device.type, enabled=False):  # every product below in the activations' dtype
            if conv is None:  # the conv and the projections again, from in_proj's output (mamba_ssm's memory plan)
                conv = causal_conv1d_forward(x, conv_w.squeeze(1), conv_b, silu=True)
                conv_m, x_dbl, dt, B, C, xp_w, dtp_w = _project(conv, xp_w, dtp_w)
            else:
                B, C = state_rows(x_dbl, rank, batch)
                conv_m = as_matrix(conv)
            cdt = conv.dtype
            ops = scan_operands(conv, dt, A, B, C, D, xz[:, d:], delta_bias)
            dout2d = dout.reshape(batch * length, -1).to(cdt)
            out_w = out_w.to(cdt)
            # dy = dout @ W_out, computed as W_out^T @ dout^T: (d_inner, batch * L), channel-major.
            dy = from_matrix(out_w.t() @ dout2d.t(), batch)
            dxz = _channel_major(batch, channels, length, xz)
            # du and ddelta channel-major, so that the products below read them as matrices without copies.
            du, ddelta = _channel_major(batch, d, length, conv), _channel_major(batch, d, length, conv)
            out_z = _channel_major(batch, d, length, conv) if needs[5] else None
            # dB and dC go straight into their rows of x_proj's output gradient.
            d_dbl = torch.empty_like(x_dbl)
            d_bc = from_matrix(d_dbl[rank:], batch).view(batch, 2, B.shape[1], length)
            _, _, dA, _, _, dD, _, dbias = scan_backward(
                ops, ckpt, True, dy, None, dz=dxz[:, d:], out_z=out_z, du=du, ddelta=ddelta, dbc=d_bc,
                a_log=ctx.a_log,
            )
            d_out_w = None if out_z is None else weight_grad(dout2d.t(), as_matrix(out_z).t(), out_dtype)
            d_conv_w = d_conv_b = d_xproj = d_dtproj = None
            if any(needs[:5]):
                # The rest of x_proj's output gradient: dt's part, through dt_proj.
                ddelta_m = as_matrix(ddelta)
                torch.mm(dtp_w.t(), ddelta_m, out=d_dbl[:rank])
                if needs[4]:
                    d_dtproj = weight_grad(ddelta_m, x_dbl[:rank].t(), dtp_dtype)
                if needs[3]:
                    d_xproj = weight_grad(d_dbl, conv_m.t(), xp_dtype)
                if any(needs[:3]):
                    # The conv output's gradient: the scan's (du) plus x_proj's, summed in place.
                    as_matrix(du).addmm_(xp_w.t(), d_dbl)
                    _, d_conv_w, d_conv_b = causal_conv1d_backward(
                        x, conv_w.squeeze(1), conv_b, du, silu=True, dx=dxz[:, :d]
                    )
                    d_conv_w = d_conv_w.unsqueeze(1)
        return (
            dxz if needs[0] else None,
            d_conv_w if needs[1] else None,
            d_conv_b if needs[2] else None,
            d_xproj, d_dtproj, d_out_w,
            dA.to(A.dtype) if needs[6] else None,
            dD.to(D.dtype) if needs[7] else None,
            dbias.to(delta_bias.dtype) if needs[8] else None,
            None,
            None,
        )
