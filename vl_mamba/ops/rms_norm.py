"""Residual add followed by RMSNorm, as every Mamba block begins.

``add_rms_norm`` runs this package's Triton kernels (``_rms_norm_triton``, forward and backward) for CUDA tensors
where Triton imports, else mamba_ssm's fused Triton kernel where mamba_ssm is installed, else
``add_rms_norm_ref``; the three share one signature.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from vl_mamba.ops.device import multiprocessors

__all__ = ["add_rms_norm", "add_rms_norm_ref", "add_rms_norm_triton"]

MAX_WIDTH = 16384
"""The widest row the Triton kernels hold whole in one program."""


@functools.cache
def _cuda_norm():
    try:
        from mamba_ssm.ops.triton.layer_norm import rms_norm_fn
    except ImportError:
        return None
    return rms_norm_fn


@functools.cache
def _triton_kernels():
    """The forward, backward and partial-sum kernels, or None where Triton does not import."""
    try:
        from vl_mamba.ops._rms_norm_triton import add_rms_norm_bwd_kernel, add_rms_norm_fwd_kernel, sum_rows_kernel
    except ImportError:
        return None
    return add_rms_norm_fwd_kernel, add_rms_norm_bwd_kernel, sum_rows_kernel


def add_rms_norm(
    x: Tensor, residual: Tensor | None, weight: Tensor, eps: float = 1e-5, residual_in_fp32: bool = True
) -> tuple[Tensor, Tensor]:
    """``residual = x + residual``; return ``(rms_norm(residual) * weight, residual)``.

    Args:
        x: (..., d).
        residual: (..., d) or None (the first block: the residual is x itself).
        weight: (d,).
        eps: added to the mean square.
        residual_in_fp32: keep the returned residual in float32.

    Returns:
        The normalised tensor in x's dtype, and the new residual.
    """
    if x.is_cuda and weight.is_cuda and x.dtype != torch.float64:
        if triton_takes(x, residual, weight) and _triton_kernels() is not None:
            return add_rms_norm_triton(x, residual, weight, eps, residual_in_fp32)
        kernel = _cuda_norm()
        if kernel is not None:
            return kernel(
                x, weight, None, residual=residual, eps=eps, prenorm=True, residual_in_fp32=residual_in_fp32
            )
    return add_rms_norm_ref(x, residual, weight, eps, residual_in_fp32)


def add_rms_norm_ref(
    x: Tensor, residual: Tensor | None, weight: Tensor, eps: float = 1e-5, residual_in_fp32: bool = True
) -> tuple[Tensor, Tensor]:
    """The specification of ``add_rms_norm``: the sum and the statistics in float32 (float64 stays)."""
    cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    total = x.to(cdt) if residual is None else x.to(cdt) + residual.to(cdt)
    normed = total * torch.rsqrt(total.pow(2).mean(-1, keepdim=True) + eps) * weight.to(cdt)
    new_residual = total if residual_in_fp32 else total.to(x.dtype)
    return normed.to(x.dtype), new_residual


def triton_takes(x: Tensor, residual: Tensor | None, weight: Tensor) -> bool:
    """Whether ``add_rms_norm_triton`` takes these: float32, bfloat16 or float16, rows of at most ``MAX_WIDTH``."""
    half_or_single = (torch.float32, torch.bfloat16, torch.float16)
    return (x.dtype in half_or_single and weight.dtype in half_or_single and x.shape[-1] <= MAX_WIDTH
            and (residual is None or residual.dtype in half_or_single))


def add_rms_norm_triton(
    x: Tensor, residual: Tensor | None, weight: Tensor, eps: float = 1e-5, residual_in_fp32: bool = True
) -> tuple[Tensor, Tensor]:
    """``add_rms_norm`` by this package's Triton kernels (any device Triton runs them on); same arguments and
    results. The new residual has float32 where ``residual_in_fp32``, else x's dtype, as ``add_rms_norm_ref``."""
    if x.shape[-1] != weight.shape[-1] or (residual is not None and residual.shape != x.shape):
        raise ValueError(f"add_rms_norm: x {tuple(x.shape)}, residual "
                         f"{None if residual is None else tuple(residual.shape)} and weight {tuple(weight.shape)} "
                         "do not match")
    return _AddRMSNorm.apply(x, residual, weight, eps, residual_in_fp32)


