"""Matrix-vector products for one-sequence decoding.

At batch 1 every projection of a decode step is a matrix-vector product that reads the whole weight once, so
its speed is the memory bandwidth it reaches. cuBLAS runs these as thin matrix products; on an H100, at
Mamba-2.8B's shapes, they reach 64 % of the copy bandwidth for ``out_proj`` (with a split-K reduction kernel
after it) and 9-16 % for the small ``x_proj`` and ``dt_proj``. A plain Triton kernel that gives each program a
few whole rows reaches 84 %, 16-22 % and, for ``in_proj``, 91 % (cuBLAS: 89 %); see ``BENCHMARKS.md``, "GPU:
generation".

``linear_decode`` takes that kernel for one CUDA row in half precision when no gradient is wanted (generation
runs under ``torch.inference_mode``) and ``F.linear`` otherwise;
``linear_decode_ref`` is ``F.linear``.

``add_rms_norm_linear_decode`` puts the residual add and RMSNorm that begin every Mamba block in front of its
in_proj product, in one kernel: each program normalises the 2,560-wide row itself (from the L2 cache) and then
streams its share of the weight rows, which saves the separate norm kernel (1.2 us a layer on an H100).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

from vl_mamba.ops.device import multiprocessors
from vl_mamba.ops.pdl import launch_options, use_pdl, weights_first
from vl_mamba.ops.rms_norm import add_rms_norm, add_rms_norm_ref

__all__ = [
    "add_rms_norm_linear_decode",
    "add_rms_norm_linear_decode_ref",
    "gemv_blocks",
    "linear_decode",
    "linear_decode_ref",
]

_TILE = 2048
"""Weight elements each program loads per iteration (BLOCK_N * BLOCK_K)."""
_MIN_PROGRAMS = 264
"""Programs wanted at least: two per streaming multiprocessor of an H100 (132)."""
_NORM_BLOCK_N = 4
"""Weight rows per iteration of the fused norm + product kernel."""
_NORM_PROGRAMS_PER_SM = 4
"""Programs of the fused norm + product kernel per multiprocessor: each normalises the row once, then loops."""
_NORM_MAX_K = 8192
"""Widest row the fused kernel holds in registers; wider ones take the separate norm."""


@functools.cache
def _kernel():
    """The Triton kernel, or None where Triton does not import."""
    try:
        from vl_mamba.ops._gemv_triton import gemv_kernel
    except ImportError:
        return None
    return gemv_kernel


@functools.cache
def _norm_kernel():
    """The fused add + RMSNorm + product kernel, or None where Triton does not import."""
    try:
        from vl_mamba.ops._gemv_triton import norm_gemv_kernel
    except ImportError:
        return None
    return norm_gemv_kernel


def gemv_blocks(n: int, k: int) -> tuple[int, int]:
    """``(BLOCK_N, BLOCK_K)`` for an (n, k) weight: whole rows in steps of up to 1,024 columns, and fewer rows
    per program while that leaves too few programs to keep every multiprocessor reading."""
    block_k = min(1024, _next_power_of_2(k))
    block_n = max(1, _TILE // block_k)
    while block_n > 1 and -(-n // block_n) < _MIN_PROGRAMS:
        block_n //= 2
    return block_n, block_k


def _next_power_of_2(x: int) -> int:
    return 1 << max(0, x - 1).bit_length()


def _needs_autograd(*tensors: Tensor | None) -> bool:
    """Whether a product of these would be recorded for a backward pass (the Triton kernel has none)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _kernel_ok(x: Tensor, weight: Tensor, bias: Tensor | None) -> bool:
    return (
        not _needs_autograd(x, weight, bias)
        and x.is_cuda
        and x.dim() == 2
        and x.shape[0] == 1
        and x.stride(-1) == 1
        and x.dtype in (torch.bfloat16, torch.float16)
        and weight.dtype == x.dtype
        and weight.is_contiguous()
        and weight.numel() < 2**31  # the kernel's offsets are 32-bit
        and (bias is None or (bias.dtype == x.dtype and bias.is_contiguous()))
    )


