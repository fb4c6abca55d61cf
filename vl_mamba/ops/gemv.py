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
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["linear_decode", "linear_decode_ref", "gemv_blocks"]

_TILE = 2048
"""Weight elements each program loads per iteration (BLOCK_N * BLOCK_K)."""
_MIN_PROGRAMS = 264
"""Programs wanted at least: two per streaming multiprocessor of an H100 (132)."""


@functools.cache
def _kernel():
    """The Triton kernel, or None where Triton does not import."""
    try:
        from vl_mamba.ops._gemv_triton import gemv_kernel
    except ImportError:
        return None
    return gemv_kernel


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
            has_bias = bias is not None
            kernel[(-(-n // block_n),)](
                weight, x, bias if has_bias else y, y, n, k, HAS_BIAS=has_bias, BLOCK_N=block_n, BLOCK_K=block_k,
                num_warps=4,
            )
            return y
    return F.linear(x, weight, bias)


def linear_decode_ref(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """The specification of ``linear_decode``."""
    return F.linear(x, weight, bias)
