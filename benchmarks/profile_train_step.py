"""Where a training step's GPU time goes: the kernels of one step of ``benchmarks.train_step``'s VL-Mamba model,
summed by kind (matrix products, the scan's forward and backward, the conv, norms, the optimizer, copies, the rest),
with the step's wall time beside them; once with mamba_ssm's fused layer and once with this package's own CUDA scan
(``VL_MAMBA_CUDA_SCAN=1``, ``mamba_inner_cuda``), both timed in the same process.

    python -m benchmarks.profile_train_step --seq 2048 --batch 4 --out benchmarks/results/profile_train_step.json

``--checkpoint-lvl 1 0`` also runs each layer body keeping the conv's output and delta for the backward (mamba_ssm's
``checkpoint_lvl=0``) instead of recomputing them.
"""

from __future__ import annotations

import argparse
import gc
import itertools
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


# A user annotation on the device timeline, as "Optimizer.step#AdamW.step" (kernel names have spaces or brackets).
ANNOTATION = re.compile(r"[\w.]+#[\w.]+")


def kind_of(name: str) -> str:
    """The kind of a kernel by its name; "other" where none of ``KINDS`` matches."""
    for kind, pattern in KINDS:
        if re.search(pattern, name, re.IGNORECASE):
            return kind
    return "other"


def device_events(prof: torch.profiler.profile) -> list:
    """The record's kernels, copies and fills on the GPU. User annotations on the device timeline
    (``Optimizer.step#...``) span kernels listed already and are left out."""
    return [e for e in prof.events()
            if e.device_type == torch.autograd.DeviceType.CUDA and not ANNOTATION.fullmatch(e.name)]


