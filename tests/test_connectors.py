"""The VSS module against a hand-written loop over ``selective_scan_ref`` (each direction unrolled by hand from
the patch grid), the three connectors' shapes on square and non-square grids and their formulas from the
paper, and the errors for widths or grids that do not fit."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _helpers import assert_close_rel
from torch import Tensor

from vl_mamba.connectors import VSS, MLPConnector, VSSL2Connector, VSSMLPConnector
from vl_mamba.ops import selective_scan_ref

GRIDS = [(3, 5), (5, 3), (1, 4), (2, 2)]


def _row(g: Tensor) -> Tensor:
    return g.flatten(2)


def _col(g: Tensor) -> Tensor:
    return g.transpose(2, 3).flatten(2)


def _col_back(y: Tensor, rows: int, cols: int) -> Tensor:
    return y.unflatten(2, (cols, rows)).transpose(2, 3).flatten(2)


# Each direction by hand: grid (b, e, rows, cols) -> sequence (b, e, L), and the scanned sequence back to
# row-major patch order.
DIRECTIONS = {
    "uni": [(_row, lambda y, r, c: y)],
    "bi": [(_row, lambda y, r, c: y), (lambda g: _row(g).flip(-1), lambda y, r, c: y.flip(-1))],
    "cross": [
        (_row, lambda y, r, c: y),
        (_col, _col_back),
        (lambda g: _row(g).flip(-1), lambda y, r, c: y.flip(-1)),
        (lambda g: _col(g).flip(-1), lambda y, r, c: _col_back(y.flip(-1), r, c)),
    ],
}


def vss_by_hand(vss: VSS, x: Tensor, grid: tuple[int, int]) -> Tensor:
    """SS2D written out: one ``selective_scan_ref`` call per direction with that direction's parameters."""
    rows, cols = grid
    batch, length, _ = x.shape
    e = vss.d_inner
    xi, z = vss.in_proj(x).chunk(2, dim=-1)
    xi = F.silu(vss.conv2d(xi.transpose(1, 2).reshape(batch, e, rows, cols)))
    merged = 0
    for k, (unroll, roll_back) in enumerate(DIRECTIONS[vss.scan_order]):
        seq = unroll(xi)  # (b, e, L)
        x_dbl = torch.einsum("ce,bel->bcl", vss.x_proj_weight[k], seq)
        dt, B, C = x_dbl.split([vss.dt_rank, vss.d_state, vss.d_state], dim=1)
        dt = torch.einsum("er,brl->bel", vss.dt_projs_weight[k], dt)
        channels = slice(k * e, (k + 1) * e)
        # As mamba_ssm's layers do, VSS reads A, D and the time-step bias in float32 (kept so under autocast).
        A = -torch.exp(vss.A_logs[channels].float())
        D, bias = vss.Ds[channels].float(), vss.dt_projs_bias[k].float()
        y = selective_scan_ref(seq, dt, A, B, C, D, delta_bias=bias, delta_softplus=True)
        merged = merged + roll_back(y, rows, cols)
    y = vss.out_norm(merged.transpose(1, 2)) * F.silu(z)
    return vss.out_proj(y)


