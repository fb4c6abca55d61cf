"""Whether the host keeps ahead of the GPU in a training step: for each phase of ``benchmarks.train_step``'s
VL-Mamba step (encoder and connector, splicing, the LM's forward in groups of layers, the loss, the backward, the
optimizer), the host's time to issue it and the GPU's time to run it, and the calls that wait for the GPU.

Each phase is issued while the GPU is held busy by a long sleep kernel, so the host never waits on the GPU's work
unless the phase itself synchronises: its host time is its issue cost alone, and its GPU time (CUDA events around
it, after the sleep) is its kernels back to back with no idle between them. A phase whose host time exceeds its GPU
time leaves the GPU idle in a real step wherever the host has no lead. Synchronising calls are caught by
``torch.cuda.set_sync_debug_mode`` and listed with the line that made them.

    python -m benchmarks.host_overhead --seq 2048 --batch 4 --out benchmarks/results/host_overhead.json
"""

from __future__ import annotations

import argparse
import os
import warnings
from collections import Counter

import torch

from benchmarks.common import held_call, report, sleep_cycles
from benchmarks.train_step import build, make_batch
from vl_mamba.training.optim import param_groups
from vl_mamba.training.stages import apply_stage


class Phases:
    """Runs named phases with the GPU held by a sleep, recording host ms, GPU ms and synchronising call sites."""

    def __init__(self, hold_ms: float):
        self.cycles = sleep_cycles(hold_ms)
        self.hold_ms = hold_ms
        self.rows: list[dict] = []
        self.syncs: Counter = Counter()

    def run(self, name: str, fn):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result, gpu_ms, host_ms = held_call(lambda: _warning_on_syncs(fn), self.cycles)
        sites = [str(w.message).splitlines()[0][:60] + " @ " + _site(w) for w in caught
                 if "called a synchronizing CUDA operation" in str(w.message)]
        for site in sites:
            self.syncs[(name, site)] += 1
        self.rows.append({"phase": name, "host_ms": host_ms, "gpu_ms": gpu_ms, "syncs": len(sites),
                          "host_waited": host_ms > 0.8 * self.hold_ms})
        return result


def _warning_on_syncs(fn):
    torch.cuda.set_sync_debug_mode("warn")
    try:
        return fn()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def _site(w: warnings.WarningMessage) -> str:
    return f"{os.path.basename(w.filename)}:{w.lineno}"


def measure_step(model, optimizer, data: dict, phases: Phases, group: int) -> None:
    """One training step of ``benchmarks.train_step`` (bf16 autocast, fused AdamW), cut into phases."""
    decoder = model.decoder
    layers = list(decoder.backbone.layers)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        visual = phases.run("encoder + connector", lambda: model.encode_images(data["pixel_values"]))
        model.encode_images = lambda _pixels: visual  # the splice alone in the next phase
        try:
            inputs = phases.run("splice (build_inputs)", lambda: model.build_inputs(
                data["input_ids"], data["pixel_values"], data["labels"]))
        finally:
            del model.encode_images
        hidden, residual = inputs.embeds, None
        for first in range(0, len(layers), group):

            def forward(hidden=hidden, residual=residual, chunk=layers[first:first + group]):
                for layer in chunk:
                    hidden, residual = layer(hidden, residual)
                return hidden, residual

            hidden, residual = phases.run(f"LM layers {first}-{min(first + group, len(layers)) - 1}", forward)
        hidden = phases.run("norm_f", lambda: decoder.backbone.norm_f(hidden, residual, True)[0])

        loss = phases.run("loss", lambda: model._loss(hidden, inputs.labels, inputs.num_labels))
    phases.run("backward", loss.backward)
    phases.run("optimizer step", lambda: (optimizer.step(), optimizer.zero_grad(set_to_none=True)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--stage", default="finetune", choices=["finetune", "align"])
    parser.add_argument("--group", type=int, default=16, help="LM layers per forward phase")
    parser.add_argument("--hold-ms", type=float, default=2000.0, help="the sleep that holds the GPU per phase")
    parser.add_argument("--warmup", type=int, default=2, help="steps before the one reported")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    model = build("mamba", False)
    apply_stage(model, args.stage)
    optimizer = torch.optim.AdamW(param_groups(model.named_parameters(), 1e-5, 0.0), lr=1e-5, fused=True)
    data = make_batch(args.batch, args.seq, model.num_visual_tokens)
    for _ in range(args.warmup + 1):
        phases = Phases(args.hold_ms)
        measure_step(model, optimizer, data, phases, args.group)
    rows = phases.rows
    total = {"phase": "all", "host_ms": sum(r["host_ms"] for r in rows), "gpu_ms": sum(r["gpu_ms"] for r in rows),
             "syncs": sum(r["syncs"] for r in rows), "host_waited": any(r["host_waited"] for r in rows)}
    sites = [{"phase": p, "site": s, "count": n} for (p, s), n in phases.syncs.most_common()]
    title = f"host and GPU time per phase of a training step ({args.stage}, {args.batch} x {args.seq}, bf16)"
    columns = ["phase", "host_ms", "gpu_ms", "syncs", "host_waited"]
    report(title, [*rows, total, *sites], columns, args.out, quiet=True)
    report("synchronising calls", sites, ["phase", "count", "site"], None)
    report(title, [*rows, total], columns, None)


if __name__ == "__main__":
    main()
