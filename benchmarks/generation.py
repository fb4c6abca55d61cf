"""Suite 4, generation: VL-Mamba (Mamba-2.8B shape, recurrent state, CUDA-graph decode) against a LLaVA-style
GPT-NeoX 2.8B run as users run it (transformers ``generate``, SDPA, dynamic KV cache) and at its best
(static KV cache, compiled). Random bf16 weights, greedy, a fixed number of new tokens (no early stop).

Reported per batch size and prompt length: time to first token (prefill + one token), decode tokens/s
(new tokens after the first, all sequences), end-to-end tokens/s, and the decode step against the
weight-read floor (bytes of weights over the measured copy bandwidth).

    python -m benchmarks.generation --out benchmarks/results/generation.json
"""

from __future__ import annotations

import argparse
import gc

import torch

from benchmarks.common import peak_gib, report, time_cuda
from vl_mamba.connectors import MLPConnector, VSSL2Connector
from vl_mamba.decoders import MambaDecoder
from vl_mamba.encoders import TimmViTEncoder
from vl_mamba.generation import GenerationConfig, generate_tokens
from vl_mamba.model import VLMamba

REPEATS = 3


def copy_bandwidth() -> float:
    """Device-to-device copy bandwidth in bytes/s, counting bytes read plus written."""
    x = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    ms = time_cuda(lambda: y.copy_(x), warmup=3, repeats=20)["median_ms"]
    return 2 * 2**30 / (ms / 1e3)


def build_mamba() -> VLMamba:
    with torch.device("cuda"):
        encoder = TimmViTEncoder("vit_so400m_patch14_siglip_384")
        decoder = MambaDecoder(d_model=2560, n_layer=64, vocab_size=50277)
        model = VLMamba(encoder, VSSL2Connector(scan="bi"), decoder, image_token_id=None)
    return model.to(torch.bfloat16).eval()


def mamba_run(model: VLMamba, batch: int, prompt: int, new: int, graph: bool = True) -> dict:
    try:
        return _mamba_run(model, batch, prompt, new, graph)
    except torch.OutOfMemoryError:
        gc.collect()
        torch.cuda.empty_cache()
        return {"model": "VL-Mamba 2.8B", "batch": batch, "prompt": prompt, "ttft_ms": "OOM"}


def _mamba_run(model: VLMamba, batch: int, prompt: int, new: int, graph: bool = True) -> dict:
    text = prompt - model.num_visual_tokens
    ids = torch.randint(2, 50000, (batch, text))
    mask = torch.ones_like(ids, dtype=torch.bool)
    pixels = torch.randn(batch, 3, 384, 384)
    has_image = torch.ones(batch, dtype=torch.bool)

    def run(n: int):
        config = GenerationConfig(max_new_tokens=n, cuda_graph=graph, check_every=10**9)
        return generate_tokens(model, ids, mask, pixels, has_image, config, (), 0, 50277)

    first = time_cuda(lambda: run(1), warmup=1, repeats=REPEATS)["median_ms"]
    torch.cuda.reset_peak_memory_stats()
    total = time_cuda(lambda: run(new), warmup=1, repeats=REPEATS)["median_ms"]
    return _row("VL-Mamba 2.8B" + ("" if graph else " (no graph)"), batch, prompt, new, first, total)


def build_neox():
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    config = GPTNeoXConfig(vocab_size=50304, hidden_size=2560, num_hidden_layers=32, num_attention_heads=32,
                           intermediate_size=10240, rotary_pct=0.25, max_position_embeddings=20480,
                           tie_word_embeddings=False, attn_implementation="sdpa")
    with torch.device("cuda"):
        lm = GPTNeoXForCausalLM(config).to(torch.bfloat16).eval()
        encoder = TimmViTEncoder("vit_so400m_patch14_siglip_384").to(torch.bfloat16).eval()
        connector = MLPConnector(1152, 2560).to(torch.bfloat16)
    return lm, encoder, connector


