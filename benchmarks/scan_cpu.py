"""CPU selective scan: ``selective_scan_cpu`` (the compiled kernel that ``selective_scan_fn`` runs on the CPU) and
``selective_scan_torch`` (the tiled PyTorch implementation, its fallback) against the sequential specification
``selective_scan_ref``, forward plus backward, float32.

A second baseline is timed for context: a loop written the way mamba_ssm's own ``selective_scan_ref`` is written
(``deltaA[:, :, i]`` indexed at every step and one einsum per step), so that figures quoted against "the
reference" elsewhere can be compared. It is far slower under autograd: the backward of each ``x[:, :, i]``
fills a zero tensor of the whole (batch, dim, L, N) size, twice per step (most of its time, by profile), so it
is timed with fewer repeats (``--baseline-repeats``) and no warm-up.

Before timing, the outputs and every gradient of each implementation are compared with ``selective_scan_ref``
(norm-wise relative error, float32; and float64 on a smaller problem). Timings are medians of repeats that
cycle through the implementations in turn, so that load from other processes hits each alike; the load average
is recorded with them.

    python -m benchmarks.scan_cpu --out benchmarks/results/scan_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from benchmarks.common import rel_err, report
from vl_mamba.ops import selective_scan_ref, selective_scan_torch
from vl_mamba.ops.scan_cpu import kernel_available, selective_scan_cpu

SHAPES = [(2, 256, 1024, 16), (64, 256, 72, 16)]  # (batch, dim, L, N)
NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def selective_scan_mamba_style(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
) -> Tensor:
    """The second baseline: the loop shaped as mamba_ssm's ``selective_scan_ref`` (B, C: (batch, N, L))."""
    dtype_in = u.dtype
    u, delta = u.float(), delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias[..., None].float()
    if delta_softplus:
        delta = F.softplus(delta)
    state = A.new_zeros(u.shape[0], A.shape[0], A.shape[1])
    delta_A = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    delta_B_u = torch.einsum("bdl,bnl,bdl->bdln", delta, B.float(), u)
    ys = []
    for i in range(u.shape[2]):
        state = delta_A[:, :, i] * state + delta_B_u[:, :, i]
        ys.append(torch.einsum("bdn,bn->bd", state, C[:, :, i].float()))
    out = torch.stack(ys, dim=2)
    if D is not None:
        out = out + u * D[:, None]
    if z is not None:
        out = out * F.silu(z)
    return out.to(dtype_in)


BASELINE = "mamba_ssm-style loop"
IMPLEMENTATIONS: dict[str, Callable[..., Tensor]] = {
    **({"selective_scan_cpu": selective_scan_cpu} if kernel_available() else {}),
    "selective_scan_torch": selective_scan_torch,
    "selective_scan_ref": selective_scan_ref,
    BASELINE: selective_scan_mamba_style,
}


