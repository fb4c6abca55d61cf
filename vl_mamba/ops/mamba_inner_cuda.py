"""``mamba_inner_cuda``: the Mamba-1 layer body (conv, projections, scan, gate, out_proj) around this package's own
CUDA scan (``scan_cuda``), with mamba_ssm's memory plan.

The forward keeps in_proj's output, the weights and the scan's saved states (a float32 state every 32 steps,
as large as a bf16 input at 16 states); the backward recomputes the convolution and the projections from it, as
mamba_ssm's ``mamba_inner_fn`` does, and has the scan's backward write y again for out_proj's weight gradient
instead of keeping it. y, the gradient of y and the gradient of in_proj's output are laid out channel-major,
(channels, batch * L) viewed as (batch, channels, L), so that out_proj's products and in_proj's backward read them
without copies. It needs no mamba_ssm: the convolution is ``causal_conv1d_fn`` (causal-conv1d's kernel where
installed).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from vl_mamba.ops.causal_conv1d import causal_conv1d_fn
from vl_mamba.ops.mamba_inner import project_scan_inputs
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
    A: Tensor,
    D: Tensor | None = None,
    delta_bias: Tensor | None = None,
) -> Tensor:
    """``mamba_inner_fn``'s arguments and result (``vl_mamba.ops.mamba_inner``), softplus on delta.

    Raises:
        RuntimeError: the scan's kernel does not take these operands or is not available (``scan_cuda``).
    """
    out = _MambaInner.apply(
        xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, out_proj_weight, A, D, delta_bias
    )
    return out if out_proj_bias is None else out + out_proj_bias


def _front(x: Tensor, conv_w: Tensor, conv_b: Tensor | None, x_proj_w: Tensor, dt_proj_w: Tensor):
    """x (batch, d_inner, L) -> the scan's inputs: the conv's output, dt before bias, B and C."""
    conv = causal_conv1d_fn(x, conv_w.squeeze(1), conv_b, activation="silu")
    return (conv, *project_scan_inputs(conv, x_proj_w, dt_proj_w))


def _channel_major(batch: int, channels: int, length: int, like: Tensor) -> Tensor:
    """An empty (batch, channels, L) tensor stored as (channels, batch, L)."""
    return torch.empty(channels, batch, length, device=like.device, dtype=like.dtype).transpose(0, 1)


def _matrix(t: Tensor) -> Tensor:
    """A channel-major (batch, channels, L) tensor as the (channels, batch * L) matrix it is stored as."""
    return t.transpose(0, 1).reshape(t.shape[1], -1)


def _leaf(t: Tensor | None, wanted: bool) -> Tensor | None:
    return None if t is None else t.detach().requires_grad_(wanted)


class _MambaInner(torch.autograd.Function):
    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, xz, conv_w, conv_b, x_proj_w, dt_proj_w, out_proj_w, A, D, delta_bias):
        batch, channels, length = xz.shape
        d = channels // 2
        conv, dt, B, C = _front(xz[:, :d], conv_w, conv_b, x_proj_w, dt_proj_w)
        ops = scan_operands(conv, dt, A, B, C, D, xz[:, d:], delta_bias)
        y = _channel_major(batch, d, length, conv)
        _, _, ckpt = scan_forward(ops, True, keep=True, out=y)
        out = F.linear(_matrix(y).t(), out_proj_w)  # autocast casts the weight as for nn.Linear
        ctx.save_for_backward(xz, conv_w, conv_b, x_proj_w, dt_proj_w, out_proj_w, A, D, delta_bias, ckpt)
        return out.view(batch, length, -1)

    @staticmethod
    @once_differentiable
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, dout):
        xz, conv_w, conv_b, x_proj_w, dt_proj_w, out_proj_w, A, D, delta_bias, ckpt = ctx.saved_tensors
        batch, channels, length = xz.shape
        d = channels // 2
        front_in = [_leaf(t, ctx.needs_input_grad[i]) for i, t in enumerate((xz[:, :d], conv_w, conv_b, x_proj_w,
                                                                              dt_proj_w))]
        with torch.enable_grad():
            conv, dt, B, C = _front(*front_in)
        ops = scan_operands(conv.detach(), dt.detach(), A, B.detach(), C.detach(), D, xz[:, d:], delta_bias)
        dout2d = dout.reshape(batch * length, -1)
        # dy = dout @ W_out, computed as W_out^T @ dout^T: (d_inner, batch * L), channel-major.
        dy = torch.matmul(out_proj_w.t(), dout2d.t()).view(d, batch, length).transpose(0, 1)
        dxz = _channel_major(batch, channels, length, xz)
        out_z = _channel_major(batch, d, length, conv) if ctx.needs_input_grad[5] else None
        du, ddelta, dA, dB, dC, dD, _, dbias = scan_backward(ops, ckpt, True, dy, None, dz=dxz[:, d:], out_z=out_z)
        d_out_w = None
        if out_z is not None:
            d_out_w = torch.matmul(dout2d.t(), _matrix(out_z).t()).to(out_proj_w.dtype)
        wanted = [t is not None and t.requires_grad for t in front_in]
        # Only the recomputed tensors that depend on a wanted input: the conv's output does not where neither x
        # nor the conv's weights want a gradient, while x_proj's weight does.
        pairs = [(t, g) for t, g in zip((conv, dt, B, C), (du, ddelta.to(dt.dtype), dB.to(B.dtype), dC.to(C.dtype)),
                                        strict=True) if t.requires_grad]
        grads = iter(torch.autograd.grad(
            [t for t, _ in pairs], [t for t, w in zip(front_in, wanted, strict=True) if w], [g for _, g in pairs],
            allow_unused=True,
        ) if any(wanted) else ())
        dx, d_conv_w, d_conv_b, d_xproj, d_dtproj = (next(grads) if w else None for w in wanted)
        if dx is None:
            dxz = None
        else:
            dxz[:, :d].copy_(dx)
        return (
            dxz, d_conv_w, d_conv_b, d_xproj, d_dtproj, d_out_w,
            dA.to(A.dtype) if ctx.needs_input_grad[6] else None,
            dD.to(D.dtype) if ctx.needs_input_grad[7] else None,
            dbias.to(delta_bias.dtype) if ctx.needs_input_grad[8] else None,
        )
