"""The selective scan in Triton, forward and backward (kernels in ``_scan_triton``).

A program owns a block of channels of one sequence and scans chunks of time steps with ``tl.associative_scan``,
summing its block's share of the gradients of B and C before adding it atomically. The forward stores the state
before every chunk of ``steps`` time steps (float32, ``(batch, dim, L / steps, N)``, half of u's size in bf16
at 64 steps) when a backward will follow, so that the backward recomputes each chunk from its own start.

``selective_scan_fn`` runs it on CUDA where mamba_ssm is not installed: on an H100 it takes 1.7x mamba_ssm's CUDA
kernel's time forward and 2.3x forward plus backward at a Mamba-2.8B layer's shape, and 1/72 of the PyTorch scan's
(``BENCHMARKS.md``). Triton is all it needs.

``selective_scan_triton`` has ``selective_scan_fn``'s signature and semantics (gradients also flow back from the
last state, as in ``selective_scan_ref``). It takes CUDA tensors, or any tensors under ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

__all__ = ["selective_scan_triton", "ScanConfig", "CONFIG"]


class ScanConfig:
    """Tile sizes: ``block_d`` channels and ``steps`` time steps per chunk, ``warps`` per program, for the forward
    and the backward. The backward reads the forward's stored states, so both walk chunks of ``steps``."""

    def __init__(self, block_d: int = 32, steps: int = 64, warps: int = 4, bwd_block_d: int = 64, bwd_warps: int = 8):
        self.block_d, self.steps, self.warps = block_d, steps, warps
        self.bwd_block_d, self.bwd_warps = bwd_block_d, bwd_warps

    def __repr__(self) -> str:
        return (
            f"ScanConfig(block_d={self.block_d}, steps={self.steps}, warps={self.warps}, "
            f"bwd_block_d={self.bwd_block_d}, bwd_warps={self.bwd_warps})"
        )


CONFIG = ScanConfig()
"""The tile sizes in use; benchmarks replace it."""


@functools.cache
def _kernels():
    from vl_mamba.ops._scan_triton import scan_bwd_kernel, scan_fwd_kernel

    return scan_fwd_kernel, scan_bwd_kernel


