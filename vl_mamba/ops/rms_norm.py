"""Residual add followed by RMSNorm, as every Mamba block begins.

``add_rms_norm`` uses mamba_ssm's fused Triton kernel for CUDA tensors when mamba_ssm is installed, and
``add_rms_norm_ref`` otherwise; the two share one signature.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

__all__ = ["add_rms_norm", "add_rms_norm_ref"]


@functools.cache
def _cuda_norm():
    try:
        from mamba_ssm.ops.triton.layer_norm import rms_norm_fn
    except ImportError:
        return None
    return rms_norm_fn


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
