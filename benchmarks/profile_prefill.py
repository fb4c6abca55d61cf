"""Where a batch prefill's time goes: a torch.profiler table of one ``generate_tokens`` call with a single new
token (prefill + first token) at the Mamba-2.8B shape, random bf16 weights.

    python -m benchmarks.profile_prefill --batch 32 --prompt 761
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.common import profile_cuda
from benchmarks.generation import build_mamba
from vl_mamba.generation import GenerationConfig, generate_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--prompt", type=int, default=761)
    parser.add_argument("--rows", type=int, default=25)
    args = parser.parse_args()
    model = build_mamba()
    text = args.prompt - model.num_visual_tokens
    ids = torch.randint(2, 50000, (args.batch, text))
    mask = torch.ones_like(ids, dtype=torch.bool)
    pixels = torch.randn(args.batch, 3, 384, 384)
    has_image = torch.ones(args.batch, dtype=torch.bool)
    config = GenerationConfig(max_new_tokens=1)

    def run() -> None:
        generate_tokens(model, ids, mask, pixels, has_image, config, (), 0, 50277)

    prof = profile_cuda(run, warmup=2)
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=args.rows, max_name_column_width=60))
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=12, max_name_column_width=60))


if __name__ == "__main__":
    main()
