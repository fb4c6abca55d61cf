"""The middle of the batch-1 decode step (conv update, x_proj, dt_proj, state update) at Mamba-2.8B's shapes, bf16:
the four operations one by one (causal-conv1d's update kernel, two ``linear_decode`` products, mamba_ssm's state
update) against ``ssm_step``'s two fused Triton kernels, for several block sizes and warp counts of the latter.

Timed as the decode step replays it: a CUDA graph of 64 calls, one per layer, each with its own weights and states
(4 MB a layer, 250 MB in all, so they come from memory, not from the L2 cache).

    python -m benchmarks.decode_ssm --out benchmarks/results/decode_ssm.json
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.common import report
from benchmarks.gemv import graph_us
from vl_mamba.ops import decode_ssm as decode_ssm_module

D_INNER, D_STATE, DT_RANK, D_CONV = 5120, 16, 160, 4
LAYERS = 64


def layer(device: str = "cuda", dtype: torch.dtype = torch.bfloat16) -> tuple:
    """``ssm_step``'s arguments for one layer, with random weights and states."""
    e, n, r, w = D_INNER, D_STATE, DT_RANK, D_CONV
    return (
        torch.randn(1, e, device=device, dtype=dtype), torch.randn(1, e, device=device, dtype=dtype),
        torch.randn(1, e, w, device=device, dtype=dtype), torch.zeros(1, e, n, device=device),
        torch.randn(e, w, device=device, dtype=dtype) * 0.5, torch.randn(e, device=device, dtype=dtype),
        torch.randn(r + 2 * n, e, device=device, dtype=dtype) * e**-0.5,
        torch.randn(e, r, device=device, dtype=dtype) * r**-0.5,
        -torch.rand(e, n, device=device) * 4, torch.randn(e, device=device), torch.randn(e, device=device),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+",
                        default=["256,64,64,8", "256,64,32,8", "256,64,128,8", "256,32,64,8", "256,64,64,4",
                                 "512,64,64,8", "128,64,64,8", "128,64,64,4"],
                        help="BLOCK_C,BLOCK_R,BLOCK_D,WARPS of the fused kernels to time")
    parser.add_argument("--out", default="benchmarks/results/decode_ssm.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    layers = [layer() for _ in range(LAYERS)]
    apart = graph_us(lambda i: decode_ssm_module._ssm_step_apart(*layers[i]), LAYERS)
    rows = [{"path": "one by one (4 kernels)", "us_per_layer": apart}]
    names = ("BLOCK_C", "BLOCK_R", "BLOCK_D", "WARPS")
    defaults = {name: getattr(decode_ssm_module, name) for name in names}
    for config in args.configs:
        values = dict(zip(names, (int(v) for v in config.split(",")), strict=True))
        for name, value in values.items():
            setattr(decode_ssm_module, name, value)
        us = graph_us(lambda i: decode_ssm_module.ssm_step_fused(*layers[i]), LAYERS)
        rows.append({"path": "fused, " + ", ".join(f"{k} {v}" for k, v in values.items()), "us_per_layer": us})
    for name, value in defaults.items():
        setattr(decode_ssm_module, name, value)
    for row in rows:
        row["speedup"] = rows[0]["us_per_layer"] / row["us_per_layer"]
    report("decode step between in_proj and out_proj, batch 1, bf16, Mamba-2.8B shapes", rows,
           ["path", "us_per_layer", "speedup"], args.out)


if __name__ == "__main__":
    main()