def kernel_times(prof: torch.profiler.profile) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Milliseconds of GPU time by kind, and [milliseconds, calls] by kernel name (``device_events``)."""
    by_kind: dict[str, float] = defaultdict(float)
    by_name: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for event in device_events(prof):
        ms = (event.time_range.end - event.time_range.start) / 1e3
        by_kind[kind_of(event.name)] += ms
        by_name[event.name][0] += ms
        by_name[event.name][1] += 1
    return dict(by_kind), dict(by_name)


def idle_gaps(prof: torch.profiler.profile, top: int) -> tuple[float, list[dict]]:
    """The GPU's idle time between the first and the last kernel of the record (milliseconds), and the longest
    idle gaps with the kernels on either side: where the host did not keep ahead of the GPU, or waited for it."""
    spans = sorted((e.time_range.start, e.time_range.end, e.name) for e in device_events(prof))
    gaps, busy_until, last = [], None, ""
    for start, end, name in spans:
        if busy_until is not None and start > busy_until:
            gaps.append({"gap_ms": (start - busy_until) / 1e3, "after": last[:70], "before": name[:70]})
        if busy_until is None or end > busy_until:
            busy_until, last = end, name
    return sum(g["gap_ms"] for g in gaps), sorted(gaps, key=lambda g: -g["gap_ms"])[:top]


def copy_sites(prof: torch.profiler.profile, top: int) -> list[dict]:
    """The host calls that copy tensors (copy_, clone, contiguous, to), by GPU time, with their input shapes and
    the innermost Python frames that made them (a record made with ``stacks``)."""
    rows = []
    for e in prof.key_averages(group_by_input_shape=True, group_by_stack_n=4):
        if e.key in ("aten::copy_", "aten::clone", "aten::contiguous", "aten::_to_copy", "aten::reshape"):
            ms = getattr(e, "device_time_total", getattr(e, "cuda_time_total", 0.0)) / 1e3
            if ms > 0:
                rows.append({"op": e.key, "ms": ms, "calls": e.count, "shapes": str(e.input_shapes)[:60],
                             "stack": " < ".join(f.split("/")[-1] for f in e.stack[1:5])[:150]})
    return sorted(rows, key=lambda r: -r["ms"])[:top]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--stage", default="finetune", choices=["finetune", "align"])
    parser.add_argument("--scans", nargs="+", default=["mamba_ssm", "own"], choices=["mamba_ssm", "own"])
    parser.add_argument("--checkpoint-lvl", type=int, nargs="+", default=[1], choices=[0, 1],
                        help="the layers' checkpoint_lvl (1 recomputes the conv's output and delta in the backward, "
                             "0 keeps them); each layer body runs with each")
    parser.add_argument("--top", type=int, default=12, help="kernels listed by name, per run")
    parser.add_argument("--stacks", action="store_true",
                        help="also list the host calls that copy tensors, with their Python stacks (the host runs "
                             "slower while it records them, so that record's idle gaps are longer than a plain step's)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    model = build("mamba", False)
    apply_stage(model, args.stage)
    data = make_batch(args.batch, args.seq, model.num_visual_tokens)
    text = args.seq - model.num_visual_tokens
    flops = step_flops(model, args.batch, args.seq, text - text // 2, args.stage)

    rows, kernels, gaps, copies = [], [], [], []
    for scan, lvl in itertools.product(args.scans, args.checkpoint_lvl):
        os.environ["VL_MAMBA_CUDA_SCAN"] = "1" if scan == "own" else "0"
        for layer in model.decoder.backbone.layers:
            layer.mixer.checkpoint_lvl = lvl
        model.zero_grad(set_to_none=True)
        train_step = optimizer = None  # the last run's moments freed before this run's are made
        gc.collect()
        torch.cuda.empty_cache()
        optimizer = torch.optim.AdamW(param_groups(model.named_parameters(), 1e-5, 0.0), lr=1e-5, fused=True)
        train_step = make_step(model, optimizer, data)
        torch.cuda.reset_peak_memory_stats()
        tag = {"scan": scan, "checkpoint_lvl": lvl}
        try:
            timing = time_cuda(train_step, warmup=2, repeats=5)
            prof = profile_cuda(train_step, warmup=1, stacks=args.stacks)
        except torch.OutOfMemoryError:
            rows.append({**tag, "step_ms": "OOM"})
            print(rows[-1], flush=True)
            continue
        by_kind, by_name = kernel_times(prof)
        idle_ms, longest = idle_gaps(prof, args.top)
        gaps += [{**tag, **g} for g in longest]
        if args.stacks:
            copies += [{**tag, **c} for c in copy_sites(prof, args.top)]
        step_ms = timing["median_ms"]
        row = {**tag, "seq": args.seq, "batch": args.batch, "stage": args.stage, "step_ms": step_ms,
               "MFU_%": 100 * flops / (step_ms / 1e3) / (H100_BF16_DENSE_TFLOPS * 1e12), "peak_GiB": peak_gib(),
               "kernels_ms": sum(by_kind.values()), "idle_ms": idle_ms, "device_events": len(device_events(prof))}
        row.update({f"{kind} ms": ms for kind, ms in sorted(by_kind.items(), key=lambda kv: -kv[1])})
        rows.append(row)
        top = sorted(by_name.items(), key=lambda kv: -kv[1][0])[: args.top]
        kernels += [{**tag, "kernel": name[:120], "kind": kind_of(name), "ms": ms, "calls": calls}
                    for name, (ms, calls) in top]
        print(row, flush=True)
    title = f"one training step by kernel kind ({args.stage}, {args.batch} x {args.seq} tokens, bf16 autocast)"
    report(title, rows + kernels + gaps + copies, [], args.out, quiet=True)
    report("the step's largest kernels", kernels, ["scan", "kind", "ms", "calls", "kernel"], None)
    report("the GPU's longest idle gaps in the step", gaps, ["scan", "gap_ms", "after", "before"], None)
    if copies:
        report("host calls that copy tensors", copies, ["scan", "op", "ms", "calls", "shapes", "stack"], None)
    kinds = [k for k, _ in KINDS] + ["other"]
    columns = ["scan", "checkpoint_lvl", "step_ms", "MFU_%", "peak_GiB", "kernels_ms", "idle_ms",
               "device_events"]
    report(title, rows, [*columns, *(f"{k} ms" for k in kinds)], None)


if __name__ == "__main__":
    main()
