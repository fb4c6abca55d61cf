"""``selective_scan_cuda``: the selective scan on CUDA through this package's own kernel (``cuda_scan.cu``).

Same signature and results as ``selective_scan_ref`` (mamba_ssm's ``selective_scan_fn``), for up to 16 states,
with one group of B and C or several that each serve a multiple of 32 channels (the kernel's block; a 2D scan's
directions). Bias, softplus, D and the gate are done in the kernel, as are every gradient of them; the
forward keeps the state every 32 steps (float32, as large as a bfloat16 input at 16 states) and the backward
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

__all__ = [
    "groups_fit", "kernel_available", "scan_backward", "scan_forward", "scan_operands", "selective_scan_cuda",
    "supports", "switched_on", "takes",
]


def kernel_available() -> bool:
    """Whether the kernel builds for device 0."""
    return cuda_build.library() is not None


def switched_on() -> bool:
    """Whether ``VL_MAMBA_CUDA_SCAN`` lets the kernel run (``cuda_build.enabled``) and it builds here (built only
    then)."""
    return cuda_build.enabled() and kernel_available()


def takes(dtype: torch.dtype, w_dtype: torch.dtype, A: Tensor) -> bool:
    """Whether the kernel reads inputs of ``dtype`` and B, C of ``w_dtype``, with a real A of at most 16 states."""
    return (dtype in cuda_build.DTYPES and w_dtype in cuda_build.DTYPES and not A.is_complex()
            and A.shape[1] <= cuda_build.STATES)


def supports(u: Tensor, A: Tensor, B: Tensor) -> bool:
    """Whether the kernel takes these operands: CUDA tensors of dtypes it reads (``takes``), one group of B and C
    or groups of whole blocks of channels (``groups_fit``)."""
    groups = 1 if B.dim() == 3 else B.shape[1]
    return u.is_cuda and takes(u.dtype, B.dtype, A) and groups_fit(u.shape[1], groups)


def groups_fit(dim: int, groups: int) -> bool:
    """Whether ``groups`` groups of B and C split ``dim`` channels so that each of the kernel's blocks
    (``cuda_build.CHANNELS`` channels) lies in one group."""
    return groups == 1 or (groups > 0 and dim % groups == 0 and dim // groups % cuda_build.CHANNELS == 0)


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
                           f"and one group of B and C or groups of a multiple of {cuda_build.CHANNELS} channels")
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


def _args(u, delta, A, B, C, D, z, delta_bias, softplus: bool, a_log: bool = False) -> cuda_build.CudaScanArgs:
    batch, dim, length = u.shape
    # B and C are read four steps at a time, the rest eight.
    vec = length % 8 == 0 and all(_aligned(t, 8) for t in (u, delta, z)) and _aligned(B, 4) and _aligned(C, 4)
    args = cuda_build.CudaScanArgs(
        batch=batch, dim=dim, length=length, nstate=A.shape[1], nchunks=-(-length // cuda_build.TILE),
        softplus=int(softplus), in_dtype=cuda_build.DTYPES[u.dtype], w_dtype=cuda_build.DTYPES[B.dtype],
        vec=int(vec),
        u=_ptr(u), delta=_ptr(delta), A=_ptr(A), B=_ptr(B), C=_ptr(C), D=_ptr(D), z=_ptr(z),
        delta_bias=_ptr(delta_bias), group_dim=dim // (B.shape[1] // A.shape[1]), a_log=int(a_log),
    )
    args.su[:], args.sdelta[:] = u.stride()[:2], delta.stride()[:2]
    args.sB[:], args.sC[:] = B.stride()[:2], C.stride()[:2]
    args.sz[:] = (0, 0) if z is None else z.stride()[:2]
    return args


def _rows(out: Tensor | None, like: Tensor, name: str) -> Tensor:
    """``out`` checked as a (batch, dim, L) destination with unit stride along L, or a new contiguous one."""
    if out is None:
        return torch.empty(like.shape, device=like.device, dtype=like.dtype)
    if out.shape != like.shape or out.dtype != like.dtype or out.device != like.device or out.stride(-1) != 1:
        raise ValueError(f"{name} must be {tuple(like.shape)} {like.dtype} on {like.device} with unit stride along "
                         f"L, got {tuple(out.shape)} {out.dtype} strides {out.stride()}")
    return out


def scan_operands(u, delta, A, B, C, D=None, z=None, delta_bias=None) -> tuple:
    """The operands as the kernel reads them: time steps at unit stride, delta and z in u's dtype, C in B's,
    B and C as (batch, N, L), A, D and the bias float32; copied only where needed."""
    batch, dim, length = u.shape
    B_ = _time_major(B.reshape(batch, -1, length))
    return (_time_major(u), _time_major(delta, u.dtype), _f32(A), B_,
            _time_major(C.reshape(batch, -1, length), B_.dtype), _f32(D), _time_major(z, u.dtype), _f32(delta_bias))


def scan_forward(ops: tuple, softplus: bool, keep: bool, out: Tensor | None = None, a_log: bool = False):
    """The kernel's forward on ``scan_operands``: (out, last state, saved states for ``scan_backward`` or None).

    ``out`` (optional) is where y goes: (batch, dim, L), u's dtype, any strides with L's unit. ``a_log``: the
    operands' A is log(-A) (Mamba's ``A_log``), which the kernel exponentiates as it reads it.
    """
    u, A = ops[0], ops[2]
    batch, dim, length = u.shape
    out = _rows(out, u, "out")
    last = torch.empty(batch, dim, A.shape[1], device=u.device, dtype=torch.float32)
    args = _args(*ops, softplus, a_log)
    ckpt = None
    if keep:
        ckpt = torch.empty(batch, dim, args.nchunks, cuda_build.STATES, device=u.device, dtype=torch.float32)
    args.out, args.last, args.ckpt = _ptr(out), _ptr(last), _ptr(ckpt)
    args.sout[:] = out.stride()[:2]
    _launch(args, False, u.device)
    return out, last, ckpt


def scan_backward(ops: tuple, ckpt: Tensor, softplus: bool, dout: Tensor | None, dlast: Tensor | None,
                  dz: Tensor | None = None, out_z: Tensor | None = None, du: Tensor | None = None,
                  ddelta: Tensor | None = None, dbc: Tensor | None = None, a_log: bool = False) -> tuple:
    """The kernel's backward: (du, ddelta, dA, dB, dC, dD, dz, dbias), dB and dC float32 (batch, N, L), or
    (batch, groups, N, L) for several groups of B and C; dA, dD and dbias float32, the rest in u's dtype.

    ``dout``, the gradient of y, may have any strides with L's unit. ``du``, ``ddelta`` and ``dz`` (optional) are
    where those gradients go (new contiguous tensors otherwise); ``out_z`` (optional) receives y again, as the
    forward gave it (for out_proj's weight gradient without keeping y). All four: (batch, dim, L) in u's dtype,
    any strides with L's unit. ``dbc`` (optional, (batch, 2, N, L), any dtype, unit stride along L) receives dB and
    dC, summed straight into it (one group of B and C only); dB and dC are then its two halves. ``a_log`` as
    ``scan_forward``'s: dA is then the gradient of that log.
    """
    u, delta, A, B, C, D, z, bias = ops
    batch, dim, length = u.shape
    rows = dict(device=u.device, dtype=u.dtype)
    if dout is None:
        dout = torch.zeros(batch, dim, length, **rows)
    elif dout.dtype != u.dtype or dout.stride(-1) != 1:
        dout = dout.to(u.dtype).contiguous()
    dlast = None if dlast is None else dlast.float().contiguous()
    du, ddelta = _rows(du, u, "du"), _rows(ddelta, u, "ddelta")
    dz = None if z is None else _rows(dz, u, "dz")
    out_z = None if out_z is None else _rows(out_z, u, "out_z")
    # The kernel's atomic sums start from zero: one buffer holds them all, so that one fill serves.
    zeroed = torch.zeros(A.numel() + (0 if D is None else dim) + (0 if bias is None else dim), device=u.device,
                         dtype=torch.float32)
    dA = zeroed[:A.numel()].view_as(A)
    dD = None if D is None else zeroed[A.numel():A.numel() + dim]
    dbias = None if bias is None else zeroed[zeroed.numel() - dim:]
    blocks = -(-dim // cuda_build.CHANNELS)
    dBC = torch.empty(batch, blocks, 2, cuda_build.STATES, length, device=u.device, dtype=torch.float32)
    args = _args(*ops, softplus, a_log)
    args.ckpt, args.dout, args.dlast = _ptr(ckpt), _ptr(dout), _ptr(dlast)
    args.vec = int(args.vec and all(_aligned(t, 8) for t in (dout, du, ddelta, dz, out_z)))
    args.du, args.ddelta, args.dz, args.out_z = _ptr(du), _ptr(ddelta), _ptr(dz), _ptr(out_z)
    args.dA, args.dD, args.dbias, args.dBC = _ptr(dA), _ptr(dD), _ptr(dbias), _ptr(dBC)
    args.sdout[:] = dout.stride()[:2]
    args.sdz[:] = (0, 0) if dz is None else dz.stride()[:2]
    args.sdu[:], args.sddelta[:] = du.stride()[:2], ddelta.stride()[:2]
    args.sout[:] = (0, 0) if out_z is None else out_z.stride()[:2]
    _launch(args, True, u.device)
    nstate, groups = A.shape[1], B.shape[1] // A.shape[1]
    if groups == 1:
        sums = _sum_blocks(dBC, nstate, dbc)
        return du, ddelta, dA, sums[:, 0], sums[:, 1], dD, dz, dbias
    if dbc is not None:
        raise ValueError("dbc takes the sums of one group of B and C")
    # A group's blocks are consecutive: the partials are those of batch * groups sequences of blocks // groups.
    part = dBC.view(batch * groups, blocks // groups, *dBC.shape[2:])
    sums = _sum_blocks(part, nstate, None).view(batch, groups, 2, nstate, length)
    return du, ddelta, dA, sums[:, :, 0], sums[:, :, 1], dD, dz, dbias


def _sum_blocks(part: Tensor, nstate: int, out: Tensor | None) -> Tensor:
    """The backward's partial dB and dC, (batch, blocks, 2, STATES, L) float32, summed over the blocks in a fixed
    order into ``out`` ((batch, 2, nstate, L), float32 where not given; any dtype, unit stride along L)."""
    batch, blocks, _, _, length = part.shape
    if out is None:
        out = torch.empty(batch, 2, nstate, length, device=part.device, dtype=torch.float32)
    if out.shape != (batch, 2, nstate, length) or out.stride(-1) != 1 or out.dtype not in cuda_build.DTYPES:
        raise ValueError(f"dbc must be ({batch}, 2, {nstate}, {length}) with unit stride along L, got "
                         f"{tuple(out.shape)} {out.dtype} strides {out.stride()}")
    if batch * 2 * nstate > 65535:  # more rows than the kernel's grid takes
        return out.copy_(part[:, :, :, :nstate].sum(1))
    strides = (ctypes.c_int64 * 3)(*out.stride()[:3])
    stream = torch.cuda.current_stream(part.device).cuda_stream
    code = cuda_build.library().vl_cuda_scan_sum(part.data_ptr(), batch, blocks, nstate, length, out.data_ptr(),
                                                 cuda_build.DTYPES[out.dtype], strides, ctypes.c_void_p(stream))
    if code != 0:
        raise RuntimeError(f"the selective scan's dB and dC sum failed to launch (error {code})")
    return out


class _CudaScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, softplus):
        ops = scan_operands(u, delta, A, B, C, D, z, delta_bias)
        keep = any(ctx.needs_input_grad[:8])
        out, last, ckpt = scan_forward(ops, softplus, keep)
        if keep:
            ctx.save_for_backward(*ops, ckpt)
            ctx.meta = (softplus, B.shape, C.shape, delta.dtype, A.dtype, B.dtype, C.dtype,
                        None if D is None else D.dtype, None if z is None else z.dtype,
                        None if delta_bias is None else delta_bias.dtype)
        ctx.set_materialize_grads(False)
        return out, last

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out, grad_last):
        *ops, ckpt = ctx.saved_tensors
        softplus, shape_B, shape_C, dt_delta, dt_A, dt_B, dt_C, dt_D, dt_z, dt_bias = ctx.meta
        du, ddelta, dA, dB, dC, dD, dz, dbias = scan_backward(tuple(ops), ckpt, softplus, grad_out, grad_last)
        return (
            du, ddelta.to(dt_delta), dA.to(dt_A), dB.reshape(shape_B).to(dt_B), dC.reshape(shape_C).to(dt_C),
            None if dD is None else dD.to(dt_D),
            None if dz is None else dz.to(dt_z),
            None if dbias is None else dbias.to(dt_bias),
            None,
        )
