"""Where a training step's GPU time goes: the kernels of one step of ``benchmarks.train_step``'s VL-Mamba model,
summed by kind (matrix products, the scan's forward and backward, the conv, norms, the optimizer, copies, the rest),
with the step's wall time beside them; once with mamba_ssm's fused layer and once with this package's own CUDA scan
(``VL_MAMBA_CUDA_SCAN=1``, ``mamba_inner_cuda``), both timed in the same process.

    python -m benchmarks.profile_train_step --seq 2048 --batch 4 --out benchmarks/results/profile_train_step.json
"""

from __future__ import annotations

import argparse
import os
import re
from collections import defaultdict

import torch

from benchmarks.common import peak_gib, profile_cuda, report, time_cuda
from benchmarks.train_step import H100_BF16_DENSE_TFLOPS, build, make_batch, make_step, step_flops
from vl_mamba.training.optim import param_groups
from vl_mamba.training.stages import apply_stage

# First match wins; the names are the kernels' own (cuBLAS, mamba_ssm, causal-conv1d, this package, PyTorch).
KINDS = [
    ("scan backward", r"selective_scan_bwd|scan_backward"),
    ("scan forward", r"selective_scan_fwd|scan_forward"),
    ("conv", r"causal_conv1d"),
    ("matrix products", r"gemm|cutlass|xmma|nvjet|cublas|sm\d+_.*_tn|splitk|Kernel2"),
    ("optimizer", r"adam|multi_tensor"),
    ("norms", r"rms|norm"),
    ("attention", r"flash|fmha|attention"),
    ("reductions", r"reduce|sum_kernel"),
    ("copies and casts", r"copy|cat|convert|transpose|CatArray"),
    ("elementwise", r"elementwise|vectorized"),
]


def kind_of(name: str) -> str:
    """The kind of a kernel by its name; "other" where none of ``KINDS`` matches."""
    for kind, pattern in KINDS:
        if re.search(pattern, name, re.IGNORECASE):
            return kind
    return "other"


def kernel_times(prof: torch.profiler.profile) -> tuple[dict[str, float], dict[str, float]]:
    """Milliseconds of GPU time by kind and by kernel name, from the profiler's device events."""
    by_kind: dict[str, float] = defaultdict(float)
    by_name: dict[str, float] = defaultdict(float)
    for event in prof.events():
        if event.device_type != torch.autograd.DeviceType.CUDA:
            continue
        ms = (event.time_range.end - event.time_range.start) / 1e3
        by_kind[kind_of(event.name)] += ms
        by_name[event.name] += ms
    return dict(by_kind), dict(by_name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--stage", default="finetune", choices=["finetune", "align"])
    parser.add_argument("--scans", nargs="+", default=["mamba_ssm", "own"], choices=["mamba_ssm", "own"])
    parser.add_argument("--top", type=int, default=12, help="kernels listed by name, per run")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    model = build("mamba", False)
    apply_stage(model, args.stage)
    optimizer = torch.optim.AdamW(param_groups(model.named_parameters(), 1e-5, 0.0), lr=1e-5, fused=True)
    train_step = make_step(model, optimizer, make_batch(args.batch, args.seq, model.num_visual_tokens))
    text = args.seq - model.num_visual_tokens
    flops = step_flops(model, args.batch, args.seq, text - text // 2, args.stage)

    rows, kernels = [], []
    for scan in args.scans:
        os.environ["VL_MAMBA_CUDA_SCAN"] = "1" if scan == "own" else "0"
        torch.cuda.reset_peak_memory_stats()
        timing = time_cuda(train_step, warmup=2, repeats=5)
        by_kind, by_name = kernel_times(profile_cuda(train_step, warmup=1))
        step_ms = timing["median_ms"]
        row = {"scan": scan, "seq": args.seq, "batch": args.batch, "stage": args.stage, "step_ms": step_ms,
               "MFU_%": 100 * flops / (step_ms / 1e3) / (H100_BF16_DENSE_TFLOPS * 1e12), "peak_GiB": peak_gib(),
               "kernels_ms": sum(by_kind.values())}
        row.update({f"{kind} ms": ms for kind, ms in sorted(by_kind.items(), key=lambda kv: -kv[1])})
        rows.append(row)
        top = sorted(by_name.items(), key=lambda kv: -kv[1])[: args.top]
        kernels += [{"scan": scan, "kernel": name[:90], "kind": kind_of(name), "ms": ms} for name, ms in top]
        print(row, flush=True)
    title = f"one training step by kernel kind ({args.stage}, {args.batch} x {args.seq} tokens, bf16 autocast)"
    report(title, rows + kernels, [], args.out, quiet=True)
    report("the step's largest kernels", kernels, ["scan", "kind", "ms", "kernel"], None)
    kinds = [k for k, _ in KINDS] + ["other"]
    report(title, rows, ["scan", "step_ms", "MFU_%", "peak_GiB", "kernels_ms", *(f"{k} ms" for k in kinds)], None)


if __name__ == "__main__":
    main()
