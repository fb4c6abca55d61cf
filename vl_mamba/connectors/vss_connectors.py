"""The paper's two scan connectors (Fig. 2):

- ``VSSMLPConnector``: ``V_out = MLP(Norm(VSS(V_img) + V_img))``, the scan at the vision width.
- ``VSSL2Connector`` (the final model): ``V' = Linear(V_img)``, ``V_scan = VSS(GELU(V'))``,
  ``V_out = Linear(Norm(V_scan + V'))``, the scan at the language model's width.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from vl_mamba.connectors.base import Connector
from vl_mamba.connectors.mlp import mlp2x_gelu
from vl_mamba.connectors.vss import VSS


class _VSSConnector(Connector):
    """Holds the VSS hyper-parameters until ``connect`` knows the widths.

    Args:
        in_dim, out_dim: widths, or None to take them from the encoder and decoder.
        scan: scan order: ``uni``, ``bi`` (BSM), ``cross`` (CSM) or a registered one.
        d_state: SSM state size.
        expand: VSS inner width over its input width.
        dt_rank: time-step rank; None means ceil(width / 16).
        d_conv: depthwise conv kernel size.
        dt_min, dt_max: range of the initial time steps (SS2D's 0.001-0.1 by default; see ``VSS``).
    """

    def __init__(
        self,
        in_dim: int | None = None,
        out_dim: int | None = None,
        scan: str = "bi",
        d_state: int = 16,
        expand: int = 2,
        dt_rank: int | None = None,
        d_conv: int = 3,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
    ) -> None:
        self.vss_kwargs = dict(
            scan=scan, d_state=d_state, expand=expand, dt_rank=dt_rank, d_conv=d_conv, dt_min=dt_min, dt_max=dt_max
        )
        super().__init__(in_dim, out_dim)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, scan={self.vss_kwargs['scan']}"


class VSSMLPConnector(_VSSConnector):
    """``MLP(LayerNorm(VSS(V) + V))`` with the VSS at the vision width."""

    def build(self, in_dim: int, out_dim: int) -> None:
        self.vss = VSS(in_dim, **self.vss_kwargs)
        self.norm = nn.LayerNorm(in_dim)
        self.mlp = mlp2x_gelu(in_dim, out_dim)

    def forward(self, features: Tensor, grid: tuple[int, int]) -> Tensor:
        return self.mlp(self.norm(self.vss(features, grid) + features))


class VSSL2Connector(_VSSConnector):
    """``Linear(LayerNorm(VSS(GELU(V')) + V'))`` with ``V' = Linear(V)``: the scan at the LM width."""

    def build(self, in_dim: int, out_dim: int) -> None:
        self.proj_in = nn.Linear(in_dim, out_dim)
        self.vss = VSS(out_dim, **self.vss_kwargs)
        self.norm = nn.LayerNorm(out_dim)
        self.proj_out = nn.Linear(out_dim, out_dim)

    def forward(self, features: Tensor, grid: tuple[int, int]) -> Tensor:
        projected = self.proj_in(features)
        scanned = self.vss(F.gelu(projected), grid)
        return self.proj_out(self.norm(scanned + projected))