def _rows(t: Tensor) -> Tensor:
    """``t`` as (rows, width) with the width at unit stride, copied only where needed."""
    t = t.reshape(-1, t.shape[-1])
    return t if t.stride(-1) == 1 else t.contiguous()


def _block(width: int) -> tuple[int, int]:
    """The kernels' block (the row's width, to a power of two) and warps (one per 256 elements, 1 to 16)."""
    block = 1 << max(0, width - 1).bit_length()
    return block, min(16, max(1, block // 256))


def backward_rows(rows: int, device: torch.device) -> int:
    """Rows per program of the backward: a power of two up to 32 that leaves at least one program a
    multiprocessor. Each program adds up its rows' part of the weight's gradient into one partial row, so more rows
    a program leave fewer partial rows to add up after (``benchmarks.rms_norm`` measured 32 rows the fastest at
    8,192 x 2,560 on an H100)."""
    per_program = max(1, rows // (multiprocessors(device) if device.type == "cuda" else 8))
    return min(32, 1 << (per_program.bit_length() - 1))


class _AddRMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, residual, weight, eps, residual_in_fp32):
        fwd = _triton_kernels()[0]
        shape, width = x.shape, x.shape[-1]
        x2 = _rows(x)
        res2 = None if residual is None else _rows(residual)
        weight = weight.contiguous()  # the kernels read it at unit stride
        rows = x2.shape[0]
        out = torch.empty(rows, width, device=x.device, dtype=x.dtype)
        total = torch.empty(rows, width, device=x.device, dtype=torch.float32 if residual_in_fp32 else x.dtype)
        rstd = torch.empty(rows, device=x.device, dtype=torch.float32)
        block, warps = _block(width)
        if rows:
            fwd[(rows,)](
                x2, x2 if res2 is None else res2, weight, out, total, rstd, width, eps, x2.stride(0),
                0 if res2 is None else res2.stride(0), out.stride(0), total.stride(0),
                HAS_RES=res2 is not None, BLOCK=block, num_warps=warps,
            )
        ctx.save_for_backward(total, weight, rstd)
        ctx.meta = (shape, x.dtype, None if residual is None else residual.dtype)
        ctx.set_materialize_grads(False)
        return out.view(shape), total.view(shape)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out, grad_total):
        _, bwd, sum_rows = _triton_kernels()
        total, weight, rstd = ctx.saved_tensors
        shape, x_dtype, res_dtype = ctx.meta
        rows, width = total.shape
        dy = torch.zeros(rows, width, device=total.device, dtype=x_dtype) if grad_out is None else _rows(grad_out)
        dres_out = None if grad_total is None else _rows(grad_total)
        dx = torch.empty(rows, width, device=total.device, dtype=x_dtype)
        separate = res_dtype is not None and res_dtype != x_dtype  # the residual's gradient in its own dtype
        dres = torch.empty(rows, width, device=total.device, dtype=res_dtype) if separate else None
        per_program = backward_rows(rows, total.device)
        programs = -(-rows // per_program)
        dw_part = torch.empty(programs, width, device=total.device, dtype=torch.float32)
        block, warps = _block(width)
        if rows:
            bwd[(programs,)](
                dy, dy if dres_out is None else dres_out, total, weight, rstd, dx, dx if dres is None else dres,
                dw_part, rows, width, dy.stride(0), 0 if dres_out is None else dres_out.stride(0), total.stride(0),
                dx.stride(0), 0 if dres is None else dres.stride(0),
                HAS_DRES_OUT=dres_out is not None, STORE_DRES=separate, ROWS=per_program, BLOCK=block,
                num_warps=warps,
            )
        dw = torch.empty(width, device=total.device, dtype=weight.dtype)
        # Narrow column blocks: many programs, each with few tiles of rows to add one after another.
        sum_rows[(-(-width // 32),)](dw_part, dw, programs, width, BLOCK_P=128, BLOCK_D=32, num_warps=4)
        dresidual = None if res_dtype is None else (dres if separate else dx).view(shape)
        return dx.view(shape), dresidual, dw, None, None
