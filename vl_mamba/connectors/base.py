"""The interface of a multimodal connector: patch features at the encoder's width in, visual tokens at the
language model's width out.

A connector may be configured without widths; ``VLMamba`` calls ``connect(in_dim, out_dim)`` with the
encoder's and decoder's widths, which builds the layers. A connector built with explicit widths must match.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from torch import Tensor, nn


class Connector(nn.Module, ABC):
    """(batch, N, in_dim) patch features on a grid -> (batch, N, out_dim) visual tokens."""

    def __init__(self, in_dim: int | None = None, out_dim: int | None = None) -> None:
        super().__init__()
        self.in_dim: int | None = None
        self.out_dim: int | None = None
        if (in_dim is None) != (out_dim is None):
            raise ValueError(f"{type(self).__name__}: give both in_dim and out_dim, or neither")
        if in_dim is not None:
            self.connect(in_dim, out_dim)

    def connect(self, in_dim: int, out_dim: int) -> None:
        """Build the layers for these widths; a connector already built must have exactly these widths."""
        if self.in_dim is not None:
            if (self.in_dim, self.out_dim) != (in_dim, out_dim):
                raise ValueError(
                    f"{type(self).__name__} was built for {self.in_dim} -> {self.out_dim}, but the encoder gives "
                    f"{in_dim} and the decoder takes {out_dim}: drop in_dim/out_dim from its config or fix them"
                )
            return
        self.in_dim, self.out_dim = in_dim, out_dim
        self.build(in_dim, out_dim)

    @abstractmethod
    def build(self, in_dim: int, out_dim: int) -> None:
        """Create the layers."""

    @abstractmethod
    def forward(self, features: Tensor, grid: tuple[int, int]) -> Tensor:
        """features (batch, rows * cols, in_dim), row-major -> (batch, rows * cols, out_dim)."""

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, out_dim={self.out_dim}"
