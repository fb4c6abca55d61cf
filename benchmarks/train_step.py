"""Suite 3, a full training step at the paper model's shape, against a LLaVA-style transformer.

VL-Mamba: SigLIP-SO400M/14-384 (random weights) -> VSS-L2 (BSM) -> Mamba-2.8B shape (d 2560, 64 layers).
Transformer: the same encoder -> LLaVA's MLP connector -> GPT-NeoX with Pythia-2.8B's shape (d 2560, 32
layers, SDPA attention). Both: float32 master weights, bf16 autocast, fused AdamW, one image (729 visual
tokens) per sample, the rest text, the loss on the second half of the text. Stage 1 trains the connector
(encoder and LM frozen, the LM still back-propagates to the connector); stage 2 also trains the LM.

Reported: samples/s, tokens/s, model FLOPs utilisation (MFU: model FLOPs by the usual 2N per token forward
and 4N backward for trained weights, 2N backward for frozen layers that pass gradients, over the card's
dense bf16 peak) and peak memory, for the largest batch that fits: every batch size is tried, from a ceiling per
length down. ``alloc_retries`` counts the times the caching allocator ran out, freed its cache and tried again (a
batch near the card's memory pays for those).

Two timings of the step: ``step_ms``, the median of 5 steps each timed alone (the GPU's queue drained before and
after each, so that the host's time to issue the step's first kernels shows); and ``run_step_ms``, 10 steps in a
row divided by 10, as a training loop runs them (the host issues a step while the GPU finishes the one before). MFU
and throughput are given for both (``run_MFU_%``, ``run_tokens_s``).

    python -m benchmarks.train_step --seq 1024 4096 16384 --out benchmarks/results/train_step.json
"""

from __future__ import annotations

import argparse
import gc

import torch
from torch import nn

from benchmarks.common import peak_gib, report, time_cuda
from vl_mamba.connectors import MLPConnector, VSSL2Connector
from vl_mamba.decoders import MambaDecoder
from vl_mamba.encoders import TimmViTEncoder
from vl_mamba.model import VLMamba
from vl_mamba.training.optim import param_groups
from vl_mamba.training.stages import apply_stage

H100_BF16_DENSE_TFLOPS = 989.0


class NeoXDecoder(nn.Module):
    """transformers' GPT-NeoX behind the ``LanguageDecoder`` calls that ``VLMamba`` makes in training."""

    def __init__(self, layers: int = 32, width: int = 2560, heads: int = 32, gradient_checkpointing: bool = False):
        super().__init__()
        from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

        config = GPTNeoXConfig(
            vocab_size=50304, hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads,
            intermediate_size=4 * width, rotary_pct=0.25, max_position_embeddings=32768,
            use_parallel_residual=True, tie_word_embeddings=False, attn_implementation="sdpa",
        )
        self.lm = GPTNeoXForCausalLM(config)
        if gradient_checkpointing:
            self.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.d_model, self.vocab_size, self.embedding_rows = width, 50277, 50304
        self.config = config

    def embed(self, input_ids):
        return self.lm.get_input_embeddings()(input_ids)

    def forward_hidden(self, inputs_embeds, states=None, mask=None):
        return self.lm.gpt_neox(inputs_embeds=inputs_embeds, use_cache=False).last_hidden_state

    def logits(self, hidden):
        return self.lm.get_output_embeddings()(hidden)


def build(kind: str, checkpointing: bool, checkpoint_lvl: int = 1) -> VLMamba:
    with torch.device("cuda"):
        encoder = TimmViTEncoder("vit_so400m_patch14_siglip_384", layer=-1, gradient_checkpointing=checkpointing)
        if kind == "mamba":
            decoder = MambaDecoder(d_model=2560, n_layer=64, vocab_size=50277,
                                   gradient_checkpointing=checkpointing, checkpoint_lvl=checkpoint_lvl)
            connector = VSSL2Connector(scan="bi")
        else:
            decoder = NeoXDecoder(gradient_checkpointing=checkpointing)
            connector = MLPConnector()
        return VLMamba(encoder, connector, decoder, image_token_id=None).cuda()


def count(module: nn.Module, trainable: bool | None = None) -> int:
    return sum(p.numel() for p in module.parameters() if trainable is None or p.requires_grad == trainable)


def step_flops(model: VLMamba, batch: int, seq: int, labelled: int, stage: str) -> float:
    """Model FLOPs of one step (matmul-dominated 2N-per-token convention)."""
    enc = count(model.encoder)
    embed_rows = model.decoder.embedding_rows * model.decoder.d_model
    lm = count(model.decoder) - embed_rows  # the tied / separate head is counted on labelled tokens below
    conn = count(model.connector)
    visual = model.num_visual_tokens
    lm_backward = 4 if stage == "finetune" else 2  # weight grads only when the LM trains
    flops = 2 * enc * visual * batch  # frozen encoder: forward only
    flops += 6 * conn * visual * batch
    flops += (2 + lm_backward) * lm * seq * batch
    flops += (2 + lm_backward) * embed_rows * labelled * batch  # LM head on the labelled positions
    return float(flops)


