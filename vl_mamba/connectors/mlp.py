"""``MLPConnector``: LLaVA-1.5's ``mlp2x_gelu`` projector, Linear -> GELU -> Linear."""

from __future__ import annotations

from torch import Tensor, nn

from vl_mamba.connectors.base import Connector


def mlp2x_gelu(in_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))


class MLPConnector(Connector):
    """Two linear layers with a GELU between; the hidden width is out_dim."""

    def build(self, in_dim: int, out_dim: int) -> None:
        self.mlp = mlp2x_gelu(in_dim, out_dim)

    def forward(self, features: Tensor, grid: tuple[int, int]) -> Tensor:
        return self.mlp(features)
