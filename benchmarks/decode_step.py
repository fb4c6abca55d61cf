"""The batch-1 decode step of the 2.8B Mamba decoder (random bf16 weights), replayed from its CUDA graph, with the
decode-step kernels switched on one after another and then launched with PDL, against the weight-read floor.

Each variant captures its own graph; rounds cycle through the variants so that drifts of the card's clocks hit
each alike, and each round times 200 replays with CUDA events. The floor is the decoder's bytes of weights over
the copy bandwidth measured in the same run.

    python -m benchmarks.decode_step --out benchmarks/results/decode_step.json
"""

from __future__ import annotations

import argparse
import statistics

import torch

from benchmarks.common import report, time_cuda
from benchmarks.generation import copy_bandwidth
from vl_mamba.decoders import MambaDecoder
from vl_mamba.generation import _decode_graph
from vl_mamba.ops import decode_ssm, gemv, pdl

REPLAYS = 200


def _off():
    return None


KERNELS = (gemv._kernel, gemv._norm_kernel, decode_ssm._kernels)
VARIANTS = {  # the three kernel switches, and programmatic dependent launch
    "cuBLAS products; norm, conv, x_proj, dt_proj, state update apart": ((_off, _off, _off), False),
    "Triton products (linear_decode); the rest apart": ((KERNELS[0], _off, _off), False),
    "+ conv, x_proj, dt_proj, state update fused (ssm_step)": ((KERNELS[0], _off, KERNELS[2]), False),
    "+ norm fused into in_proj (add_rms_norm_linear_decode)": (KERNELS, False),
    "+ programmatic dependent launch (vl_mamba.ops.pdl)": (KERNELS, True),
}


def step_ms(decoder: MambaDecoder, token: torch.Tensor) -> float:
    decoder.__dict__.pop("_decode_graphs", None)  # capture anew with the kernels now selected
    _, step = _decode_graph(decoder, 1, token.device, torch.bfloat16)

    def replays():
        for _ in range(REPLAYS):
            step(token)

    return time_cuda(replays, warmup=1, repeats=1)["median_ms"] / REPLAYS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default="benchmarks/results/decode_step.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    with torch.device("cuda"):
        decoder = MambaDecoder(d_model=2560, n_layer=64, vocab_size=50277).to(torch.bfloat16).eval()
    token = torch.tensor([11], device="cuda")
    weight_bytes = sum(p.numel() * p.element_size() for p in decoder.parameters())
    bandwidth = copy_bandwidth()
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    with torch.inference_mode():
        for _ in range(args.rounds):
            for name, (kernels, launch) in VARIANTS.items():
                gemv._kernel, gemv._norm_kernel, decode_ssm._kernels = kernels
                pdl.ENABLED = launch
                times[name].append(step_ms(decoder, token))
    gemv._kernel, gemv._norm_kernel, decode_ssm._kernels = KERNELS
    pdl.ENABLED = True
    bandwidth = max(bandwidth, copy_bandwidth())  # the higher of two readings: the stricter floor
    floor = weight_bytes / bandwidth * 1e3
    rows = [
        {"variant": name, "median_ms": statistics.median(ms), "min_ms": min(ms), "max_ms": max(ms),
         "x_floor": statistics.median(ms) / floor}
        for name, ms in times.items()
    ]
    report(f"batch-1 decode step, Mamba 2.8B, bf16, CUDA graph (floor {floor:.3f} ms: {weight_bytes / 1e9:.2f} GB "
           f"at {bandwidth / 1e12:.2f} TB/s)", rows, ["variant", "median_ms", "min_ms", "max_ms", "x_floor"], args.out)


if __name__ == "__main__":
    main()
