"""Suite 1, kernel dispatch: ``vl_mamba.ops`` against calling mamba_ssm / causal_conv1d directly (CUDA).

The ratio ours / direct should be about 1.0: the dispatch adds no copies and no work. The residual add + RMSNorm
is the exception: ``add_rms_norm`` runs this package's own Triton kernels, timed against mamba_ssm's. Each fast path is
first checked against its ``_ref`` on fresh random inputs. This package's own CUDA scan (which ``selective_scan_fn``
takes first by default; ``benchmarks.scan_kernels`` times it) is turned off here, so that both sides run the same
kernel.

    python -m benchmarks.kernels --out benchmarks/results/kernels.json
"""

from __future__ import annotations

import argparse
import os

import torch

from benchmarks.common import rel_err, report, time_cuda
from vl_mamba import ops


def scan_inputs(b: int, d: int, length: int, n: int, dtype: torch.dtype, grad: bool):
    dev = "cuda"
    u = torch.randn(b, d, length, device=dev, dtype=dtype)
    delta = (torch.randn(b, d, length, device=dev, dtype=dtype) * 0.5)
    A = -torch.rand(d, n, device=dev) * 4 - 0.1
    B = torch.randn(b, n, length, device=dev, dtype=dtype)
    C = torch.randn(b, n, length, device=dev, dtype=dtype)
    D = torch.randn(d, device=dev)
    z = torch.randn(b, d, length, device=dev, dtype=dtype)
    bias = torch.randn(d, device=dev) * 0.1
    tensors = [u, delta, A, B, C, D, z, bias]
    if grad:
        for t in tensors:
            t.requires_grad_(True)
    return tensors


def bench_scan(rows: list[dict], b: int, d: int, length: int, n: int) -> None:
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as direct

    args = scan_inputs(b, d, length, n, torch.bfloat16, grad=True)
    ours_out = ops.selective_scan_fn(*args, delta_softplus=True)
    ref_out = ops.selective_scan_ref(*[a.detach().float() for a in args], delta_softplus=True)
    err = rel_err(ours_out, ref_out)
    grad = torch.randn_like(ours_out)
    for name, fn in (("ours", ops.selective_scan_fn), ("mamba_ssm", direct)):
        fwd = time_cuda(lambda fn=fn: fn(*args, delta_softplus=True))
        both = time_cuda(lambda fn=fn: torch.autograd.backward(fn(*args, delta_softplus=True), grad))
        rows.append({"op": f"selective_scan B{b} D{d} L{length} N{n} bf16", "impl": name,
                     "fwd_ms": fwd["median_ms"], "fwd_bwd_ms": both["median_ms"], "rel_err_vs_ref": err})
    torch_fwd = time_cuda(lambda: ops.selective_scan_torch(*args, delta_softplus=True), repeats=5)
    rows.append({"op": f"selective_scan B{b} D{d} L{length} N{n} bf16", "impl": "selective_scan_torch (PyTorch)",
                 "fwd_ms": torch_fwd["median_ms"]})


