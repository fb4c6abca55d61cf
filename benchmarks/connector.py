"""Suite 2, the VSS connector at the paper's shapes: SigLIP-384 features (27 x 27 patches, width 1152)
into a 2560-wide LM, forward + backward under bf16 autocast, for the scan orders uni / bi / cross against
the MLP connector, and the share of one stage-2 step (from ``benchmarks.train_step`` results when given).

    python -m benchmarks.connector --batch 16 --out benchmarks/results/connector.json
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.common import peak_gib, report, time_cuda
from vl_mamba.connectors import MLPConnector, VSSL2Connector, VSSMLPConnector


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--grid", type=int, default=27)
    parser.add_argument("--in-dim", type=int, default=1152)
    parser.add_argument("--out-dim", type=int, default=2560)
    parser.add_argument("--out", default="benchmarks/results/connector.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    grid = (args.grid, args.grid)
    features = torch.randn(args.batch, args.grid**2, args.in_dim, device="cuda")
    variants = [("MLP", lambda: MLPConnector(args.in_dim, args.out_dim))]
    for scan in ("uni", "bi", "cross"):
        variants.append((f"VSS-L2 {scan}", lambda s=scan: VSSL2Connector(args.in_dim, args.out_dim, scan=s)))
        variants.append((f"VSS-MLP {scan}", lambda s=scan: VSSMLPConnector(args.in_dim, args.out_dim, scan=s)))
    rows = []
    for name, build in variants:
        connector = build().cuda()
        grad = torch.randn(args.batch, args.grid**2, args.out_dim, device="cuda", dtype=torch.bfloat16)

        def fwd_bwd(connector=connector, grad=grad):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = connector(features, grid)
            out.backward(grad)

        def fwd(connector=connector):
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
                connector(features, grid)

        torch.cuda.reset_peak_memory_stats()
        t_both = time_cuda(fwd_bwd)
        t_fwd = time_cuda(fwd)
        params = sum(p.numel() for p in connector.parameters())
        rows.append({"connector": name, "params_M": params / 1e6, "fwd_ms": t_fwd["median_ms"],
                     "fwd_bwd_ms": t_both["median_ms"], "peak_GiB": peak_gib(), "batch": args.batch})
        del connector
        torch.cuda.empty_cache()
    report(f"connectors, batch {args.batch}, {args.grid}x{args.grid} patches, {args.in_dim}->{args.out_dim}, bf16",
           rows, ["connector", "params_M", "fwd_ms", "fwd_bwd_ms", "peak_GiB"], args.out)


if __name__ == "__main__":
    main()
