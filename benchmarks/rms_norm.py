"""The residual add + RMSNorm at a training step's shape: this package's Triton kernels (``add_rms_norm_triton``)
with each choice of warps a program and backward rows a program, against mamba_ssm's fused kernel; forward and
backward timed apart (the GPU's time, issued behind a sleep so that the host's launch time is left out), with the
bandwidth each reaches (the bytes it must move over its time).

    python -m benchmarks.rms_norm --tokens 8192 --width 2560 --out benchmarks/results/rms_norm.json
"""

from __future__ import annotations

import argparse
import itertools
from unittest import mock

import torch

from benchmarks.common import held_medians, report, sleep_cycles
from vl_mamba.ops import rms_norm as norm_module


def timed(fn, inputs, grads, cycles: int, repeats: int = 20) -> tuple[float, float]:
    """Medians of the GPU's milliseconds for the forward, and for the backward alone (forward + backward less the
    forward), each issued while a sleep holds the GPU (``held_call``): the kernels' own time, without the host's
    time to launch them."""
    def gpu_ms(call) -> float:
        call()
        return held_medians(call, cycles, repeats)[0]

    with torch.no_grad():
        fwd = gpu_ms(lambda: fn(*inputs))
    # autograd.grad, not backward: no accumulation into .grad
    return fwd, gpu_ms(lambda: torch.autograd.grad(fn(*inputs), inputs, grads)) - fwd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--width", type=int, default=2560)
    parser.add_argument("--warps", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--rows", type=int, nargs="+", default=[4, 8, 16, 32])
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    n, d = args.tokens, args.width
    x = torch.randn(n, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    res = torch.randn(n, d, device="cuda", requires_grad=True)
    w = torch.randn(d, device="cuda", requires_grad=True)
    grads = [torch.randn(n, d, device="cuda", dtype=torch.bfloat16), torch.randn(n, d, device="cuda")]
    # Forward: read x (2 B) and the residual (4 B), write the normed (2 B) and the new residual (4 B). Backward:
    # read both gradients (2 + 4 B) and the saved residual (4 B), write x's (2 B) and the residual's (4 B).
    fwd_bytes, bwd_bytes = 12 * n * d, 16 * n * d
    rows = []
    cycles = sleep_cycles(5.0)

    def add(impl: str, fwd: float, bwd: float, **extra) -> None:
        rows.append({"impl": impl, **extra, "fwd_ms": fwd, "bwd_ms": bwd, "fwd_GB/s": fwd_bytes / fwd / 1e6,
                     "bwd_GB/s": bwd_bytes / bwd / 1e6})
        print(rows[-1], flush=True)

    from mamba_ssm.ops.triton.layer_norm import rms_norm_fn

    def theirs(x, res, w):
        return rms_norm_fn(x, w, None, residual=res, eps=1e-5, prenorm=True, residual_in_fp32=True)

    add("mamba_ssm", *timed(theirs, (x, res, w), grads, cycles))
    block = norm_module._block(d)[0]
    for warps, per_program in itertools.product(args.warps, args.rows):
        with mock.patch.object(norm_module, "_block", lambda width, w=warps: (block, w)), \
                mock.patch.object(norm_module, "backward_rows", lambda rows, device, r=per_program: r):
            add("ours", *timed(norm_module.add_rms_norm_triton, (x, res, w), grads, cycles), warps=warps,
                rows_per_program=per_program)
    add("ours (defaults)", *timed(norm_module.add_rms_norm_triton, (x, res, w), grads, cycles),
        warps=norm_module._block(d)[1], rows_per_program=norm_module.backward_rows(n, x.device))
    report(f"add + RMSNorm, {n} x {d}, bf16 x, float32 residual", rows,
           ["impl", "warps", "rows_per_program", "fwd_ms", "bwd_ms", "fwd_GB/s", "bwd_GB/s"], args.out)


if __name__ == "__main__":
    main()
