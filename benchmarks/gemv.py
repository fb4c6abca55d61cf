"""Batch-1 projections of the decode step: ``F.linear`` (cuBLAS) against ``linear_decode`` (the Triton
matrix-vector kernel) at Mamba-2.8B's shapes, in bf16, against the weight-read floor.

Each product is timed inside a CUDA graph of 100 calls, as the decode step replays it, and each call reads a
different copy of the weight (200 MB of copies in all), so that the weight comes from memory, not from the
50 MB L2 cache, as it does in a 64-layer model.

    python -m benchmarks.gemv --out benchmarks/results/gemv.json
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import torch.nn.functional as F

from benchmarks.common import report, time_cuda
from benchmarks.generation import copy_bandwidth
from vl_mamba.ops import linear_decode

SHAPES = {"in_proj": (10240, 2560), "x_proj": (192, 5120), "dt_proj": (5120, 160), "out_proj": (2560, 5120)}
CALLS = 100


def graph_us(call: Callable[[int], object], copies: int) -> float:
    """Median microseconds per call of ``call(i)`` over a replayed graph of CALLS calls (copy i % copies)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for i in range(3):
            call(i % copies)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(CALLS):
            call(i % copies)
    return time_cuda(graph.replay, warmup=1, repeats=7)["median_ms"] * 1e3 / CALLS


def measure(name: str, n: int, k: int, bandwidth: float) -> dict:
    copies = max(1, int(200e6 // (n * k * 2)))
    weights = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) for _ in range(copies)]
    x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
    floor = n * k * 2 / bandwidth * 1e6
    cublas = graph_us(lambda i: F.linear(x, weights[i]), copies)
    triton = graph_us(lambda i: linear_decode(x, weights[i]), copies)
    return {"projection": name, "shape": f"{n}x{k}", "floor_us": floor, "cublas_us": cublas, "triton_us": triton,
            "cublas_of_bw": floor / cublas, "triton_of_bw": floor / triton, "speedup": cublas / triton}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/gemv.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    bandwidth = copy_bandwidth()
    rows = []
    for name, (n, k) in SHAPES.items():
        rows.append(measure(name, n, k, bandwidth))
    report(f"batch-1 projections, bf16 (copy bandwidth {bandwidth / 1e12:.2f} TB/s)", rows,
           ["projection", "shape", "floor_us", "cublas_us", "triton_us", "cublas_of_bw", "triton_of_bw", "speedup"],
           args.out)


if __name__ == "__main__":
    main()