@torch.inference_mode()
def neox_run(parts, batch: int, prompt: int, new: int, static: bool) -> dict:
    lm, encoder, connector = parts
    text = prompt - encoder.num_patches
    ids = torch.randint(2, 50000, (batch, text), device="cuda")
    pixels = torch.randn(batch, 3, 384, 384, device="cuda", dtype=torch.bfloat16)
    extra = {"cache_implementation": "static"} if static else {}

    def run(n: int):
        visual = connector(encoder(pixels), encoder.grid)
        embeds = torch.cat([visual, lm.get_input_embeddings()(ids)], dim=1)
        return lm.generate(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], device="cuda"),
                           max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0, **extra)

    first = time_cuda(lambda: run(1), warmup=2 if static else 1, repeats=REPEATS)["median_ms"]
    torch.cuda.reset_peak_memory_stats()
    total = time_cuda(lambda: run(new), warmup=1, repeats=REPEATS)["median_ms"]
    return _row("GPT-NeoX 2.8B " + ("static+compile" if static else "dynamic"), batch, prompt, new, first, total)


def _row(name: str, batch: int, prompt: int, new: int, first_ms: float, total_ms: float) -> dict:
    decode_ms = max(total_ms - first_ms, 1e-6)
    return {"model": name, "batch": batch, "prompt": prompt, "new": new, "ttft_ms": first_ms,
            "decode_tok_s": batch * (new - 1) / (decode_ms / 1e3), "e2e_tok_s": batch * new / (total_ms / 1e3),
            "ms_per_step": decode_ms / (new - 1), "peak_GiB": peak_gib()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--prompts", type=int, nargs="+", default=[761, 4096, 16384])
    parser.add_argument("--new", type=int, default=256)
    parser.add_argument("--memory-batch", type=int, default=64)
    parser.add_argument("--models", nargs="+", default=["mamba", "neox", "neox-static"])
    parser.add_argument("--neox-batches", type=int, nargs="+", default=None, help="default: --batches")
    parser.add_argument("--neox-prompts", type=int, nargs="+", default=None, help="default: --prompts")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/generation.json")
    args = parser.parse_args()
    global REPEATS
    REPEATS = args.repeats
    torch.manual_seed(0)
    bandwidth = copy_bandwidth()
    rows = []
    if "mamba" in args.models:
        model = build_mamba()
        weight_bytes = sum(p.numel() * p.element_size() for p in model.decoder.parameters())
        floor_ms = weight_bytes / bandwidth * 1e3
        for prompt in args.prompts:
            for batch in args.batches:
                rows.append(mamba_run(model, batch, prompt, args.new) | {"floor_ms": floor_ms})
                print(rows[-1], flush=True)
                report("generation (partial)", rows, [], args.out, quiet=True)
        rows.append(mamba_run(model, args.memory_batch, args.prompts[0], args.new) | {"floor_ms": floor_ms})
        rows.append(mamba_run(model, 1, args.prompts[0], args.new, graph=False))
        del model
        gc.collect()
        torch.cuda.empty_cache()
    for static in [False, True]:
        if ("neox-static" if static else "neox") not in args.models:
            continue
        parts = build_neox()
        for prompt in args.neox_prompts or args.prompts:
            for batch in args.neox_batches or args.batches:
                try:
                    rows.append(neox_run(parts, batch, prompt, args.new, static))
                except torch.OutOfMemoryError:
                    name = "GPT-NeoX 2.8B " + ("static+compile" if static else "dynamic")
                    rows.append({"model": name, "batch": batch, "prompt": prompt, "ttft_ms": "OOM"})
                    gc.collect()
                    torch.cuda.empty_cache()
                print(rows[-1], flush=True)
                report("generation (partial)", rows, [], args.out, quiet=True)
        del parts
        gc.collect()
        torch.cuda.empty_cache()
    report(f"generation, {args.new} new tokens, greedy, bf16 (copy bandwidth {bandwidth / 1e12:.2f} TB/s)", rows,
           ["model", "batch", "prompt", "ttft_ms", "decode_tok_s", "e2e_tok_s", "ms_per_step", "floor_ms",
            "peak_GiB"], args.out)


if __name__ == "__main__":
    main()
