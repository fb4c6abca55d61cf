"""Batched generation with the recurrent state as the cache.

The prompts (visual tokens spliced in, left-padded) go through the parallel scan once, which leaves each
layer's conv window and SSM state; then every new token is one ``step`` of the recurrence, so memory does
not grow with the output. Padding is masked so that it leaves the state exactly zero: a prompt yields the
same tokens alone or in a batch. On CUDA the decode step is captured once in a CUDA graph and replayed.
Finished sequences are tracked on the device; the host looks only every ``check_every`` tokens.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import Tensor

from vl_mamba.model import VLMamba
from vl_mamba.tokenizer import TextTokenizer


@dataclass
class GenerationConfig:
    """How to generate."""

    max_new_tokens: int = 32
    """Upper bound on generated tokens per sequence."""
    do_sample: bool = False
    """Sample (with temperature / top-k / top-p) instead of greedy decoding."""
    temperature: float = 1.0
    """Softmax temperature when sampling."""
    top_k: int = 0
    """Keep the k most likely tokens when sampling (0: all)."""
    top_p: float = 1.0
    """Keep the smallest set of tokens whose probability reaches top_p when sampling."""
    stop_token_ids: tuple[int, ...] = ()
    """Tokens that end a sequence, besides the tokenizer's eos."""
    stop_strings: tuple[str, ...] = ()
    """Strings that end a sequence; the text is cut before them."""
    cuda_graph: bool = True
    """Replay the decode step from a CUDA graph (CUDA only)."""
    check_every: int = 16
    """Tokens between checks (one host synchronisation each) for all-finished and stop strings."""
    seed: int | None = None
    """Seed of the sampling generator."""
    prefill_tokens: int = 65536
    """Most prompt tokens read in one pass; larger batches are read in slices to bound memory."""


@dataclass
class GenerationOutput:
    texts: list[str]
    """Decoded continuations, cut at the first stop string."""
    token_ids: list[list[int]] = field(default_factory=list)
    """Generated ids per sequence, up to and excluding the stop token."""


@torch.inference_mode()
def generate(
    model: VLMamba,
    tokenizer: TextTokenizer,
    prompts: list[str],
    images: list[Tensor | None] | None = None,
    config: GenerationConfig | None = None,
) -> GenerationOutput:
    """Continue each prompt.

    Args:
        model: the VL-Mamba model (in the dtype and on the device to run in).
        tokenizer: its tokenizer.
        prompts: formatted prompts; ``<image>`` marks where an image goes.
        images: one preprocessed image (3, H, W) or None per prompt.
        config: generation settings.
    """
    config = config or GenerationConfig()
    batch = len(prompts)
    images = images if images is not None else [None] * batch
    if len(images) != batch:
        raise ValueError(f"{len(prompts)} prompts but {len(images)} images")
    ids = [torch.tensor(tokenizer.encode(p), dtype=torch.long) for p in prompts]
    input_ids, attention = left_pad(ids, tokenizer.pad_token_id)
    pixels = [img for img in images if img is not None]
    has_image = torch.tensor([img is not None for img in images])
    stop = (tokenizer.eos_token_id, *config.stop_token_ids)
    check = None
    if config.stop_strings:
        def check(tokens: Tensor) -> Tensor:
            return _hit_stop_strings(tokens, tokenizer, config.stop_strings)
    tokens = generate_tokens(
        model, input_ids, attention, torch.stack(pixels) if pixels else None, has_image, config,
        stop_token_ids=stop, pad_token_id=tokenizer.pad_token_id, vocab_limit=tokenizer.base_vocab_size,
        stop_check=check,
    )
    return _finish(tokens.tolist(), list(stop), tokenizer, config.stop_strings)


def left_pad(ids: list[Tensor], pad_token_id: int) -> tuple[Tensor, Tensor]:
    """Token id sequences -> left-padded (batch, T) ids and the (batch, T) mask of real tokens."""
    width = max(len(t) for t in ids)
    input_ids = torch.full((len(ids), width), pad_token_id, dtype=torch.long)
    attention = torch.zeros(len(ids), width, dtype=torch.bool)
    for i, t in enumerate(ids):
        input_ids[i, width - len(t) :] = t
        attention[i, width - len(t) :] = True
    return input_ids, attention


