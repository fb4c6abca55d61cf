"""A Mamba layer's body (conv, projections, scan, gate, out_proj) forward and backward: mamba_ssm's fused
``mamba_inner_fn`` against this package's ``mamba_inner_cuda``, as the training step runs them (in_proj's output
channel-major, float32 weights, bf16 autocast), after a check of each against the float32 ``mamba_inner_ref``.

    python -m benchmarks.mamba_inner --shapes 4,2560,2048 1,2560,16384 --out benchmarks/results/mamba_inner.json
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.common import peak_gib, rel_err, report, time_cuda
from vl_mamba.ops.mamba_inner import mamba_inner_ref
from vl_mamba.ops.mamba_inner_cuda import mamba_inner_cuda

NAMES = ("xz", "conv_w", "conv_b", "x_proj_w", "dt_proj_w", "out_proj_w", "A", "D", "delta_bias")


def layer_args(batch: int, d_model: int, length: int, n: int = 16, seed: int = 0) -> list[torch.Tensor]:
    """in_proj's output (bf16, channel-major) and the layer's float32 parameters, all requiring gradients."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    d, rank = 2 * d_model, -(-d_model // 16)

    def rand(*shape, scale=1.0):
        return torch.randn(*shape, device="cuda", generator=gen) * scale

    xz = rand(2 * d, batch, length).to(torch.bfloat16).transpose(0, 1)
    args = [xz, rand(d, 1, 4, scale=0.5), rand(d, scale=0.1), rand(rank + 2 * n, d, scale=d**-0.5),
            rand(d, rank, scale=rank**-0.5), rand(d_model, d, scale=d**-0.5),
            -(torch.rand(d, n, device="cuda", generator=gen) * 4 + 0.1), rand(d), rand(d, scale=0.1) - 4.0]
    return [a.detach().requires_grad_(True) for a in args]


def _mamba_ssm(xz, conv_w, conv_b, x_proj_w, dt_proj_w, out_proj_w, A, D, delta_bias):
    from mamba_ssm.ops.selective_scan_interface import mamba_inner_fn

    return mamba_inner_fn(xz, conv_w, conv_b, x_proj_w, dt_proj_w, out_proj_w, None, A, None, None, D,
                          delta_bias=delta_bias, delta_softplus=True)


def _ours(xz, conv_w, conv_b, x_proj_w, dt_proj_w, out_proj_w, A, D, delta_bias):
    return mamba_inner_cuda(xz, conv_w, conv_b, x_proj_w, dt_proj_w, out_proj_w, None, A, D, delta_bias)


def _ref(xz, conv_w, conv_b, x_proj_w, dt_proj_w, out_proj_w, A, D, delta_bias):
    return mamba_inner_ref(xz, conv_w, conv_b, x_proj_w, dt_proj_w, out_proj_w, None, A, D, delta_bias)


IMPLS = {"mamba_ssm": _mamba_ssm, "ours": _ours}


def _grads(fn, args, grad):
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = fn(*args)
    return [out, *torch.autograd.grad(out, args, grad.to(out.dtype))]


def check(rows: list[dict], batch: int, d_model: int, length: int) -> None:
    args = layer_args(batch, d_model, length, seed=1)
    grad = torch.randn(batch, length, d_model, device="cuda")
    ref_args = [a.detach().float().requires_grad_(True) for a in args]
    out = _ref(*ref_args)
    ref = [out, *torch.autograd.grad(out, ref_args, grad)]
    for name, fn in IMPLS.items():
        got = _grads(fn, args, grad)
        row = {"shape": f"B{batch} d{d_model} L{length}", "impl": name}
        row.update({f"err_{k}": rel_err(g, r) for k, g, r in zip(("out", *NAMES), got, ref, strict=True)})
        rows.append(row)


def bench(rows: list[dict], batch: int, d_model: int, length: int) -> None:
    args = layer_args(batch, d_model, length)
    grad = torch.randn(batch, length, d_model, device="cuda", dtype=torch.bfloat16)
    for round_ in (1, 2):
        for name, fn in IMPLS.items():
            def forward(fn=fn):
                with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
                    fn(*args)

            def both(fn=fn):
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    out = fn(*args)
                torch.autograd.backward(out, grad)

            torch.cuda.reset_peak_memory_stats()
            fwd, fb = time_cuda(forward, repeats=20), time_cuda(both, repeats=20)
            rows.append({"shape": f"B{batch} d{d_model} L{length}", "impl": name, "round": round_,
                         "fwd_ms": fwd["median_ms"], "fwd_bwd_ms": fb["median_ms"], "peak_GiB": peak_gib()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["4,2560,2048", "8,2560,1024", "1,2560,16384"],
                        help="batch,d_model,L (d_inner is 2 d_model)")
    parser.add_argument("--check-shape", default="2,256,1000")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    checks: list[dict] = []
    check(checks, *(int(v) for v in args.check_shape.split(",")))
    report("layer body against the float32 reference under bf16 autocast (relative error)", checks,
           ["shape", "impl", "err_out", *(f"err_{k}" for k in NAMES)], None)
    rows: list[dict] = []
    for text in args.shapes:
        bench(rows, *(int(v) for v in text.split(",")))
    report("Mamba layer body, bf16 autocast, forward and forward + backward", checks + rows,
           ["shape", "impl", "round", "fwd_ms", "fwd_bwd_ms", "peak_GiB"], args.out)


if __name__ == "__main__":
    main()
