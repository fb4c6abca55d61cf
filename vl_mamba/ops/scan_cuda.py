"""``selective_scan_cuda``: the selective scan on CUDA through this package's own kernel (``cuda_scan.cu``).

Same signature and results as ``selective_scan_ref`` (mamba_ssm's ``selective_scan_fn``), for up to 16 states
and one group of B and C. Bias, softplus, D and the gate are done in the kernel, as are every gradient of them; the
forward keeps the state every 64 steps (float32, half an input's size in bfloat16 at 16 states) and the backward
replays from it. Gradients also flow back from the last state. A backward with ``create_graph=True`` is refused
(the kernel's backward is not itself differentiable).
"""

from __future__ import annotations

import ctypes

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from vl_mamba.ops import cuda_build
from vl_mamba.ops.selective_scan import _check_shapes

__all__ = ["kernel_available", "selective_scan_cuda", "supports"]


def kernel_available() -> bool:
    """Whether the kernel builds for device 0."""
    return cuda_build.library() is not None


def supports(u: Tensor, A: Tensor, B: Tensor) -> bool:
    """Whether the kernel takes these operands: CUDA tensors of a dtype it reads, real A with at most 16 states,
    one group of B and C."""
    return (
        u.is_cuda
        and u.dtype in cuda_build.DTYPES
        and B.dtype in cuda_build.DTYPES
        and not A.is_complex()
        and A.shape[1] <= cuda_build.LANES
        and (B.dim() == 3 or B.shape[1] == 1)
    )


