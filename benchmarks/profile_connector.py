"""Where the VSS connector's time goes: a torch.profiler table of the CUDA kernels of one forward + backward
of VSS-L2 at the paper's shapes (bf16 autocast).

    python -m benchmarks.profile_connector --scan bi --batch 16
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.common import profile_cuda
from vl_mamba.connectors import VSSL2Connector


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scan", default="bi")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rows", type=int, default=25)
    args = parser.parse_args()
    connector = VSSL2Connector(1152, 2560, scan=args.scan).cuda()
    features = torch.randn(args.batch, 729, 1152, device="cuda")
    grad = torch.randn(args.batch, 729, 2560, device="cuda", dtype=torch.bfloat16)

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = connector(features, (27, 27))
        out.backward(grad)

    prof = profile_cuda(step, warmup=3)
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=args.rows, max_name_column_width=70))


if __name__ == "__main__":
    main()
