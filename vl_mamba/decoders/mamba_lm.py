"""``MambaDecoder``: the Mamba-1 language model (state-spaces ``MambaLMHeadModel`` layout).

Parameter names match mamba_ssm's, so state-spaces checkpoints load unchanged; transformers' ``*-hf``
checkpoints load by renaming one key prefix. Built with ``pretrained=`` it reads its architecture and
weights from a checkpoint; otherwise from the given hyper-parameters, randomly initialised as Mamba is.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from vl_mamba.decoders.base import LanguageDecoder
from vl_mamba.decoders.checkpoint_io import read_config, read_state_dict, resolve_checkpoint, to_state_spaces_names
from vl_mamba.decoders.config import MambaConfig
from vl_mamba.decoders.mamba_block import LayerState, MambaBlock, RMSNorm
from vl_mamba.ops import linear_decode
from vl_mamba.ops.mamba_inner import check_checkpoint_lvl


class MambaBackbone(nn.Module):
    def __init__(self, cfg: MambaConfig) -> None:
        super().__init__()
        self.embedding = nn.Embedding(cfg.padded_vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(MambaBlock(cfg) for _ in range(cfg.n_layer))
        self.norm_f = RMSNorm(cfg.d_model, cfg.norm_epsilon)
        self.embedding.weight._no_weight_decay = True


class MambaDecoder(LanguageDecoder):
    """Mamba-1 causal LM reading token ids or embeddings.

    Args:
        pretrained: hub id (``state-spaces/mamba-2.8b-slimpj``) or local directory of a checkpoint in the
            state-spaces or transformers format; the architecture then comes from its config.json.
        d_model: residual width (required without ``pretrained``).
        n_layer: number of blocks (required without ``pretrained``).
        vocab_size: tokenizer vocabulary size.
        d_state: SSM state size per channel.
        d_conv: causal conv width.
        expand: inner width over d_model.
        pad_vocab_size_multiple: embedding rows are padded to a multiple of this.
        dt_min, dt_max: range of the initial time steps of a model built from scratch (mamba_ssm's 0.001-0.1 by
            default, timescales of 10 to 1,000 tokens; short sequences learn faster with larger steps).
        gradient_checkpointing: recompute each block in the backward pass. Each block then keeps one float32
            tensor for the backward (the residual stream with its input added), and a block whose mixer weights
            are all frozen runs the unfused Mamba ops, which compute no weight gradients.
        checkpoint_lvl: mamba_ssm's ``checkpoint_lvl`` of each layer's fused body: 1 (its default) recomputes the
            conv's output and delta in the backward; 0 keeps them, for a faster backward at two more
            (batch, d_inner, L) tensors a layer (BENCHMARKS.md has both at the paper model's shape).
        revision: hub revision of ``pretrained``.
    """

    checkpoints_own_blocks = True

    def __init__(
        self,
        pretrained: str | None = None,
        d_model: int | None = None,
        n_layer: int | None = None,
        vocab_size: int | None = None,
        d_state: int | None = None,
        d_conv: int | None = None,
        expand: int | None = None,
        pad_vocab_size_multiple: int | None = None,
        dt_min: float | None = None,
        dt_max: float | None = None,
        gradient_checkpointing: bool = False,
        checkpoint_lvl: int = 1,
        revision: str | None = None,
    ) -> None:
        super().__init__()
        check_checkpoint_lvl(checkpoint_lvl)
        given = {
            "d_model": d_model, "n_layer": n_layer, "vocab_size": vocab_size, "d_state": d_state,
            "d_conv": d_conv, "expand": expand, "pad_vocab_size_multiple": pad_vocab_size_multiple,
            "dt_min": dt_min, "dt_max": dt_max,
        }
        given = {k: v for k, v in given.items() if v is not None}
        directory = None
        if pretrained is not None:
            directory = resolve_checkpoint(pretrained, revision)
            cfg = read_config(directory)
            clash = {k: (v, getattr(cfg, k)) for k, v in given.items() if getattr(cfg, k) != v}
            if clash:
                detail = ", ".join(f"{k}={v} (checkpoint: {c})" for k, (v, c) in clash.items())
                raise ValueError(f"MambaDecoder: {detail} disagree with the checkpoint {pretrained}; drop them")
        else:
            missing = [k for k in ("d_model", "n_layer") if k not in given]
            if missing:
                raise ValueError(f"MambaDecoder needs {' and '.join(missing)} when no pretrained checkpoint is given")
            cfg = MambaConfig(**given)
        self.config = cfg
        self.d_model = cfg.d_model
        self.vocab_size = cfg.vocab_size
        self.embedding_rows = cfg.padded_vocab_size
        self.gradient_checkpointing = gradient_checkpointing
        # Weights about to be read from a checkpoint are not initialised first (meta tensors, then empty).
        with torch.device("meta" if directory is not None else torch.get_default_device()):
            self.backbone = MambaBackbone(cfg)
            self.lm_head = nn.Linear(cfg.d_model, cfg.padded_vocab_size, bias=False)
        for layer in self.backbone.layers:
            layer.mixer.checkpoint_lvl = checkpoint_lvl
        if directory is None:
            self._tie()
            self._init_weights()
        else:
            self.to_empty(device="cpu")
            self._tie()
            self.load_checkpoint_dir(directory, source=str(pretrained))

    def _tie(self) -> None:
        if self.config.tie_embeddings:
            self.lm_head.weight = self.backbone.embedding.weight

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, **kwargs) -> MambaDecoder:
        """Build from a hub id or local directory (state-spaces or transformers format)."""
        return cls(pretrained=str(name_or_path), **kwargs)

    @property
    def block_class(self) -> type[nn.Module]:
        return MambaBlock

    def _init_weights(self) -> None:
        """mamba_ssm's scheme: N(0, 0.02) embeddings, zero linear biases, out_proj scaled by 1/sqrt(n_layer)."""
        nn.init.normal_(self.backbone.embedding.weight, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear) and module.bias is not None:
                if not getattr(module.bias, "_no_reinit", False):
                    nn.init.zeros_(module.bias)
        scale = 1.0 / math.sqrt(self.config.n_layer)
        with torch.no_grad():
            for layer in self.backbone.layers:
                nn.init.kaiming_uniform_(layer.mixer.out_proj.weight, a=math.sqrt(5))
                layer.mixer.out_proj.weight.mul_(scale)

    def load_checkpoint_dir(self, directory: Path, source: str = "") -> None:
        """Load weights from a checkpoint directory into this model; names and shapes must match exactly."""
        state = to_state_spaces_names(read_state_dict(directory))
        own = self.state_dict()
        if self.config.tie_embeddings:
            state.setdefault("lm_head.weight", state.get("backbone.embedding.weight"))
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
        if missing or unexpected or wrong:
            parts = []
            if missing:
                parts.append(f"missing {missing[:4]}{' ...' if len(missing) > 4 else ''}")
            if unexpected:
                parts.append(f"unexpected {unexpected[:4]}{' ...' if len(unexpected) > 4 else ''}")
            if wrong:
                parts.append("shape mismatch " + ", ".join(
                    f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in wrong[:4]))
            raise ValueError(f"checkpoint {source or directory} does not fit MambaDecoder: " + "; ".join(parts))
        with torch.no_grad():
            for key, value in own.items():
                value.copy_(state[key])

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write the state-spaces format (``config.json`` + ``pytorch_model.bin``)."""
        from vl_mamba.decoders.checkpoint_io import write_state_spaces

        return write_state_spaces(directory, self.config, self.state_dict())

    def embed(self, input_ids: Tensor) -> Tensor:
        return self.backbone.embedding(input_ids)

    def forward_hidden(
        self, inputs_embeds: Tensor, states: list[LayerState] | None = None, mask: Tensor | None = None
    ) -> Tensor:
        """Embeddings (batch, L, d_model) -> hidden states after norm_f, (batch, L, d_model).

        Args:
            states: per-layer recurrent states, filled with the state after the last position.
            mask: (batch, L), False at left padding.
        """
        hidden, residual = inputs_embeds, None
        for i, layer in enumerate(self.backbone.layers):
            state = None if states is None else states[i]
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                if residual is not None:
                    # One tensor crosses into the checkpoint, the residual stream with this block's input added
                    # (as the block's norm would add it), so that one tensor per layer is kept for the backward:
                    # 4 bytes a value in float32 instead of 6 (the bf16 input beside the float32 residual).
                    dtype = torch.float32 if self.config.residual_in_fp32 else hidden.dtype
                    hidden, residual = hidden.to(dtype) + residual, None
                hidden, residual = checkpoint(_recomputed, layer, hidden, residual, state, mask, use_reentrant=False)
            else:
                hidden, residual = layer(hidden, residual, state, mask)
        hidden, _ = self.backbone.norm_f(hidden, residual, self.config.residual_in_fp32)
        return hidden

    def logits(self, hidden: Tensor) -> Tensor:
        return self.lm_head(hidden)

    def allocate_states(self, batch: int, device: torch.device, dtype: torch.dtype) -> list[LayerState]:
        return [layer.mixer.allocate_state(batch, device, dtype) for layer in self.backbone.layers]

    def step(self, inputs_embeds: Tensor, states: list[LayerState]) -> Tensor:
        hidden, residual = inputs_embeds, None
        for layer, state in zip(self.backbone.layers, states):
            hidden, residual = layer.step(hidden, residual, state)
        hidden, _ = self.backbone.norm_f(hidden, residual, self.config.residual_in_fp32)
        return linear_decode(hidden, self.lm_head.weight)  # at batch 1, 11 % faster than cuBLAS for Mamba-2.8B

    def extra_repr(self) -> str:
        fields = ("d_model", "n_layer", "vocab_size", "d_state", "expand")
        return ", ".join(f"{f}={getattr(self.config, f)}" for f in fields)


def _recomputed(layer: nn.Module, *inputs):
    """Run a block under activation checkpointing, its mixer told so (``MambaMixer.recomputed``) for this call only:
    the backward's recomputation passes through here again and takes the same path, whatever ran in between."""
    layer.mixer.recomputed = True
    try:
        return layer(*inputs)
    finally:
        layer.mixer.recomputed = False