def selective_scan_triton(
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
    """The Triton selective scan; arguments and result as ``selective_scan_fn``."""
    from vl_mamba.ops.selective_scan import _check_shapes, selective_scan_torch

    _check_shapes(u, delta, A, B, C, D, z, delta_bias)
    # The kernels address one sequence with 32-bit offsets (the sequence's own offset is 64-bit): a layout whose
    # per-sequence extent does not fit is copied to a contiguous one, and where even that does not fit (one
    # sequence of more than 2^31 values), the PyTorch scan takes over, as it does for empty inputs.
    u, delta, B, C, z = (t if t is None or _extent(t) < _OFFSET_LIMIT else t.contiguous() for t in (u, delta, B, C, z))
    if u.numel() == 0 or any(t is not None and _extent(t) >= _OFFSET_LIMIT for t in (u, delta, B, C, z)):
        return selective_scan_torch(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    y, last = _TritonScan.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    return (y, last) if return_last_state else y


_OFFSET_LIMIT = 2**31


def _extent(t: Tensor) -> int:
    """The largest element offset within one sequence (every axis but the first, the batch)."""
    return sum((size - 1) * stride for size, stride in zip(t.shape[1:], t.stride()[1:]))


def _block(channels_per_group: int, wanted: int) -> int:
    """The largest power of two up to ``wanted`` that divides the channels of a group (a program's channels
    must share one group's B and C)."""
    block = wanted
    while channels_per_group % block:
        block //= 2
    return block


def _chunks(length: int, steps: int) -> int:
    return max(1, -(-length // steps))


class _Operands:
    """What both kernels take first: the inputs (absent optional ones replaced by a dummy pointer, with their
    HAS_* flags), their strides, and the sizes; B and C as (batch, G, N, L) views."""

    def __init__(self, u, delta, Af, B, C, D, z, delta_bias, softplus: bool, wanted_block: int) -> None:
        batch, dim, length = u.shape
        B4, C4 = (M.unsqueeze(1) if M.dim() == 3 else M for M in (B, C))
        self.batch, self.dim, self.length = batch, dim, length
        self.groups, self.n = B4.shape[1], Af.shape[1]
        self.dg = dim // self.groups
        self.block_d = _block(self.dg, wanted_block)
        zz = z if z is not None else u
        self.tensors = (u, delta, Af, B4, C4, Af if D is None else D, zz, Af if delta_bias is None else delta_bias)
        self.strides = (*u.stride(), *delta.stride(), *B4.stride(), *C4.stride(), *zz.stride())
        self.flags = {"HAS_D": D is not None, "HAS_Z": z is not None, "HAS_BIAS": delta_bias is not None,
                      "SOFTPLUS": softplus}

    def grid(self) -> tuple[int, int]:
        return -(-self.dim // self.block_d), self.batch


class _TritonScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        cfg = CONFIG
        fwd, _ = _kernels()
        Af = A.float().contiguous()
        ops = _Operands(u, delta, Af, B, C, D, z, delta_bias, bool(delta_softplus), cfg.block_d)
        nchunk = _chunks(ops.length, cfg.steps)
        keep = any(ctx.needs_input_grad[:8])
        out = torch.empty(ops.batch, ops.dim, ops.length, dtype=u.dtype, device=u.device)
        states = Af.new_empty(ops.batch, ops.dim, nchunk, ops.n) if keep else Af.new_empty(1)
        last = Af.new_zeros(ops.batch, ops.dim, ops.n)
        fwd[ops.grid()](
            *ops.tensors, out, states, last,
            ops.length, ops.dim, ops.n, ops.dg, nchunk, *ops.strides, *out.stride(),
            **ops.flags, STORE_STATES=keep, BLOCK_D=ops.block_d, NS=ops.n, T=cfg.steps, num_warps=cfg.warps,
        )
        ctx.save_for_backward(u, delta, Af, B, C, D, z, delta_bias, states)
        ctx.delta_softplus = bool(delta_softplus)
        ctx.a_dtype, ctx.steps = A.dtype, cfg.steps
        ctx.set_materialize_grads(False)
        return out, last

    @staticmethod
    def backward(ctx, grad_out, grad_last):
        cfg = CONFIG
        _, bwd = _kernels()
        u, delta, Af, B, C, D, z, delta_bias, states = ctx.saved_tensors
        ops = _Operands(u, delta, Af, B, C, D, z, delta_bias, ctx.delta_softplus, cfg.bwd_block_d)
        batch, dim, length, n = ops.batch, ops.dim, ops.length, ops.n
        if grad_out is None:
            grad_out = torch.zeros(batch, dim, length, dtype=u.dtype, device=u.device)
        grad_out = grad_out.contiguous()
        grad_u = torch.empty(batch, dim, length, dtype=u.dtype, device=u.device)
        grad_delta = torch.empty(batch, dim, length, dtype=delta.dtype, device=u.device)
        grad_z = torch.empty(batch, dim, length, dtype=z.dtype, device=u.device) if z is not None else grad_u
        grad_B = Af.new_zeros(batch, ops.groups, n, length)
        grad_C = Af.new_zeros(batch, ops.groups, n, length)
        grad_A = Af.new_zeros(batch, dim, n)
        grad_D = Af.new_empty(batch, dim) if D is not None else Af
        grad_bias = Af.new_empty(batch, dim) if delta_bias is not None else Af
        # the adjoint carried between chunks, which starts as the last state's gradient
        carry = grad_last.float().clone() if grad_last is not None else Af.new_zeros(batch, dim, n)
        bwd[ops.grid()](
            *ops.tensors, grad_out, states, carry,
            grad_u, grad_delta, grad_z, grad_B, grad_C, grad_A, grad_D, grad_bias,
            length, dim, n, ops.dg, states.shape[2], *ops.strides, *grad_out.stride(),
            **ops.flags, HAS_DLAST=grad_last is not None, BLOCK_D=ops.block_d, NS=n, T=ctx.steps,
            num_warps=cfg.bwd_warps,
        )
        if B.dim() == 3:
            grad_B, grad_C = grad_B.squeeze(1), grad_C.squeeze(1)
        return (
            grad_u,
            grad_delta,
            grad_A.sum(0).to(ctx.a_dtype),
            grad_B.to(B.dtype),
            grad_C.to(C.dtype),
            grad_D.sum(0).to(D.dtype) if D is not None else None,
            grad_z if z is not None else None,
            grad_bias.sum(0).to(delta_bias.dtype) if delta_bias is not None else None,
            None,
        )
