"""The Mamba-1 language model's configuration, and its readers for the two checkpoint formats.

state-spaces checkpoints (``state-spaces/mamba-130m`` ... ``mamba-2.8b-slimpj``) write ``config.json`` with
``d_model``, ``n_layer``, ``vocab_size`` and ``ssm_cfg``; transformers' ``*-hf`` conversions write
``hidden_size``, ``num_hidden_layers``, ``state_size`` and so on. Both map onto ``MambaConfig``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any


@dataclass
class MambaConfig:
    """Mamba-1 LM hyper-parameters, named as mamba_ssm names them."""

    d_model: int = 768
    """Width of the residual stream."""
    n_layer: int = 24
    """Number of Mamba blocks."""
    vocab_size: int = 50277
    """Tokenizer vocabulary; the embedding is padded up to a multiple of ``pad_vocab_size_multiple``."""
    d_state: int = 16
    """SSM state size N per channel."""
    d_conv: int = 4
    """Width of the causal depthwise convolution."""
    expand: int = 2
    """Inner width = expand * d_model."""
    dt_rank: int | None = None
    """Rank of the time-step projection; None means ceil(d_model / 16)."""
    pad_vocab_size_multiple: int = 8
    """Embedding rows are padded to a multiple of this."""
    norm_epsilon: float = 1e-5
    """RMSNorm epsilon."""
    residual_in_fp32: bool = True
    """Keep the residual stream in float32."""
    tie_embeddings: bool = True
    """Share the embedding and the LM head."""
    conv_bias: bool = True
    """Bias in the depthwise convolution."""
    bias: bool = False
    """Bias in in_proj and out_proj."""
    dt_min: float = 0.001
    """Smallest initial time step."""
    dt_max: float = 0.1
    """Largest initial time step."""
    dt_init_floor: float = 1e-4
    """Floor of the initial time steps."""

    def __post_init__(self) -> None:
        if self.dt_rank is None:
            self.dt_rank = math.ceil(self.d_model / 16)
        for name in ("d_model", "n_layer", "vocab_size", "d_state", "d_conv", "expand", "dt_rank"):
            if getattr(self, name) < 1:
                raise ValueError(f"MambaConfig.{name} must be positive, got {getattr(self, name)}")

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def padded_vocab_size(self) -> int:
        m = self.pad_vocab_size_multiple
        return -(-self.vocab_size // m) * m

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> MambaConfig:
        """Read either checkpoint format's ``config.json``; keys that do not concern the model are ignored."""
        if "hidden_size" in raw:
            return cls._from_hf(raw)
        if "d_model" not in raw:
            raise ValueError(
                "not a Mamba config: expected state-spaces keys (d_model, n_layer, ...) or transformers keys "
                f"(hidden_size, num_hidden_layers, ...); got {sorted(raw)[:12]}"
            )
        ssm = dict(raw.get("ssm_cfg") or {})
        layer = ssm.pop("layer", "Mamba1")
        if layer != "Mamba1":
            raise ValueError(f"only Mamba-1 checkpoints are supported; this one has ssm_cfg.layer={layer!r}")
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in raw.items() if k in fields}
        values.update({k: v for k, v in ssm.items() if k in fields})
        if raw.get("d_intermediate") or raw.get("attn_layer_idx"):
            raise ValueError("only pure Mamba-1 checkpoints are supported (config has MLP or attention layers)")
        if raw.get("rms_norm") is False:
            raise ValueError("only RMSNorm Mamba checkpoints are supported (config has rms_norm=false)")
        return cls(**values)

    @classmethod
    def _from_hf(cls, raw: dict[str, Any]) -> MambaConfig:
        hidden = raw["hidden_size"]
        rank = raw.get("time_step_rank", "auto")
        return cls(
            d_model=hidden,
            n_layer=raw["num_hidden_layers"],
            vocab_size=raw["vocab_size"],
            d_state=raw.get("state_size", 16),
            d_conv=raw.get("conv_kernel", 4),
            expand=raw.get("expand", 2),
            dt_rank=None if rank == "auto" else rank,
            # transformers stores exactly vocab_size embedding rows (the *-hf conversions are already padded)
            pad_vocab_size_multiple=raw.get("pad_vocab_size_multiple", 1),
            norm_epsilon=raw.get("layer_norm_epsilon", 1e-5),
            residual_in_fp32=raw.get("residual_in_fp32", True),
            tie_embeddings=raw.get("tie_word_embeddings", True),
            conv_bias=raw.get("use_conv_bias", True),
            bias=raw.get("use_bias", False),
            dt_min=raw.get("time_step_min", 0.001),
            dt_max=raw.get("time_step_max", 0.1),
            dt_init_floor=raw.get("time_step_floor", 1e-4),
        )

    def to_state_spaces_dict(self) -> dict[str, Any]:
        """The ``config.json`` that state-spaces checkpoints carry."""
        return {
            "d_model": self.d_model,
            "n_layer": self.n_layer,
            "vocab_size": self.vocab_size,
            "ssm_cfg": {"d_state": self.d_state, "d_conv": self.d_conv, "expand": self.expand,
                        "dt_rank": self.dt_rank, "conv_bias": self.conv_bias, "bias": self.bias},
            "rms_norm": True,
            "residual_in_fp32": self.residual_in_fp32,
            "fused_add_norm": True,
            "pad_vocab_size_multiple": self.pad_vocab_size_multiple,
            "tie_embeddings": self.tie_embeddings,
        }
