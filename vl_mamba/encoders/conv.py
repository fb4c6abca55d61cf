"""``ConvEncoder``: a small convolutional encoder trained from scratch, for the built-in demo and tests.

A stack of stride-2 3x3 convolutions turns an image into a grid of patch features, plus a position code per grid
cell (a learned embedding, or fixed sines and cosines of the row and column); it offers the same interface as the
pretrained ViT encoders, so the rest of the model does not know the difference.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from vl_mamba.encoders.base import VisionEncoder

NORMS = ("none", "group")
POSITIONS = ("learned", "sincos")


def grid_sincos(side: int, width: int) -> Tensor:
    """Fixed 2D position codes (side * side, width), row-major: half of the channels code the row and half the
    column, as sines and cosines of ``pi * (k + 1) / 2 * p`` for the cell's centre ``p`` in (0, 1) and
    ``k = 0 .. width / 4 - 1``. The lowest frequency rises over the whole grid, so "left of" is a comparison of
    one channel; the higher ones tell neighbouring cells apart."""
    if width % 4:
        raise ValueError(f"sincos position codes need a width divisible by 4, got {width}")
    centres = (torch.arange(side, dtype=torch.float64) + 0.5) / side
    angles = centres[:, None] * (torch.arange(width // 4, dtype=torch.float64) + 1) * torch.pi / 2
    axis = torch.cat([angles.sin(), angles.cos()], dim=1)  # (side, width / 2)
    rows = axis[:, None, :].expand(side, side, -1)
    cols = axis[None, :, :].expand(side, side, -1)
    return torch.cat([rows, cols], dim=-1).reshape(side * side, width).float()


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "group":
        return nn.GroupNorm(8, channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; choose from {NORMS}")


class ConvBlock(nn.Module):
    """3x3 conv (stride 2) -> norm -> GELU -> 3x3 conv -> norm -> GELU.

    ``norm="group"`` is GroupNorm with 8 groups. It normalises each group of channels by its own statistics
    over the whole image, which on a plain background with a few small objects scales away how strongly each
    group responds, and with it most of the colour: a single object's colour plateaued near 60 % with it and
    reached 95 % in 200 steps without it (see BENCHMARKS.md, demo run). Hence ``"none"`` by default.
    """

    def __init__(self, in_channels: int, out_channels: int, norm: str = "none") -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1),
            _norm(norm, out_channels),
            nn.GELU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
            _norm(norm, out_channels),
            nn.GELU(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class ConvEncoder(VisionEncoder):
    """Images (batch, 3, S, S) -> (batch, (S / 2^k)^2, width) with k = len(channels).

    Args:
        img_size: input side in pixels.
        channels: output channels of each stride-2 block; the last is the feature width.
        frozen: start with frozen weights (a from-scratch encoder usually trains: stage ``full``).
        norm: normalisation after each convolution, ``"none"`` or ``"group"`` (see ``ConvBlock``).
        position: the position code added to each patch, ``"learned"`` (an embedding per cell) or ``"sincos"``
            (fixed, ``grid_sincos``); the fixed codes keep the grid position in the features of an encoder that
            is trained on a task that does not need it and then frozen.
    """

    def __init__(
        self,
        img_size: int = 64,
        channels: tuple[int, ...] = (32, 64, 128),
        frozen: bool = False,
        norm: str = "none",
        position: str = "learned",
    ) -> None:
        super().__init__()
        if img_size % 2 ** len(channels):
            raise ValueError(f"img_size {img_size} is not divisible by 2^{len(channels)}")
        widths = (3, *channels)
        self.blocks = nn.ModuleList(ConvBlock(a, b, norm) for a, b in zip(widths, widths[1:]))
        side = img_size // 2 ** len(channels)
        self.grid = (side, side)
        self.embed_dim = channels[-1]
        self.img_size = img_size
        if position == "learned":
            self.position = nn.Parameter(torch.zeros(1, side * side, self.embed_dim))
            nn.init.normal_(self.position, std=0.02)
        elif position == "sincos":
            self.register_buffer("position", grid_sincos(side, self.embed_dim)[None], persistent=False)
        else:
            raise ValueError(f"unknown position {position!r}; choose from {POSITIONS}")
        self.requires_grad_(not frozen)

    @property
    def data_config(self) -> dict[str, Any]:
        return {
            "input_size": (3, self.img_size, self.img_size),
            "mean": (0.5, 0.5, 0.5),
            "std": (0.5, 0.5, 0.5),
            "interpolation": "bilinear",
        }

    @property
    def block_class(self) -> type[nn.Module]:
        return ConvBlock

    def forward(self, pixel_values: Tensor) -> Tensor:
        x = pixel_values
        for block in self.blocks:
            x = block(x)
        return x.flatten(2).transpose(1, 2) + self.position
