"""``selective_scan_cpu``: the selective scan on the CPU through the compiled kernel of ``cpu_scan.c``.

Same signature and results as ``selective_scan_ref``. The time steps' bias and softplus (and their backward) run
in PyTorch; the recurrence, the skip connection D, the gate and every gradient of them run in the kernel, which
reads its operands with any strides (the transposed projections of a Mamba layer cost no copy) and keeps no
(L, N)-sized state: the forward stores the state before every chunk of steps, the backward recomputes each chunk
from it. Several torch threads run disjoint blocks of channels side by side (the kernel call releases the GIL).
``selective_scan_fn`` runs this on the CPU when the kernel builds (``cpu_build.library``), else
``selective_scan_torch``.
"""

from __future__ import annotations

import ctypes

import torch
from torch import Tensor

from vl_mamba.ops import cpu_build
from vl_mamba.ops.selective_scan import (
    _channel_parts,
    _check_shapes,
    _compute_dtype,
    _run_parts,
    _time_steps,
    selective_scan_ref,
)

__all__ = ["selective_scan_cpu", "kernel_available"]

_CHUNK_ELEMENTS = 1 << 14
"""States of one chunk of steps for one block of 16 channels (steps x N x 16): the backward keeps a chunk's decays and
states, twice this, in the processor's second-level cache."""
_PART_ELEMENTS = 1 << 20
"""Least work of one block of channels run on its own thread, in state elements (batch * channels * L * N). Below it a
block takes about a millisecond, and in a training step, where the caller's OpenMP threads still spin after torch's
ops before it, running blocks side by side slowed the demo's steps by a fifth instead of speeding them up."""


def kernel_available() -> bool:
    """Whether the compiled kernel builds and loads here, and ``VL_MAMBA_CPU_KERNEL`` does not turn it off (read at
    every call, so that it can be switched at run time)."""
    return cpu_build.enabled() and cpu_build.library() is not None


def selective_scan_cpu(
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
    """The compiled CPU selective scan; arguments and result as ``selective_scan_fn``.

    Gradients also flow back from the last state, as in the reference. A backward that builds a graph
    (``create_graph=True``: double backward, Hessian-vector products) takes the reference loop's differentiable
    backward instead of the kernel's, slower but differentiable again.

    Raises:
        RuntimeError: the kernel is not available here (see ``kernel_available``), or a tensor is not on the CPU.
    """
    _check_shapes(u, delta, A, B, C, D, z, delta_bias)
    if not kernel_available():
        raise RuntimeError("the CPU selective-scan kernel is not available here: use selective_scan_torch")
    present = [t for t in (u, delta, A, B, C, D, z, delta_bias) if t is not None]
    if any(t.device.type != "cpu" for t in present):
        raise RuntimeError("selective_scan_cpu takes CPU tensors")
    y, last = _KernelScan.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, cpu_build.library())
    return (y, last) if return_last_state else y