def selective_scan_cuda(
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
    """The selective scan by this package's CUDA kernel; arguments and result as ``selective_scan_fn``.

    Raises:
        RuntimeError: the kernel is not available, or does not take these operands (``supports``).
    """
    _check_shapes(u, delta, A, B, C, D, z, delta_bias)
    if not supports(u, A, B):
        raise RuntimeError("selective_scan_cuda takes CUDA tensors (float32, bfloat16, float16), at most 16 states "
                           "and one group of B and C")
    if not kernel_available():
        raise RuntimeError("the selective scan's CUDA kernel is not available here")
    y, last = _CudaScan.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    return (y, last) if return_last_state else y


def _time_major(t: Tensor | None, dtype: torch.dtype | None = None) -> Tensor | None:
    """``t`` in ``dtype`` with the time steps (last axis) at unit stride, copied only where needed."""
    if t is None:
        return None
    if dtype is not None and t.dtype != dtype:
        t = t.to(dtype)
    return t if t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous()


def _f32(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.float().contiguous()


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _launch(args: cuda_build.CudaScanArgs, backward: bool, device: torch.device) -> None:
    stream = torch.cuda.current_stream(device).cuda_stream
    code = cuda_build.library().vl_cuda_scan(ctypes.byref(args), int(backward), ctypes.c_void_p(stream))
    if code != 0:
        raise RuntimeError(f"the selective scan's CUDA kernel failed to launch (error {code})")


def _aligned(t: Tensor | None, steps: int) -> bool:
    """Whether every row of ``t`` (time on the last axis) starts on a multiple of ``steps`` elements of an address
    aligned to ``steps`` elements, so that the kernel may load ``steps`` steps at once."""
    if t is None:
        return True
    return t.data_ptr() % (steps * t.element_size()) == 0 and all(s % steps == 0 for s in t.stride()[:-1])


def _args(u, delta, A, B, C, D, z, delta_bias, softplus: bool) -> cuda_build.CudaScanArgs:
    batch, dim, length = u.shape
    # The rows of the output and its gradient are length apart; B and C are read two steps at a time.
    vec = length % 4 == 0 and all(_aligned(t, 4) for t in (u, delta, z)) and _aligned(B, 2) and _aligned(C, 2)
    args = cuda_build.CudaScanArgs(
        batch=batch, dim=dim, length=length, nstate=A.shape[1], nchunks=-(-length // cuda_build.TILE),
        softplus=int(softplus), in_dtype=cuda_build.DTYPES[u.dtype], w_dtype=cuda_build.DTYPES[B.dtype],
        vec=int(vec),
        u=_ptr(u), delta=_ptr(delta), A=_ptr(A), B=_ptr(B), C=_ptr(C), D=_ptr(D), z=_ptr(z),
        delta_bias=_ptr(delta_bias),
    )
    args.su[:], args.sdelta[:] = u.stride()[:2], delta.stride()[:2]
    args.sB[:], args.sC[:] = B.stride()[:2], C.stride()[:2]
    args.sz[:] = (0, 0) if z is None else z.stride()[:2]
    return args


class _CudaScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, softplus):
        batch, dim, length = u.shape
        shape_B, shape_C = B.shape, C.shape
        u_ = _time_major(u)
        delta_ = _time_major(delta, u.dtype)
        z_ = _time_major(z, u.dtype)
        B_ = _time_major(B.reshape(batch, -1, length))
        C_ = _time_major(C.reshape(batch, -1, length), B_.dtype)
        A_, D_, bias_ = _f32(A), _f32(D), _f32(delta_bias)
        keep = any(ctx.needs_input_grad[:8])
        out = torch.empty(batch, dim, length, device=u.device, dtype=u.dtype)
        last = torch.empty(batch, dim, A.shape[1], device=u.device, dtype=torch.float32)
        args = _args(u_, delta_, A_, B_, C_, D_, z_, bias_, softplus)
        ckpt = None
        if keep:
            ckpt = torch.empty(batch, dim, args.nchunks, cuda_build.LANES, device=u.device, dtype=torch.float32)
        args.out, args.last, args.ckpt = _ptr(out), _ptr(last), _ptr(ckpt)
        _launch(args, False, u.device)
        if keep:
            ctx.save_for_backward(u_, delta_, A_, B_, C_, D_, z_, bias_, ckpt)
            ctx.meta = (softplus, shape_B, shape_C, delta.dtype, A.dtype, B.dtype, C.dtype,
                        None if D is None else D.dtype, None if z is None else z.dtype,
                        None if delta_bias is None else delta_bias.dtype)
        ctx.set_materialize_grads(False)
        return out, last

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out, grad_last):
        u, delta, A, B, C, D, z, bias, ckpt = ctx.saved_tensors
        softplus, shape_B, shape_C, dt_delta, dt_A, dt_B, dt_C, dt_D, dt_z, dt_bias = ctx.meta
        batch, dim, length = u.shape
        # dout and the gradients of u, delta and z are read and written as contiguous (batch, dim, L) rows.
        rows = dict(device=u.device, dtype=u.dtype)
        dout = torch.zeros(batch, dim, length, **rows) if grad_out is None else grad_out.to(u.dtype).contiguous()
        dlast = None if grad_last is None else grad_last.float().contiguous()
        du, ddelta = torch.empty(batch, dim, length, **rows), torch.empty(batch, dim, length, **rows)
        dz = None if z is None else torch.empty(batch, dim, length, **rows)
        dA = torch.zeros_like(A)
        dD = None if D is None else torch.zeros_like(D)
        dbias = None if bias is None else torch.zeros_like(bias)
        blocks = -(-dim // cuda_build.CHANNELS)
        dBC = torch.empty(batch, blocks, 2, cuda_build.LANES, length, device=u.device, dtype=torch.float32)
        args = _args(u, delta, A, B, C, D, z, bias, softplus)
        args.ckpt, args.dout, args.dlast = _ptr(ckpt), _ptr(dout), _ptr(dlast)
        args.vec = int(args.vec and _aligned(dout, 4))
        args.du, args.ddelta, args.dz = _ptr(du), _ptr(ddelta), _ptr(dz)
        args.dA, args.dD, args.dbias, args.dBC = _ptr(dA), _ptr(dD), _ptr(dbias), _ptr(dBC)
        _launch(args, True, u.device)
        n = A.shape[1]
        sums = dBC[:, :, :, :n].sum(1)  # (batch, 2, n, L)
        dB = sums[:, 0].reshape(shape_B).to(dt_B)
        dC = sums[:, 1].reshape(shape_C).to(dt_C)
        return (
            du, ddelta.to(dt_delta), dA.to(dt_A), dB, dC,
            None if dD is None else dD.to(dt_D),
            None if dz is None else dz.to(dt_z),
            None if dbias is None else dbias.to(dt_bias),
            None,
        )