def make_inputs(batch: int, dim: int, length: int, n: int, dtype: torch.dtype, seed: int = 0) -> list[Tensor]:
    """A Mamba layer's scan inputs: softplus time steps around 0.1-1, A = -(1..N) perturbed, with D, z, bias."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, dim, length, generator=gen)
    delta = torch.randn(batch, dim, length, generator=gen) * 0.5 - 1.0
    A = -torch.arange(1.0, n + 1).repeat(dim, 1) * (0.5 + torch.rand(dim, n, generator=gen))
    B = torch.randn(batch, n, length, generator=gen)
    C = torch.randn(batch, n, length, generator=gen)
    D = torch.randn(dim, generator=gen)
    z = torch.randn(batch, dim, length, generator=gen)
    bias = torch.rand(dim, generator=gen) * 0.5
    return [t.to(dtype).requires_grad_() for t in (u, delta, A, B, C, D, z, bias)]


def forward_backward(fn: Callable[..., Tensor], inputs: list[Tensor], weight: Tensor) -> list[Tensor]:
    """y and the gradient of ``sum(weight * y)`` with respect to every input."""
    for t in inputs:
        t.grad = None
    y = fn(*inputs, delta_softplus=True)
    (y * weight).sum().backward()
    return [y.detach()] + [t.grad for t in inputs]


def accuracy(batch: int, dim: int, length: int, n: int, dtype: torch.dtype, names: list[str]) -> dict[str, Any]:
    """Worst relative error over y and the eight gradients, per implementation, against the reference."""
    inputs = make_inputs(batch, dim, length, n, dtype)
    weight = torch.randn(batch, dim, length, generator=torch.Generator().manual_seed(1), dtype=dtype)
    expected = forward_backward(selective_scan_ref, inputs, weight)
    errors: dict[str, Any] = {}
    for name in names:
        got = forward_backward(IMPLEMENTATIONS[name], inputs, weight)
        per_tensor = {label: rel_err(g, e) for label, g, e in zip(("y",) + NAMES, got, expected)}
        errors[name] = max(per_tensor.values())
        errors[f"{name} (per tensor)"] = per_tensor
    return errors


def timings(
    batch: int, dim: int, length: int, n: int, repeats: int, baseline_repeats: int
) -> dict[str, dict[str, float]]:
    """Forward + backward times in ms, repeats interleaved; one warm-up each except the (slow) second baseline."""
    inputs = make_inputs(batch, dim, length, n, torch.float32)
    weight = torch.randn(batch, dim, length)
    samples: dict[str, list[float]] = {name: [] for name in IMPLEMENTATIONS}
    for name, fn in IMPLEMENTATIONS.items():
        if name != BASELINE:
            forward_backward(fn, inputs, weight)
    for i in range(repeats):
        for name, fn in IMPLEMENTATIONS.items():
            if name == BASELINE and i >= baseline_repeats:
                continue
            start = time.perf_counter()
            forward_backward(fn, inputs, weight)
            samples[name].append((time.perf_counter() - start) * 1e3)
    return {
        name: {"median_ms": statistics.median(t), "min_ms": min(t), "max_ms": max(t), "repeats": len(t)}
        for name, t in samples.items()
        if t
    }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/results/scan_cpu.json", help="JSON results file")
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats of each implementation")
    parser.add_argument("--baseline-repeats", type=int, default=2,
                        help="timed repeats of the mamba_ssm-style loop (a minute each at L=1024; 0: not timed)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--shape", action="append", default=None, metavar="B,D,L,N",
                        help="problem size, repeatable (default: 2,256,1024,16 and 64,256,72,16)")
    args = parser.parse_args(argv)
    shapes = SHAPES if args.shape is None else [tuple(int(v) for v in s.split(",")) for s in args.shape]
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    rows, details = [], []
    for batch, dim, length, n in shapes:
        fast = [name for name in IMPLEMENTATIONS if name not in ("selective_scan_ref", BASELINE)]
        errors32 = accuracy(batch, dim, length, n, torch.float32, fast + [BASELINE])
        # float64 on a quarter of the sequence at most; the mamba_ssm-style loop computes in float32 only.
        errors64 = accuracy(batch, dim, min(length, 256), n, torch.float64, fast)
        load_before = os.getloadavg()[0]
        times = timings(batch, dim, length, n, args.repeats, args.baseline_repeats)
        load_after = os.getloadavg()[0]
        ref = times["selective_scan_ref"]["median_ms"]
        shape = f"B={batch} D={dim} L={length} N={n}"
        for name, t in times.items():
            rows.append({
                "shape": shape,
                "implementation": name,
                "median ms": t["median_ms"],
                "min ms": t["min_ms"],
                "max ms": t["max_ms"],
                "ref / this (median)": ref / t["median_ms"],
                "max rel err fp32": errors32.get(name, "-"),
                "max rel err fp64": errors64.get(name, "-"),
            })
        details.append({
            "shape": [batch, dim, length, n],
            "fp64_shape": [batch, dim, min(length, 256), n],
            "timings_ms": times,
            "errors_fp32": errors32,
            "errors_fp64": errors64,
            "load_average_1min": [load_before, load_after],
        })

    result = {
        "title": "CPU selective scan, float32 forward + backward",
        "machine": {
            "cpu": cpu_model(),
            "nproc": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "cpu_kernel": kernel_available(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d"),
        },
        "repeats": args.repeats,
        "rows": rows,
        "details": details,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    columns = ["shape", "implementation", "median ms", "min ms", "ref / this (median)", "max rel err fp32",
               "max rel err fp64"]
    report(result["title"], rows, columns, out=None)
    return result


if __name__ == "__main__":
    main()