def linear_decode(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)``; for one half-precision CUDA row, as one Triton matrix-vector product.

    Args:
        x: (batch, in_features).
        weight: (out_features, in_features).
        bias: (out_features,) or None.
    """
    if _kernel_ok(x, weight, bias):
        kernel = _kernel()
        if kernel is not None:
            n, k = weight.shape
            y = x.new_empty(1, n)
            block_n, block_k = gemv_blocks(n, k)
            has_bias, pdl = bias is not None, use_pdl(x)
            kernel[(-(-n // block_n),)](
                weight, x, bias if has_bias else y, y, n, k, HAS_BIAS=has_bias, BLOCK_N=block_n, BLOCK_K=block_k,
                PDL=weights_first(x), GDC=pdl, num_warps=4, **launch_options(pdl),
            )
            return y
    return F.linear(x, weight, bias)


def linear_decode_ref(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """The specification of ``linear_decode``."""
    return F.linear(x, weight, bias)


def add_rms_norm_linear_decode(
    hidden: Tensor,
    residual: Tensor | None,
    norm_weight: Tensor,
    eps: float,
    residual_in_fp32: bool,
    weight: Tensor,
    bias: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """``add_rms_norm`` followed by ``linear_decode``; for one half-precision CUDA row, one Triton kernel.

    Args:
        hidden: (batch, d), the previous block's output.
        residual: (batch, d) or None (the first block).
        norm_weight: (d,).
        eps, residual_in_fp32: as ``add_rms_norm``.
        weight: (out_features, d).
        bias: (out_features,) or None.

    Returns:
        The product (batch, out_features) in hidden's dtype, and the new residual (batch, d).
    """
    if _norm_kernel_ok(hidden, residual, norm_weight, weight, bias):
        kernel = _norm_kernel()
        if kernel is not None:
            return _norm_linear_fused(kernel, hidden, residual, norm_weight, eps, residual_in_fp32, weight, bias)
    return _norm_linear_apart(hidden, residual, norm_weight, eps, residual_in_fp32, weight, bias)


def _norm_linear_apart(hidden, residual, norm_weight, eps, residual_in_fp32, weight, bias):
    """The norm and the product as two operations, each with its own kernel where one applies."""
    normed, residual = add_rms_norm(hidden, residual, norm_weight, eps, residual_in_fp32)
    return linear_decode(normed, weight, bias), residual


def add_rms_norm_linear_decode_ref(
    hidden: Tensor,
    residual: Tensor | None,
    norm_weight: Tensor,
    eps: float,
    residual_in_fp32: bool,
    weight: Tensor,
    bias: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The specification of ``add_rms_norm_linear_decode``."""
    normed, residual = add_rms_norm_ref(hidden, residual, norm_weight, eps, residual_in_fp32)
    return F.linear(normed, weight, bias), residual


def _norm_kernel_ok(hidden, residual, norm_weight, weight, bias) -> bool:
    return (
        _kernel_ok(hidden, weight, bias)
        and hidden.is_contiguous()
        and hidden.shape[1] <= _NORM_MAX_K
        and not _needs_autograd(residual, norm_weight)
        and norm_weight.is_contiguous()
        and (residual is None or (residual.shape == hidden.shape and residual.is_contiguous()))
    )


def _norm_linear_fused(kernel, hidden, residual, norm_weight, eps, residual_in_fp32, weight, bias):
    """Launch the fused kernel; float32 tensors work too (tests run it on the CPU under TRITON_INTERPRET=1)."""
    n, k = weight.shape
    y = hidden.new_empty(1, n)
    new_residual = torch.empty_like(hidden, dtype=torch.float32 if residual_in_fp32 else hidden.dtype)
    programs = _NORM_PROGRAMS_PER_SM * (multiprocessors(hidden.device) if hidden.is_cuda else 1)
    programs = min(programs, -(-n // _NORM_BLOCK_N))
    pdl = use_pdl(hidden)
    kernel[(programs,)](
        hidden, residual if residual is not None else hidden, norm_weight, weight, bias if bias is not None else y,
        y, new_residual, n, k, eps, programs, HAS_RESIDUAL=residual is not None, HAS_BIAS=bias is not None,
        BLOCK_N=_NORM_BLOCK_N, BLOCK_K=_next_power_of_2(k), PDL=weights_first(hidden), GDC=pdl,
        num_warps=8, **launch_options(pdl),
    )
    return y, new_residual
