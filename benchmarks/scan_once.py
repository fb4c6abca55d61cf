"""One forward and backward of this package's CUDA scan at one shape, after a warm-up: the target for Nsight
Compute (the kernels are ``scan_forward`` and ``scan_backward``).

    ncu --kernel-name regex:scan_ --launch-skip 2 --launch-count 2 --set full \\
        python -m benchmarks.scan_once --shape 4,5120,2048,16
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.scan_kernels import layer_inputs
from vl_mamba.ops import scan_cuda


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="4,5120,2048,16", help="b,d,L,N")
    args = parser.parse_args()
    b, d, length, n = (int(v) for v in args.shape.split(","))
    inputs = layer_inputs(b, d, length, n)
    grad = torch.randn(b, d, length, device="cuda", dtype=torch.bfloat16)
    for _ in range(2):
        torch.autograd.backward(scan_cuda.selective_scan_cuda(*inputs, delta_softplus=True), grad)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
