"""The whole Mamba-1 layer between in_proj and out_proj as one function (conv, projections, scan, gate).

``mamba_inner_fn`` uses mamba_ssm's fused implementation (which recomputes the convolution in the backward
instead of storing it) for CUDA tensors when both mamba_ssm and causal-conv1d are installed, and
``mamba_inner_ref``, built from this package's own ops, otherwise. Where this package's own CUDA scan takes the
operands and builds and ``VL_MAMBA_CUDA_SCAN`` lets it (by default on compute capability 9.0 and up,
``cuda_build.enabled``), ``mamba_inner_cuda``, the same plan around that scan, comes first.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

from vl_mamba.ops.causal_conv1d import causal_conv1d_fn
from vl_mamba.ops.channel_major import as_matrix, in_proj_channel_major, project_matrix
from vl_mamba.ops.selective_scan import selective_scan_fn

__all__ = ["in_proj_channel_major", "mamba_inner_fn", "mamba_inner_ref", "project_scan_inputs"]


@functools.cache
def _cuda_inner():
    try:
        import causal_conv1d  # noqa: F401  (mamba_ssm's fused path needs it)
        from mamba_ssm.ops.selective_scan_interface import mamba_inner_fn as kernel
    except ImportError:
        return None
    return kernel


def mamba_inner_fn(
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
    """Mamba-1 mixer body.

    Args:
        xz: in_proj output, x and z stacked on the channel axis, (batch, 2 * d_inner, L).
        conv1d_weight: (d_inner, 1, W) as nn.Conv1d stores it.
        conv1d_bias: (d_inner,).
        x_proj_weight: (dt_rank + 2 * N, d_inner).
        delta_proj_weight: (d_inner, dt_rank).
        out_proj_weight: (d_model, d_inner).
        out_proj_bias: (d_model,).
        A: (d_inner, N); None where ``A_log`` is given.
        D: (d_inner,).
        delta_bias: (d_inner,).
        checkpoint_lvl: mamba_ssm's: 1 recomputes the conv's output and delta in the backward, 0 keeps them from the
            forward (faster, two more (batch, d_inner, L) tensors a layer). The unfused composition keeps what
            autograd keeps either way.
        A_log: A as Mamba parametrises it, A = -exp(A_log), given in A's place: this package's CUDA scan
            exponentiates it in its kernel (and gives its gradient there); the other paths compute A first.

    Returns:
        (batch, L, d_model).
    """
    check_checkpoint_lvl(checkpoint_lvl)
    check_one_a(A, A_log)
    on_cuda = xz.is_cuda and xz.dtype != torch.float64
    if on_cuda and _own_inner_ok(xz, A if A_log is None else A_log):
        from vl_mamba.ops.mamba_inner_cuda import mamba_inner_cuda

        return mamba_inner_cuda(
            xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, out_proj_weight, out_proj_bias,
            A, D, delta_bias, checkpoint_lvl, A_log=A_log,
        )
    if A is None:  # every other path takes A itself
        A = -torch.exp(A_log)
    if on_cuda:
        kernel = _cuda_inner()
        if kernel is not None:
            # The bias is added outside: mamba_ssm 2.3's fused backward returns an empty gradient for it.
            out = kernel(
                xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, out_proj_weight, None,
                A, None, None, D, delta_bias=delta_bias, delta_softplus=True, checkpoint_lvl=checkpoint_lvl,
            )
            return out if out_proj_bias is None else out + out_proj_bias
    return mamba_inner_ref(
        xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, out_proj_weight, out_proj_bias, A, D,
        delta_bias,
    )


def check_one_a(A: Tensor | None, A_log: Tensor | None) -> None:
    """Raise ValueError unless exactly one of ``A`` and ``A_log`` is given."""
    if (A is None) == (A_log is None):
        raise ValueError("give A or A_log (A = -exp(A_log)), not both and not neither")


def check_checkpoint_lvl(checkpoint_lvl: int) -> None:
    """Raise ValueError unless ``checkpoint_lvl`` is one of mamba_ssm's levels, 0 or 1."""
    if checkpoint_lvl not in (0, 1):
        raise ValueError(f"checkpoint_lvl must be 0 or 1, got {checkpoint_lvl}")


def _own_inner_ok(xz: Tensor, A: Tensor) -> bool:
    """``VL_MAMBA_CUDA_SCAN`` lets this package's CUDA scan run (``cuda_build.enabled``), it takes these operands
    and it builds here."""
    from vl_mamba.ops import scan_cuda

    # The scan's operands (B and C among them) take xz's dtype, or autocast's where it is on.
    dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else xz.dtype
    return scan_cuda.takes(dtype, dtype, A) and scan_cuda.switched_on()


def mamba_inner_ref(
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
    """``mamba_inner_fn`` composed of ``causal_conv1d_fn`` and ``selective_scan_fn``; same arguments."""
    x, z = xz.chunk(2, dim=1)
    x = causal_conv1d_fn(x, conv1d_weight.squeeze(1), conv1d_bias, activation="silu")
    dt, B, C = project_scan_inputs(x, x_proj_weight, delta_proj_weight)
    y = selective_scan_fn(x, dt, A, B, C, D, z, delta_bias=delta_bias, delta_softplus=True)
    return F.linear(y.transpose(1, 2), out_proj_weight, out_proj_bias)


def project_scan_inputs(
    x: Tensor, x_proj_weight: Tensor, delta_proj_weight: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """x (batch, d_inner, L) -> dt (batch, d_inner, L) before bias, B and C (batch, N, L).

    Channel-major products (weight @ x) keep L the unit-stride axis, as the scan wants. (Batched products with the
    weight broadcast by a zero stride avoid the copies that ``torch.matmul`` makes here, but cuBLAS runs them
    with slower kernels: measured slower in the prefill, ``BENCHMARKS.md``.)
    """
    batch, _, length = x.shape
    if batch > 1 and x.stride() == (length, batch * length, 1):
        # Channel-major x (as in_proj_channel_major and the conv on its output give it) is the (d, batch * L)
        # matrix it is stored as: plain products on that matrix, and their results viewed back, copy nothing.
        return project_matrix(as_matrix(x), x_proj_weight, delta_proj_weight, batch)[1:]
    rank = delta_proj_weight.shape[1]
    n = (x_proj_weight.shape[0] - rank) // 2
    x_dbl = torch.matmul(x_proj_weight, x)  # (batch, rank + 2N, L)
    dt, B, C = x_dbl.split([rank, n, n], dim=1)
    return torch.matmul(delta_proj_weight, dt), B, C