def bench_conv(rows: list[dict], b: int, d: int, length: int, width: int) -> None:
    from causal_conv1d import causal_conv1d_fn as direct

    x = torch.randn(b, d, length, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(d, width, device="cuda", requires_grad=True)
    bias = torch.randn(d, device="cuda", requires_grad=True)
    err = rel_err(ops.causal_conv1d_fn(x, w, bias, "silu"), ops.causal_conv1d_ref(x.float(), w, bias, "silu"))
    grad = torch.randn_like(x)
    timings = {}
    for name, fn in [("ours", ops.causal_conv1d_fn), ("causal_conv1d", direct)] * 2:  # interleaved, keep the last
        fwd = time_cuda(lambda fn=fn: fn(x, w, bias, activation="silu"), repeats=50)
        both = time_cuda(lambda fn=fn: torch.autograd.backward(fn(x, w, bias, activation="silu"), grad), repeats=50)
        timings[name] = (fwd, both)
    for name, (fwd, both) in timings.items():
        rows.append({"op": f"causal_conv1d B{b} D{d} L{length} W{width} bf16", "impl": name,
                     "fwd_ms": fwd["median_ms"], "fwd_bwd_ms": both["median_ms"], "rel_err_vs_ref": err})


def bench_step(rows: list[dict], b: int, d: int, n: int) -> None:
    from mamba_ssm.ops.triton.selective_state_update import selective_state_update as direct

    dev, dt = "cuda", torch.bfloat16
    state = torch.randn(b, d, n, device=dev)
    x, dtv, z = (torch.randn(b, d, device=dev, dtype=dt) for _ in range(3))
    A = -torch.rand(d, n, device=dev) - 0.1
    B, C = torch.randn(b, n, device=dev, dtype=dt), torch.randn(b, n, device=dev, dtype=dt)
    D, bias = torch.randn(d, device=dev), torch.randn(d, device=dev) * 0.1
    s1, s2 = state.clone(), state.clone()
    err = rel_err(ops.selective_state_update(s1, x, dtv, A, B, C, D, z, bias, True),
                  ops.selective_state_update_ref(s2, x, dtv, A, B, C, D, z, bias, True))
    for name, fn in (("ours", ops.selective_state_update), ("mamba_ssm", direct)):
        t = time_cuda(lambda fn=fn: fn(state, x, dtv, A, B, C, D=D, z=z, dt_bias=bias, dt_softplus=True), repeats=50)
        rows.append({"op": f"selective_state_update B{b} D{d} N{n} bf16", "impl": name,
                     "fwd_ms": t["median_ms"], "rel_err_vs_ref": err})


def bench_norm(rows: list[dict], tokens: int, d: int) -> None:
    """The residual add + RMSNorm: ``add_rms_norm`` runs this package's Triton kernels, timed against mamba_ssm's
    fused kernel (forward, and forward + backward with a gradient for both outputs)."""
    from mamba_ssm.ops.triton.layer_norm import rms_norm_fn as direct

    x = torch.randn(tokens, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    res = torch.randn(tokens, d, device="cuda", requires_grad=True)
    w = torch.randn(d, device="cuda", requires_grad=True)
    err = rel_err(ops.add_rms_norm(x, res, w)[0], ops.add_rms_norm_ref(x, res, w)[0])
    grads = [torch.randn(tokens, d, device="cuda", dtype=torch.bfloat16), torch.randn(tokens, d, device="cuda")]
    fns = (("ours", lambda: ops.add_rms_norm(x, res, w)),
           ("mamba_ssm", lambda: direct(x, w, None, residual=res, eps=1e-5, prenorm=True, residual_in_fp32=True)))
    timings = {}
    for name, fn in fns * 2:  # interleaved, keep the last
        with torch.no_grad():
            fwd = time_cuda(fn, repeats=50)
        both = time_cuda(lambda fn=fn: torch.autograd.grad(fn(), (x, res, w), grads), repeats=50)
        timings[name] = (fwd, both)
    for name, (fwd, both) in timings.items():
        rows.append({"op": f"add_rms_norm {tokens}x{d} bf16 (float32 residual)", "impl": name,
                     "fwd_ms": fwd["median_ms"], "fwd_bwd_ms": both["median_ms"], "rel_err_vs_ref": err})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/kernels.json")
    args = parser.parse_args()
    os.environ["VL_MAMBA_CUDA_SCAN"] = "0"  # the dispatch to mamba_ssm's kernel, timed against calling it directly
    torch.manual_seed(0)
    rows: list[dict] = []
    bench_scan(rows, 4, 3072, 1024, 16)
    bench_conv(rows, 4, 3072, 1024, 4)
    bench_step(rows, 32, 5120, 16)
    bench_norm(rows, 8192, 2560)
    by_op: dict[str, dict[str, float]] = {}
    for row in rows:
        by_op.setdefault(row["op"], {})[row["impl"]] = row.get("fwd_bwd_ms", row["fwd_ms"])
    for row in rows:
        impls = by_op[row["op"]]
        direct = next((v for k, v in impls.items() if k not in ("ours",) and "PyTorch" not in k), None)
        if row["impl"] == "ours" and direct:
            row["ratio_ours_over_direct"] = impls["ours"] / direct
    report("kernel dispatch (CUDA events, median)", rows,
           ["op", "impl", "fwd_ms", "fwd_bwd_ms", "ratio_ours_over_direct", "rel_err_vs_ref"], args.out)


if __name__ == "__main__":
    main()
