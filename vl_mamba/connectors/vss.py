"""``VSS``: the 2D selective-scan module (VMamba's SS2D shape) that the VSS connectors are built around.

in_proj to x and z; depthwise 3x3 conv + SiLU on the patch grid; the grid unrolled in K directions (the
scan order); each direction with its own x_proj, dt_proj, A_log and D, all K * d_inner channels scanned in one
``selective_scan_fn`` call; outputs rolled back to patch order and summed; LayerNorm; gate with SiLU(z);
out_proj.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vl_mamba.connectors.scan_orders import merge, num_directions, scan, scan_permutations
from vl_mamba.decoders.mamba_block import init_dt_proj
from vl_mamba.ops import selective_scan_fn


class VSS(nn.Module):
    """2D selective scan over a patch grid.

    Args:
        d_model: input and output width.
        scan: scan order name: ``uni``, ``bi`` (BSM), ``cross`` (CSM), or one registered later.
        d_state: SSM state size N.
        expand: d_inner = expand * d_model.
        dt_rank: rank of the time-step projection; None means ceil(d_model / 16).
        d_conv: depthwise conv kernel size.
        conv_bias: bias in the depthwise conv.
        bias: bias in in_proj and out_proj.
        dt_min, dt_max, dt_init_floor: range of the initial time steps.
        dropout: dropout before out_proj.
    """

    def __init__(
        self,
        d_model: int,
        scan: str = "bi",
        d_state: int = 16,
        expand: int = 2,
        dt_rank: int | None = None,
        d_conv: int = 3,
        conv_bias: bool = True,
        bias: bool = False,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.scan_order = scan
        k = num_directions(scan)
        e = expand * d_model
        r = dt_rank or math.ceil(d_model / 16)
        self.d_inner, self.d_state, self.dt_rank, self.directions = e, d_state, r, k
        self.in_proj = nn.Linear(d_model, 2 * e, bias=bias)
        self.conv2d = nn.Conv2d(e, e, d_conv, padding=(d_conv - 1) // 2, groups=e, bias=conv_bias)
        self.x_proj_weight = nn.Parameter(torch.empty(k, r + 2 * d_state, e))
        self.dt_projs_weight = nn.Parameter(torch.empty(k, e, r))
        self.dt_projs_bias = nn.Parameter(torch.empty(k, e))
        self.A_logs = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(k * e, 1))
        self.Ds = nn.Parameter(torch.ones(k * e))
        self.out_norm = nn.LayerNorm(e)
        self.out_proj = nn.Linear(e, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)
        for p in (self.A_logs, self.Ds, self.dt_projs_bias):
            p._no_weight_decay = True
        with torch.no_grad():
            bound = 1 / math.sqrt(e)
            self.x_proj_weight.uniform_(-bound, bound)
            for i in range(k):
                dt_proj = nn.Linear(r, e)
                init_dt_proj(dt_proj, r, dt_min, dt_max, dt_init_floor)
                self.dt_projs_weight[i].copy_(dt_proj.weight)
                self.dt_projs_bias[i].copy_(dt_proj.bias)
        self._perms: dict[tuple[int, int, torch.device], Tensor] = {}

    def permutations(self, grid: tuple[int, int], device: torch.device) -> Tensor:
        key = (grid[0], grid[1], device)
        if key not in self._perms:
            self._perms[key] = scan_permutations(self.scan_order, *grid).to(device)
        return self._perms[key]

    def forward(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        """x (batch, rows * cols, d_model) in row-major patch order -> same shape."""
        batch, length, _ = x.shape
        rows, cols = grid
        if rows * cols != length:
            raise ValueError(f"grid {rows}x{cols} does not hold {length} patches")
        k, e, n, r = self.directions, self.d_inner, self.d_state, self.dt_rank
        x, z = self.in_proj(x).chunk(2, dim=-1)
        x = x.transpose(1, 2).reshape(batch, e, rows, cols)
        x = F.silu(self.conv2d(x)).flatten(2)  # (batch, e, L)
        perms = self.permutations(grid, x.device)
        xs = scan(x, perms)  # (batch, k, e, L)
        # Batched products over (batch, direction) that read xs and x_dbl in place (an einsum would lay xs out
        # direction-major first).
        x_dbl = torch.matmul(self.x_proj_weight.to(xs.dtype), xs)  # (batch, k, r + 2n, L)
        dts, Bs, Cs = x_dbl.split([r, n, n], dim=2)
        dts = torch.matmul(self.dt_projs_weight.to(xs.dtype), dts)  # (batch, k, e, L)
        ys = selective_scan_fn(
            xs.reshape(batch, k * e, length),
            dts.reshape(batch, k * e, length),
            -torch.exp(self.A_logs.float()),
            Bs.contiguous(),
            Cs.contiguous(),
            self.Ds.float(),
            delta_bias=self.dt_projs_bias.float().view(-1),
            delta_softplus=True,
        )
        y = merge(ys.view(batch, k, e, length), perms)  # (batch, e, L)
        y = self.out_norm(y.transpose(1, 2)) * F.silu(z)
        return self.out_proj(self.dropout(y))

    def extra_repr(self) -> str:
        return f"scan={self.scan_order}, directions={self.directions}, d_inner={self.d_inner}, d_state={self.d_state}"