def make_batch(batch: int, seq: int, visual: int) -> dict:
    text = seq - visual
    input_ids = torch.randint(2, 50000, (batch, text), device="cuda")
    labels = input_ids.clone()
    labels[:, : text // 2] = -100
    pixels = torch.randn(batch, 3, 384, 384, device="cuda")
    return {"input_ids": input_ids, "labels": labels, "pixel_values": pixels}


def make_step(model: VLMamba, optimizer: torch.optim.Optimizer, data: dict):
    """One training step on ``data`` (forward under bf16 autocast, backward, optimizer step), as a function."""

    def train_step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(data["input_ids"], data["pixel_values"], data["labels"])
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return train_step


def consecutive_ms(fn, steps: int) -> float:
    """Milliseconds a call of ``fn`` over ``steps`` calls in a row with no wait between them (CUDA events around
    the run), after one call."""
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(steps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / steps


def run_config(kind: str, stage: str, seq: int, batches: list[int], checkpointing: bool,
               checkpoint_lvl: int = 1) -> dict | None:
    model = build(kind, checkpointing, checkpoint_lvl)
    apply_stage(model, stage if stage == "finetune" else "align")
    groups = param_groups(model.named_parameters(), 1e-5, 0.0)
    optimizer = torch.optim.AdamW(groups, lr=1e-5, fused=True)
    result = None
    for batch in batches:
        train_step = make_step(model, optimizer, make_batch(batch, seq, model.num_visual_tokens))
        try:
            torch.cuda.reset_peak_memory_stats()
            torch.cuda.reset_accumulated_memory_stats()
            timing = time_cuda(train_step, warmup=2, repeats=5)
            run_ms = consecutive_ms(train_step, steps=10)
        except torch.OutOfMemoryError:
            optimizer.zero_grad(set_to_none=True)
            gc.collect()
            torch.cuda.empty_cache()
            continue
        seconds = timing["median_ms"] / 1e3
        labelled = (seq - model.num_visual_tokens) - (seq - model.num_visual_tokens) // 2
        flops = step_flops(model, batch, seq, labelled, stage)
        result = {
            "model": "VL-Mamba 2.8B" if kind == "mamba" else "LLaVA GPT-NeoX 2.8B", "stage": stage,
            "seq": seq, "batch": batch, "checkpointing": checkpointing, "step_ms": timing["median_ms"],
            **({"checkpoint_lvl": checkpoint_lvl} if kind == "mamba" else {}),
            "samples_s": batch / seconds, "tokens_s": batch * seq / seconds,
            "MFU_%": 100 * flops / seconds / (H100_BF16_DENSE_TFLOPS * 1e12), "peak_GiB": peak_gib(),
            "run_step_ms": run_ms, "run_tokens_s": batch * seq / (run_ms / 1e3),
            "run_MFU_%": 100 * flops / (run_ms / 1e3) / (H100_BF16_DENSE_TFLOPS * 1e12),
            "alloc_retries": torch.cuda.memory_stats().get("num_alloc_retries", 0),
            "trainable_B": count(model, True) / 1e9,
        }
        break
    del model, optimizer
    gc.collect()
    torch.cuda.empty_cache()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--stages", nargs="+", default=["align", "finetune"])
    parser.add_argument("--models", nargs="+", default=["mamba", "neox"])
    parser.add_argument("--checkpointing", action="store_true", help="activation checkpointing per block")
    parser.add_argument("--checkpoint-lvl", type=int, default=1, choices=[0, 1],
                        help="VL-Mamba's layers: 1 recomputes the conv output and delta in the backward, 0 keeps them")
    parser.add_argument("--out", default="benchmarks/results/train_step.json")
    args = parser.parse_args()
    largest = {1024: 16, 2048: 8, 4096: 4, 8192: 2}  # above these a batch runs out of memory on an 80 GB card
    rows = []
    for seq in args.seq:
        for stage in args.stages:
            for kind in args.models:
                row = run_config(kind, stage, seq, list(range(largest.get(seq, 1), 0, -1)), args.checkpointing,
                                 args.checkpoint_lvl)
                if row is None:
                    row = {"model": kind, "stage": stage, "seq": seq, "batch": "OOM"}
                rows.append(row)
                print(row, flush=True)
                report("training step (partial)", rows, [], args.out, quiet=True)
    report("training step (bf16 autocast, fused AdamW, CUDA events, median of 5; and 10 in a row)", rows,
           ["model", "stage", "seq", "batch", "step_ms", "samples_s", "tokens_s", "MFU_%", "run_step_ms",
            "run_MFU_%", "peak_GiB"], args.out)


if __name__ == "__main__":
    main()
