"""The frozen vision encoder's forward (no gradients, as in both training stages) with its weights kept in float32
under bf16 autocast, against bf16 weights (with and without autocast): the time of a call (CUDA events), the GPU's
time alone and the host's time to issue it (issued while a sleep kernel holds the GPU, as in
``benchmarks.common.held_call``), and the output's difference from the float32-weight run.

    python -m benchmarks.encoder_precision --batch 4 --out benchmarks/results/encoder_precision.json
"""

from __future__ import annotations

import argparse
import contextlib

import torch

from benchmarks.common import held_medians, rel_err, report, sleep_cycles, time_cuda
from vl_mamba.encoders import TimmViTEncoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_so400m_patch14_siglip_384")
    parser.add_argument("--batch", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    encoder = TimmViTEncoder(args.model, layer=-1).cuda().eval().requires_grad_(False)
    size = encoder.model.patch_embed.img_size
    cycles = sleep_cycles(500.0)
    rows = []
    for batch in args.batch:
        pixels = torch.randn(batch, 3, *size, device="cuda")
        reference = None
        for weights, autocast in (("float32", True), ("bfloat16", True), ("bfloat16", False)):
            encoder.to(getattr(torch, weights))
            x = pixels.to(torch.bfloat16) if not autocast else pixels
            context = torch.autocast("cuda", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()

            def forward(x=x, context=context):
                with torch.no_grad(), context:
                    return encoder(x)

            out = forward()
            reference = out if reference is None else reference
            torch.cuda.synchronize()
            call = time_cuda(forward, warmup=3, repeats=10)
            gpu, host = held_medians(forward, cycles)
            rows.append({"batch": batch, "weights": weights, "autocast": autocast, "call_ms": call["median_ms"],
                         "gpu_ms": gpu, "host_ms": host, "rel_err_vs_fp32_weights": rel_err(out, reference)})
            print(rows[-1], flush=True)
        encoder.float()
    report(f"frozen {args.model} forward by weight dtype", rows,
           ["batch", "weights", "autocast", "call_ms", "gpu_ms", "host_ms", "rel_err_vs_fp32_weights"], args.out)


if __name__ == "__main__":
    main()
