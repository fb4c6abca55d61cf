"""The interface every vision encoder offers: patch features on a grid, their width, the preprocessing its
weights expect, and the block class that FSDP wraps and activation checkpointing applies to."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from torch import Tensor, nn


class VisionEncoder(nn.Module, ABC):
    """Images (batch, 3, H, W) -> patch features (batch, grid_h * grid_w, embed_dim), row-major."""

    embed_dim: int
    """Width of the patch features."""
    grid: tuple[int, int]
    """Patch grid (rows, columns) for the configured image size."""

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    @abstractmethod
    def data_config(self) -> dict[str, Any]:
        """What the preprocessing must produce: input_size (3, H, W), mean, std, interpolation."""

    @property
    @abstractmethod
    def block_class(self) -> type[nn.Module]:
        """The repeated block: the unit of FSDP wrapping and activation checkpointing."""

    @abstractmethod
    def forward(self, pixel_values: Tensor) -> Tensor:
        """(batch, 3, H, W) -> (batch, num_patches, embed_dim)."""