def _perturb(module: torch.nn.Module, seed: int = 0) -> None:
    """Move every parameter off its initial value, so that no term of the formula is trivially 0 or 1."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))


@pytest.mark.parametrize("order", ["uni", "bi", "cross"])
@pytest.mark.parametrize("grid", [(3, 4), (4, 3), (1, 5)], ids=str)
def test_vss_equals_hand_written_loop_over_ref(order, grid):
    torch.manual_seed(0)
    vss = VSS(6, scan=order, d_state=3, expand=2).double()
    _perturb(vss)
    x = torch.randn(2, grid[0] * grid[1], 6, dtype=torch.float64, requires_grad=True)
    out = vss(x, grid)
    (grad,) = torch.autograd.grad(out.sum(), x)
    x2 = x.detach().clone().requires_grad_()
    expected = vss_by_hand(vss, x2, grid)
    (grad_expected,) = torch.autograd.grad(expected.sum(), x2)
    assert out.shape == x.shape
    assert_close_rel(out, expected, 1e-10, "output")
    assert_close_rel(grad, grad_expected, 1e-10, "grad of the input")


def test_vss_defaults_follow_ss2d():
    vss = VSS(40)
    assert (vss.d_state, vss.d_inner, vss.dt_rank, vss.directions) == (16, 80, 3, 2)
    assert vss.conv2d.kernel_size == (3, 3) and vss.conv2d.groups == 80
    assert vss.x_proj_weight.shape == (2, 3 + 32, 80) and vss.dt_projs_weight.shape == (2, 80, 3)
    assert vss.A_logs.shape == (160, 16) and vss.Ds.shape == (160,)
    assert torch.allclose(-torch.exp(vss.A_logs[0]), -torch.arange(1.0, 17.0))  # S4D-real A
    dt = F.softplus(vss.dt_projs_bias)
    assert dt.min() >= 1e-4 - 1e-7 and dt.max() <= 0.1 + 1e-6


def _connectors(scan: str) -> list:
    return [
        MLPConnector(),
        VSSMLPConnector(scan=scan, d_state=4),
        VSSL2Connector(scan=scan, d_state=4),
    ]


@pytest.mark.parametrize("scan", ["uni", "bi", "cross"])
@pytest.mark.parametrize("grid", GRIDS, ids=str)
def test_connector_shapes(scan, grid):
    rows, cols = grid
    features = torch.randn(3, rows * cols, 12)
    for connector in _connectors(scan):
        connector.connect(12, 20)
        out = connector(features, grid)
        assert out.shape == (3, rows * cols, 20), type(connector).__name__
        assert torch.isfinite(out).all()


def test_connectors_compute_the_papers_formulas():
    torch.manual_seed(0)
    v = torch.randn(2, 6, 12)
    grid = (2, 3)
    mlp = MLPConnector(12, 20)
    assert torch.allclose(mlp(v, grid), mlp.mlp[2](F.gelu(mlp.mlp[0](v))))
    vss_mlp = VSSMLPConnector(12, 20, scan="bi", d_state=4)
    assert vss_mlp.vss.d_inner == 24  # the scan runs at the vision width
    expected = vss_mlp.mlp(vss_mlp.norm(vss_mlp.vss(v, grid) + v))
    assert torch.allclose(vss_mlp(v, grid), expected)
    l2 = VSSL2Connector(12, 20, scan="bi", d_state=4)
    assert l2.vss.d_inner == 40  # the scan runs at the language model's width
    projected = l2.proj_in(v)
    expected = l2.proj_out(l2.norm(l2.vss(F.gelu(projected), grid) + projected))
    assert torch.allclose(l2(v, grid), expected)


def test_width_mismatch_is_a_clear_error():
    for connector in (MLPConnector(16, 32), VSSMLPConnector(16, 32, d_state=2), VSSL2Connector(16, 32, d_state=2)):
        connector.connect(16, 32)  # the same widths again: fine
        with pytest.raises(ValueError, match=r"was built for 16 -> 32, but the encoder gives 24"):
            connector.connect(24, 32)
        with pytest.raises(ValueError, match=r"was built for 16 -> 32, .* the decoder takes 48"):
            connector.connect(16, 48)


def test_only_one_width_is_an_error():
    with pytest.raises(ValueError, match="give both in_dim and out_dim, or neither"):
        MLPConnector(in_dim=16)
    with pytest.raises(ValueError, match="give both in_dim and out_dim, or neither"):
        VSSL2Connector(out_dim=16)


def test_grid_that_does_not_hold_the_patches():
    connector = VSSL2Connector(8, 8, d_state=2)
    with pytest.raises(ValueError, match="grid 3x3 does not hold 8 patches"):
        connector(torch.randn(1, 8, 8), (3, 3))


def test_unknown_scan_order():
    with pytest.raises(ValueError, match="unknown scan order 'diagonal'"):
        VSSL2Connector(8, 8, scan="diagonal")


def test_time_step_range_reaches_the_scan():
    connector = VSSL2Connector(scan="cross", d_state=4, dt_min=0.01, dt_max=0.5)
    connector.connect(12, 20)
    dt = F.softplus(connector.vss.dt_projs_bias)
    assert dt.min() >= 0.01 - 1e-6 and dt.max() <= 0.5 + 1e-6
    assert dt.max() > 0.1  # beyond SS2D's default range: the setting took effect
