"""The selective-scan kernels side by side: mamba_ssm's CUDA scan against this package's own CUDA kernel
(``selective_scan_cuda``) and ``selective_scan_triton``.

Inputs as a Mamba layer hands them over: bf16 u, delta, B, C, z (z a half of the in_proj output, so strided),
float32 A, D and delta bias, softplus on. First each kernel's output and every gradient against the float32
``selective_scan_ref`` on one shape; then forward, and forward plus backward, timed with CUDA events for each
shape and each tile configuration of the Triton scan (``block_d,steps,warps,bwd_block_d,bwd_warps``).

    python -m benchmarks.scan_kernels --out benchmarks/results/scan_kernels.json
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.common import rel_err, report, time_cuda
from vl_mamba.ops import scan_cuda, scan_triton
from vl_mamba.ops.selective_scan import selective_scan_ref

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def layer_inputs(b: int, d: int, length: int, n: int, seed: int = 0) -> list[torch.Tensor]:
    """The scan's inputs in a Mamba layer's layouts, all requiring gradients."""
    gen = torch.Generator(device="cuda").manual_seed(seed)

    def rand(*shape, scale=1.0, dtype=torch.bfloat16):
        return (torch.randn(*shape, device="cuda", generator=gen) * scale).to(dtype)

    xz = rand(2 * d, b, length).transpose(0, 1)  # (b, 2d, L), strides (L, b L, 1) as in_proj writes it
    u = rand(b, d, length)
    z = xz[:, d:]
    delta = rand(b, d, length, scale=0.5)
    A = -(torch.rand(d, n, device="cuda", generator=gen) * 4 + 0.1)
    B, C = rand(b, n, length), rand(b, n, length)
    D, bias = rand(d, dtype=torch.float32), rand(d, scale=0.1, dtype=torch.float32)
    tensors = [u, delta, A, B, C, D, z, bias]
    return [t.detach().requires_grad_(True) for t in tensors]


def _mamba_ssm():
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    return selective_scan_fn


def _grads(fn, args, grad):
    y = fn(*args, delta_softplus=True)
    return [y, *torch.autograd.grad(y, args, grad)]


def _impls(names: list[str]) -> list[tuple[str, object]]:
    table = {"mamba_ssm": _mamba_ssm, "cuda": lambda: scan_cuda.selective_scan_cuda,
             "triton": lambda: scan_triton.selective_scan_triton}
    return [(name, table[name]()) for name in names]


def check(rows: list[dict], b: int, d: int, length: int, n: int, impls: list[str]) -> None:
    """Relative error of y and of each gradient against the float32 reference, for each kernel."""
    args = layer_inputs(b, d, length, n, seed=1)
    grad = torch.randn(b, d, length, device="cuda", dtype=torch.bfloat16)
    ref_args = [a.detach().float().requires_grad_(True) for a in args]
    ref = _grads(selective_scan_ref, ref_args, grad.float())
    for name, fn in _impls(impls):
        got = _grads(fn, args, grad)
        row = {"shape": f"B{b} D{d} L{length} N{n}", "impl": name}
        row.update({f"err_{k}": rel_err(g, r) for k, g, r in zip(("y", *NAMES), got, ref)})
        rows.append(row)


def bench(
    rows: list[dict], b: int, d: int, length: int, n: int, configs: list[scan_triton.ScanConfig], with_torch: bool,
    impls: list[str],
) -> None:
    args = layer_inputs(b, d, length, n)
    grad = torch.randn(b, d, length, device="cuda", dtype=torch.bfloat16)
    shape = f"B{b} D{d} L{length} N{n}"

    def timed(name: str, fn, config: str = "") -> None:
        fwd = time_cuda(lambda: fn(*[a.detach() for a in args], delta_softplus=True), repeats=20)
        both = time_cuda(lambda: torch.autograd.backward(fn(*args, delta_softplus=True), grad), repeats=20)
        rows.append({"shape": shape, "impl": name, "config": config, "fwd_ms": fwd["median_ms"],
                     "fwd_bwd_ms": both["median_ms"]})

    timed("mamba_ssm", _mamba_ssm())
    if "cuda" in impls:
        timed("cuda", scan_cuda.selective_scan_cuda)
    for cfg in configs if "triton" in impls else []:
        scan_triton.CONFIG = cfg
        try:
            timed("triton", scan_triton.selective_scan_triton, repr(cfg)[11:-1])
        except Exception as exc:  # a configuration that does not compile or run is reported, not fatal
            rows.append({"shape": shape, "impl": "triton", "config": repr(cfg)[11:-1], "error": repr(exc)[:200]})
    timed("mamba_ssm (again)", _mamba_ssm())
    if "cuda" in impls:
        timed("cuda (again)", scan_cuda.selective_scan_cuda)
    if with_torch:
        from vl_mamba.ops.selective_scan import selective_scan_torch

        timed("selective_scan_torch", selective_scan_torch)


def _config(text: str) -> scan_triton.ScanConfig:
    block_d, steps, warps, bwd_block_d, bwd_warps = (int(v) for v in text.split(","))
    return scan_triton.ScanConfig(block_d, steps, warps, bwd_block_d, bwd_warps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["4,3072,1024,16", "8,5120,1024,16", "1,5120,16384,16"],
                        help="b,d,L,N of each timed shape")
    parser.add_argument("--check-shape", default="2,512,1000,16", help="b,d,L,N of the check against the reference")
    parser.add_argument("--configs", nargs="+", default=["32,64,4,64,8"],
                        help="Triton tiles: block_d,steps,warps,bwd_block_d,bwd_warps")
    parser.add_argument("--impls", nargs="+", default=["mamba_ssm", "cuda", "triton"],
                        choices=["mamba_ssm", "cuda", "triton"], help="kernels to check and time")
    parser.add_argument("--with-torch", action="store_true", help="also time the PyTorch scan (the last fallback)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    configs = [_config(c) for c in args.configs]
    scan_triton.CONFIG = configs[0]
    checks: list[dict] = []
    check(checks, *(int(v) for v in args.check_shape.split(",")), args.impls)
    report("scan kernels against the float32 reference (relative error)", checks,
           ["shape", "impl", "err_y", *(f"err_{k}" for k in NAMES)], None)
    rows: list[dict] = []
    for text in args.shapes:
        bench(rows, *(int(v) for v in text.split(",")), configs, args.with_torch, args.impls)
    report("selective scan kernels, bf16", checks + rows, ["shape", "impl", "config", "fwd_ms", "fwd_bwd_ms", "error"],
           args.out)


if __name__ == "__main__":
    main()
