"""``TimmViTEncoder``: any timm Vision Transformer as a patch-feature extractor.

Covers CLIP ViT-L/14-336 (``vit_large_patch14_clip_336.openai``; LLaVA-1.5 takes its penultimate layer and
drops the CLS token) and SigLIP-SO400M/14-384 (``vit_so400m_patch14_siglip_384``: 27 x 27 patches, width
1152, no prefix token). Later blocks than the one read are pruned, so they cost nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
from torch import Tensor, nn

from vl_mamba.encoders.base import VisionEncoder


class TimmViTEncoder(VisionEncoder):
    """Patch features of a timm ViT, prefix (CLS / register) tokens dropped.

    Args:
        model_name: timm model name, e.g. ``vit_so400m_patch14_siglip_384``.
        pretrained: load timm's pretrained weights for ``model_name`` (hub, or the local hub cache).
        checkpoint_path: load weights from this local file instead (timm / open_clip / safetensors formats
            that timm's loader accepts).
        layer: which block's output to return; negative counts from the end (-1 last, -2 penultimate). None
            means ``default_layer(model_name)``: the penultimate block for CLIP (LLaVA-1.5), the last otherwise.
        norm: apply the model's final norm to the returned features.
        img_size: input resolution, when not the model's default.
        model_kwargs: further arguments for ``timm.create_model`` (tiny test models set widths and depths here).
        gradient_checkpointing: recompute ViT blocks in the backward pass.
    """

    def __init__(
        self,
        model_name: str = "vit_so400m_patch14_siglip_384",
        pretrained: bool = False,
        checkpoint_path: str | None = None,
        layer: int | None = None,
        norm: bool = False,
        img_size: int | None = None,
        model_kwargs: dict[str, Any] | None = None,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        kwargs = dict(model_kwargs or {})
        if img_size is not None:
            kwargs["img_size"] = img_size
        if checkpoint_path is not None:
            path = Path(checkpoint_path).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"TimmViTEncoder: no checkpoint file at {path}")
            kwargs["pretrained_cfg_overlay"] = {"file": str(path)}
        self.model = timm.create_model(
            model_name, pretrained=pretrained or checkpoint_path is not None, num_classes=0, **kwargs
        )
        if not hasattr(self.model, "forward_intermediates") or not hasattr(self.model, "blocks"):
            raise ValueError(f"{model_name} is not a timm Vision Transformer with forward_intermediates")
        depth = len(self.model.blocks)
        if layer is None:
            layer = default_layer(model_name)
        if not -depth <= layer < depth:
            raise ValueError(f"layer={layer} is outside the {depth} blocks of {model_name}")
        self.layer = layer % depth
        self.norm = norm
        self.model.prune_intermediate_layers([self.layer], prune_norm=not norm, prune_head=True)
        self.model.set_grad_checkpointing(gradient_checkpointing)
        self.model.patch_embed.register_forward_hook(_row_major)
        self.embed_dim = self.model.embed_dim
        self.grid = tuple(self.model.patch_embed.grid_size)
        self.model_name = model_name
        self.requires_grad_(False)

    @property
    def data_config(self) -> dict[str, Any]:
        config = dict(timm.data.resolve_model_data_config(self.model))
        config["input_size"] = (3, *self.model.patch_embed.img_size)
        return config

    @property
    def block_class(self) -> type[nn.Module]:
        return type(self.model.blocks[0])

    def forward(self, pixel_values: Tensor) -> Tensor:
        """(batch, 3, H, W) -> (batch, grid_h * grid_w, embed_dim)."""
        (features,) = self.model.forward_intermediates(
            pixel_values, indices=[self.layer], norm=self.norm, output_fmt="NLC", intermediates_only=True
        )
        return features

    def extra_repr(self) -> str:
        return f"{self.model_name}, layer={self.layer}, grid={self.grid}, embed_dim={self.embed_dim}"


def _row_major(module: nn.Module, args: tuple, tokens: Tensor) -> Tensor:
    """The patch embedding's tokens laid out row-major. timm makes them as a transposed view of the conv's
    (batch, width, grid) output, and every residual add keeps that layout, so each block's norms would copy the
    stream to lay it out again (54 copies of SigLIP-SO400M's stream a forward)."""
    return tokens.contiguous()


def default_layer(model_name: str) -> int:
    """The block whose features LLaVA-1.5 feeds the language model: the penultimate for CLIP ViTs, else the last."""
    return -2 if "_clip_" in model_name else -1


def save_timm_checkpoint(model: nn.Module, path: str | Path) -> Path:
    """Write a timm model's weights as safetensors (the format timm's hub checkpoints use)."""
    from safetensors.torch import save_file

    path = Path(path)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path