def _chunk(n: int, length: int) -> int:
    return max(1, min(length, _CHUNK_ELEMENTS // (16 * n)))


def _strides(t: Tensor | None, count: int) -> tuple[int, ...]:
    return (0,) * count if t is None else tuple(t.stride())


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _bc_view(M: Tensor, cdt: torch.dtype) -> Tensor:
    """B or C in the compute dtype as (batch, G, N, L), a view where it can be."""
    M = M.to(cdt)
    return M.unsqueeze(1) if M.dim() == 3 else M


def _args(u, dt, A, B, C, D, z, chunk: int, sl: slice, **outputs) -> cpu_build.ScanArgs:
    batch, dim, length = u.shape
    args = cpu_build.ScanArgs(
        batch=batch, dim=dim, length=length, n=A.shape[1], groups=B.shape[1], chunk=chunk, d0=sl.start, d1=sl.stop,
        u=_ptr(u), dt=_ptr(dt), A=_ptr(A), B=_ptr(B), C=_ptr(C), D=_ptr(D), z=_ptr(z),
    )
    args.su[:], args.sdt[:], args.sz[:] = u.stride(), dt.stride(), _strides(z, 3)
    args.sB[:], args.sC[:] = B.stride(), C.stride()
    for name, value in outputs.items():
        if name == "sg":
            args.sg[:] = value
        else:
            setattr(args, name, _ptr(value))
    return args


def _call(lib: ctypes.CDLL, name: str, cdt: torch.dtype, args: cpu_build.ScanArgs) -> None:
    fn = getattr(lib, f"{name}_{'f64' if cdt == torch.float64 else 'f32'}")
    if fn(ctypes.byref(args)) != 0:
        raise MemoryError("the CPU selective-scan kernel could not allocate its work buffers")


class _KernelScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, lib):
        cdt = _compute_dtype(u)
        batch, dim, length = u.shape
        n = A.shape[1]
        pre, dt = _time_steps(delta, delta_bias, delta_softplus, cdt)
        uf, Af, Bf, Cf = u.to(cdt), A.to(cdt).contiguous(), _bc_view(B, cdt), _bc_view(C, cdt)
        Df = None if D is None else D.to(cdt).contiguous()
        zf = None if z is None else z.to(cdt)
        chunk = _chunk(n, length)
        keep = any(ctx.needs_input_grad[:8])
        out = uf.new_empty(batch, dim, length)
        last = uf.new_empty(batch, dim, n)
        starts = uf.new_empty(-(-length // chunk), batch, dim, n) if keep else None
        parts = _channel_parts(u, A, B, _PART_ELEMENTS)

        def run(sl: slice) -> None:
            args = _args(uf, dt, Af, Bf, Cf, Df, zf, chunk, sl, out=out, last=last, starts=starts)
            _call(lib, "vl_scan_forward", cdt, args)

        _run_parts(run, parts)
        if keep:
            ctx.save_for_backward(uf, dt, Af, Bf, Cf, Df, zf, starts, pre if delta_softplus else None,
                                  u, delta, A, B, C, D, z, delta_bias)
            ctx.meta = (lib, chunk, parts, delta_softplus)
        ctx.set_materialize_grads(False)
        return out.to(u.dtype), last

    @staticmethod
    def backward(ctx, grad_out, grad_last):
        saved = ctx.saved_tensors
        (uf, dt, Af, Bf, Cf, Df, zf, starts, pre), inputs = saved[:9], saved[9:]
        lib, chunk, parts, softplus = ctx.meta
        if torch.is_grad_enabled():
            return (*_graph_backward(inputs, softplus, grad_out, grad_last), None, None)
        cdt = uf.dtype
        batch, dim, length = uf.shape
        g = uf.new_zeros(1, 1, 1).expand(batch, dim, length) if grad_out is None else grad_out.to(cdt)
        glast = None if grad_last is None else grad_last.to(cdt).contiguous()
        gu, gdt = uf.new_empty(uf.shape), uf.new_empty(uf.shape)
        gz = None if zf is None else uf.new_empty(uf.shape)
        gA = torch.zeros_like(Af)
        gD = None if Df is None else torch.zeros_like(Df)
        # B and C's gradients sum over the channels of a group: each block of channels adds into its own.
        gBC = [(Bf.new_zeros(Bf.shape), Cf.new_zeros(Cf.shape)) for _ in parts]

        def run(i: int) -> None:
            args = _args(uf, dt, Af, Bf, Cf, Df, zf, chunk, parts[i], starts=starts, g=g, sg=g.stride(),
                         glast=glast, gu=gu, gdt=gdt, gz=gz, gA=gA, gD=gD, gB=gBC[i][0], gC=gBC[i][1])
            _call(lib, "vl_scan_backward", cdt, args)

        _run_parts(run, list(range(len(parts))))
        if softplus:
            gdt = torch.ops.aten.softplus_backward(gdt, pre, 1.0, 20.0)
        gB, gC = (gBC[0][k] if len(parts) == 1 else torch.stack([p[k] for p in gBC]).sum(0) for k in (0, 1))
        if inputs[3].dim() == 3:
            gB, gC = gB.squeeze(1), gC.squeeze(1)
        grads = [gu, gdt, gA, gB, gC, gD, gz, None if inputs[7] is None else gdt.sum((0, 2))]
        return (*(None if gr is None else gr.to(t.dtype) for gr, t in zip(grads, inputs)), None, None)


def _graph_backward(inputs: tuple, softplus: bool, grad_out: Tensor | None, grad_last: Tensor | None) -> tuple:
    """The gradients of the inputs through ``selective_scan_ref`` under autograd, with a graph of their own: the
    backward for ``create_graph=True``. Inputs that need no gradient get None."""
    wanted = [t for t in inputs if t is not None and t.requires_grad]
    y, last = selective_scan_ref(*inputs, delta_softplus=softplus, return_last_state=True)
    pairs = [(out, grad) for out, grad in ((y, grad_out), (last, grad_last)) if grad is not None]
    grads = iter(torch.autograd.grad([p[0] for p in pairs], wanted, [p[1] for p in pairs], create_graph=True,
                                     allow_unused=True))
    return tuple(next(grads) if t is not None and t.requires_grad else None for t in inputs)


def self_check(lib: ctypes.CDLL) -> str | None:
    """Run a freshly loaded kernel on a small scan in float64 and float32 against ``selective_scan_ref`` (outputs
    and every gradient, grouped B and C, every option): None when it agrees, else what differs. A build that fails
    this is not used."""
    shapes = {"u": (2, 20, 13), "delta": (2, 20, 13), "A": (20, 3), "B": (2, 2, 3, 13), "C": (2, 2, 3, 13),
              "D": (20,), "z": (2, 20, 13), "delta_bias": (20,)}
    for dtype, tol in ((torch.float64, 1e-9), (torch.float32, 1e-4)):
        with torch.inference_mode(False):
            gen = torch.Generator().manual_seed(0)
            inputs = {k: torch.randn(*s, generator=gen, dtype=torch.float64) for k, s in shapes.items()}
            inputs["A"] = -inputs["A"].abs() - 0.5
            inputs = {k: v.to(dtype).requires_grad_() for k, v in inputs.items()}
        results = []
        for kernel in (True, False):
            # The first scan of a process may well run under no_grad or inference_mode.
            with torch.inference_mode(False), torch.enable_grad():
                y, last, grads = _loss_grads(inputs, lib if kernel else None)
            results.append([y, last, *grads])
        for name, a, b in zip(["y", "last state", *(f"grad of {k}" for k in inputs)], *results):
            err = ((a - b).norm() / b.norm().clamp_min(1e-30)).item()
            if not err < tol:
                return f"{name} differs from the reference ({dtype}: relative error {err:.2g})"
    return None


def _loss_grads(inputs: dict[str, Tensor], lib: ctypes.CDLL | None) -> tuple:
    """y, the last state, and the gradients of a loss on both, by the kernel (``lib``) or the reference (None)."""
    if lib is not None:
        y, last = _KernelScan.apply(*inputs.values(), True, lib)
    else:
        y, last = selective_scan_ref(**inputs, delta_softplus=True, return_last_state=True)
    grads = torch.autograd.grad(y.square().sum() + last.sum(), list(inputs.values()))
    return y.detach(), last.detach(), grads
