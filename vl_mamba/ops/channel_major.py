"""Products in the scan's channel-major layout: a (batch, channels, L) tensor stored as the (channels, batch * L)
matrix, so that products over all tokens at once read and write it without copies.

``in_proj_channel_major`` is in_proj into that layout with its own backward: the input's gradient comes out of
one product already in the input's layout (autograd's would come out transposed and be copied), and the weight's
gradient leaves the product in the weight's dtype (``weight_grad``): float32 master weights under bf16 autocast
get a float32 product, not a bf16 one cast afterwards.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = [
    "as_matrix", "compute_dtype", "from_matrix", "in_proj_channel_major", "project_matrix", "state_rows", "weight_grad",
]


def as_matrix(t: Tensor) -> Tensor:
    """A (batch, channels, L) tensor as the (channels, batch * L) matrix; a view where t is channel-major (stored
    as (channels, batch, L)), a copy otherwise."""
    return t.transpose(0, 1).reshape(t.shape[1], -1)


def from_matrix(m: Tensor, batch: int) -> Tensor:
    """A (channels, batch * L) matrix as the channel-major (batch, channels, L) tensor it holds (a view)."""
    return m.view(m.shape[0], batch, -1).transpose(0, 1)


def project_matrix(
    x_m: Tensor, x_proj_weight: Tensor, delta_proj_weight: Tensor, batch: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """x as its (d_inner, batch * L) matrix -> x_proj's output as a (rank + 2N, batch * L) matrix, and dt before bias,
    B and C as channel-major (batch, channels, L) views of products over all tokens at once."""
    rank = delta_proj_weight.shape[1]
    x_dbl = x_proj_weight @ x_m
    return (x_dbl, from_matrix(delta_proj_weight @ x_dbl[:rank], batch), *state_rows(x_dbl, rank, batch))


def state_rows(x_dbl: Tensor, rank: int, batch: int) -> tuple[Tensor, Tensor]:
    """B and C, the rows of x_proj's output matrix (rank + 2N, batch * L) after dt's, as channel-major views."""
    n = (x_dbl.shape[0] - rank) // 2
    return from_matrix(x_dbl[rank : rank + n], batch), from_matrix(x_dbl[rank + n :], batch)


def compute_dtype(t: Tensor) -> torch.dtype:
    """The dtype a product on ``t`` runs in: autocast's where autocast is on for ``t``'s device, else ``t``'s."""
    device = t.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else t.dtype


@functools.cache
def _mm_widens(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether ``torch.mm(..., out_dtype=torch.float32)`` takes ``dtype`` operands on ``device`` (cuBLAS does for
    bf16 and fp16)."""
    a = torch.zeros(8, 8, device=device, dtype=dtype)
    try:
        return torch.mm(a, a, out_dtype=torch.float32).dtype == torch.float32
    except (RuntimeError, TypeError, NotImplementedError):
        return False


def weight_grad(a: Tensor, b: Tensor, dtype: torch.dtype) -> Tensor:
    """``a @ b`` in ``dtype``: a float32 result of half-precision operands straight from the product where the
    backend widens (the sums are float32 inside either way), a product cast to ``dtype`` elsewhere."""
    if dtype == torch.float32 and a.dtype in (torch.bfloat16, torch.float16) and _mm_widens(a.device, a.dtype):
        return torch.mm(a, b, out_dtype=torch.float32)
    return (a @ b).to(dtype)


def in_proj_channel_major(hidden: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """in_proj into the scan's layout: hidden (batch, L, d) -> (batch, out, L) with L the unit-stride axis.

    One product over all tokens, ``weight @ hidden^T`` of shape (out, batch * L), viewed (not copied) as
    (batch, out, L): its batch stride is L and its channel stride batch * L, which the conv and scan kernels take
    as they are. (``torch.matmul(weight, hidden.transpose(1, 2))`` computes the same product row-major and then
    copies it into that layout.) Under autocast the product runs in autocast's dtype, as ``nn.Linear``'s would.
    """
    return _InProj.apply(hidden, weight, bias)


class _InProj(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias):
        batch, length, d = hidden.shape
        dtype = compute_dtype(hidden)
        x = hidden.reshape(batch * length, d).to(dtype)
        w = weight.to(dtype)
        with torch.autocast(hidden.device.type, enabled=False):
            out = w @ x.t()
            if bias is not None:
                out += bias.to(dtype).unsqueeze(-1)
        ctx.save_for_backward(x if weight.requires_grad else None, w if hidden.requires_grad else None)
        ctx.meta = (hidden.shape, hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        return from_matrix(out, batch)

    @staticmethod
    @once_differentiable
    def backward(ctx, dxz):
        x, w = ctx.saved_tensors
        shape, hidden_dtype, weight_dtype, bias_dtype = ctx.meta
        needs = ctx.needs_input_grad
        dhidden = dweight = dbias = None
        with torch.autocast(dxz.device.type, enabled=False):
            g = as_matrix(dxz.to(w.dtype if w is not None else x.dtype))  # (out, batch * L), a view if channel-major
            if needs[0]:
                dhidden = (g.t() @ w).view(shape).to(hidden_dtype)  # (batch * L, d): the input's own layout
            if needs[1]:
                dweight = weight_grad(g, x, weight_dtype)
            if needs[2]:
                dbias = g.sum(1, dtype=torch.promote_types(g.dtype, torch.float32)).to(bias_dtype)
        return dhidden, dweight, dbias