@torch.inference_mode()
def generate_tokens(
    model: VLMamba,
    input_ids: Tensor,
    attention_mask: Tensor,
    pixel_values: Tensor | None,
    has_image: Tensor,
    config: GenerationConfig,
    stop_token_ids: tuple[int, ...],
    pad_token_id: int,
    vocab_limit: int,
    stop_check=None,
) -> Tensor:
    """Generate from left-padded token ids; returns (batch, produced) ids, ``pad_token_id`` after a stop.

    Args:
        input_ids, attention_mask: (batch, T), left-padded.
        pixel_values: (n_images, 3, H, W) for the rows that have an image.
        has_image: (batch,) bool.
        stop_token_ids: tokens that end a sequence (empty: always generate max_new_tokens).
        vocab_limit: only ids below this are generated.
        stop_check: optional host-side test (batch, t) ids -> (batch,) bool, run every ``check_every`` tokens.
    """
    device = next(model.parameters()).device
    batch = input_ids.shape[0]
    dtype = next(model.decoder.parameters()).dtype
    if pixel_values is not None:
        pixel_values = pixel_values.to(device, dtype)
    inputs = model.build_inputs(
        input_ids.to(device), pixel_values, None, attention_mask.to(device), has_image.to(device),
        padding_side="left",
    )
    decoder = model.decoder
    step = None
    if _use_graph(config, device) and config.max_new_tokens > 1:
        states, step = _decode_graph(decoder, batch, device, inputs.embeds.dtype)
    else:
        states = decoder.allocate_states(batch, device, inputs.embeds.dtype)
    logits = _prefill(decoder, inputs.embeds, inputs.mask, states, config.prefill_tokens)

    stop_ids = torch.tensor(sorted(set(stop_token_ids)), dtype=torch.long, device=device)
    generator = None
    if config.do_sample:
        generator = torch.Generator(device=device)
        generator.manual_seed(config.seed if config.seed is not None else torch.seed())
    out = torch.full((batch, config.max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    pad = torch.full((batch,), pad_token_id, dtype=torch.long, device=device)
    produced = 0
    for t in range(config.max_new_tokens):
        token = torch.where(finished, pad, _pick(logits, vocab_limit, config, generator))
        out[:, t] = token
        finished |= torch.isin(token, stop_ids)
        produced = t + 1
        if (t + 1) % config.check_every == 0 or t + 1 == config.max_new_tokens:
            if stop_check is not None:
                finished |= stop_check(out[:, : t + 1]).to(device)
            if bool(finished.all()):
                break
        if t + 1 < config.max_new_tokens:
            logits = step(token) if step is not None else decoder.step(decoder.embed(token), states)
    return out[:, :produced]


def _prefill(decoder, embeds: Tensor, mask: Tensor, states: list, budget: int) -> Tensor:
    """Read the prompts in batch slices of at most ``budget`` tokens; fill ``states``; last-position logits."""
    batch, length = mask.shape
    step = max(1, budget // max(length, 1))
    logits = []
    for start in range(0, batch, step):
        rows = slice(start, min(batch, start + step))
        views = [dataclasses.replace(s, conv=s.conv[rows], ssm=s.ssm[rows]) for s in states]
        rows_mask = mask[rows]
        # Without padding there is nothing to mask: the plain path skips two multiplications per layer.
        hidden = decoder.forward_hidden(embeds[rows], views, None if bool(rows_mask.all()) else rows_mask)
        logits.append(decoder.logits(hidden[:, -1]))
    return torch.cat(logits)


def _pick(logits: Tensor, allowed: int, config: GenerationConfig, generator: torch.Generator | None) -> Tensor:
    """Next token per row; padding rows of the vocabulary and the image placeholder are never chosen."""
    logits = logits[:, :allowed].float()
    if not config.do_sample:
        return logits.argmax(-1)
    logits = logits / max(config.temperature, 1e-5)
    if config.top_k > 0:
        kth = torch.topk(logits, min(config.top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if config.top_p < 1.0:
        sorted_logits, order = logits.sort(-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logits.softmax(-1) >= config.top_p  # keep the first token past top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)


def _hit_stop_strings(tokens: Tensor, tokenizer: TextTokenizer, stops: tuple[str, ...]) -> Tensor:
    texts = [tokenizer.decode(row) for row in tokens.tolist()]
    return torch.tensor([any(s in text for s in stops) for text in texts])


def _finish(rows: list[list[int]], stop_ids: list[int], tokenizer: TextTokenizer, stops: tuple[str, ...]):
    texts, kept = [], []
    for row in rows:
        end = next((i for i, tok in enumerate(row) if tok in stop_ids), len(row))
        row = row[:end]
        text = tokenizer.decode(row)
        cut = min((text.find(s) for s in stops if s in text), default=-1)
        texts.append(text[:cut] if cut >= 0 else text)
        kept.append(row)
    return GenerationOutput(texts=[t.strip() for t in texts], token_ids=kept)


def _use_graph(config: GenerationConfig, device: torch.device) -> bool:
    return config.cuda_graph and device.type == "cuda"


_GRAPH_CACHE_SIZE = 4


def _decode_graph(decoder, batch: int, device: torch.device, dtype: torch.dtype):
    """The decode step for this batch size as a CUDA graph, with the state buffers it reads and writes.

    Captured once and kept on the decoder (a few batch sizes at most). The key holds the weights' addresses,
    so moving or casting the model captures anew instead of replaying over freed memory.
    """
    cache = decoder.__dict__.setdefault("_decode_graphs", {})
    weights = tuple(p.data_ptr() for p in decoder.parameters())
    key = (batch, dtype, str(device), hash(weights))
    if key not in cache:
        while len(cache) >= _GRAPH_CACHE_SIZE:
            cache.pop(next(iter(cache)))
        states = decoder.allocate_states(batch, device, dtype)
        cache[key] = (states, _graphed_step(decoder, states, batch, device))
    return cache[key]


def _graphed_step(decoder, states, batch: int, device: torch.device):
    """Capture ``token -> logits`` (embedding and every layer's step) in a CUDA graph over fixed buffers."""
    static_token = torch.zeros(batch, dtype=torch.long, device=device)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):  # warm up kernels (Triton compiles, cuBLAS picks algorithms) outside the capture
            decoder.step(decoder.embed(static_token), states)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_logits = decoder.step(decoder.embed(static_token), states)

    def step(token: Tensor) -> Tensor:
        static_token.copy_(token)
        graph.replay()
        return static_logits

    return step
