"""``selective_scan_cuda`` (this package's CUDA kernel) against ``selective_scan_ref``: y, the last state and
every gradient, including the one that flows back from the last state; float32 and half-precision inputs; a Mamba
layer's strided operands. GPU only (the kernel is built with nvcc on first use)."""

from __future__ import annotations

import pytest
import torch
from _helpers import needs_cuda, rel_err

pytestmark = [pytest.mark.gpu, needs_cuda()]

# (batch, dim, L, N, groups, with D / z / delta bias / softplus): lengths that do and do not fill the last group of
# 8 steps and the last tile of 64; one step; channels that do not fill the last block of 32; N below 16 and odd;
# one group of B and C; groups of one and of three blocks of 32 channels (a 2D scan's directions, at the patch
# grid's length 27 x 27); no optional input.
CASES = [
    (2, 64, 300, 16, None, True),
    (1, 40, 1, 4, None, True),
    (2, 33, 129, 5, None, False),
    (2, 96, 1000, 16, 1, True),
    (2, 128, 300, 16, 4, True),
    (2, 192, 729, 16, 2, True),
    (1, 64, 77, 5, 2, False),
    (1, 32, 4099, 16, None, True),
    (3, 7, 8, 1, None, True),
]


def scan_case(batch, dim, length, n, groups, full, dtype=torch.float32, w_dtype=None, seed=0):
    """Arguments on the GPU (all requiring gradients), and the gradients of y and of the last state."""
    g = torch.Generator().manual_seed(seed * 1000 + length * 31 + dim)

    def rand(*shape, scale=1.0, dt=dtype):
        return (torch.randn(*shape, generator=g) * scale).to(device="cuda", dtype=dt).requires_grad_(True)

    bc = (batch, n, length) if groups is None else (batch, groups, n, length)
    A = (-(torch.rand(dim, n, generator=g) * 3 + 0.05)).cuda().requires_grad_(True)
    args = [rand(batch, dim, length), rand(batch, dim, length, scale=0.5), A, rand(*bc, dt=w_dtype or dtype),
            rand(*bc, dt=w_dtype or dtype)]
    args += [rand(dim, dt=torch.float32), rand(batch, dim, length), rand(dim, scale=0.1, dt=torch.float32)] if full \
        else [None, None, None]
    grad_y = torch.randn(batch, dim, length, generator=g).to(device="cuda", dtype=dtype)
    grad_last = torch.randn(batch, dim, n, generator=g).cuda()
    return args, full, grad_y, grad_last


def outputs(fn, args, softplus, grad_y, grad_last, with_last=True):
    """y, the last state and the gradient of every given input."""
    y, last = fn(*args, delta_softplus=softplus, return_last_state=True)
    wanted = [a for a in args if a is not None]
    loss = (y.float() * grad_y.float()).sum()
    if with_last:
        loss = loss + (last.float() * grad_last).sum()
    return [y, last, *torch.autograd.grad(loss, wanted)]


def errors(args, softplus, grad_y, grad_last, with_last=True) -> list[float]:
    from vl_mamba.ops.scan_cuda import selective_scan_cuda
    from vl_mamba.ops.selective_scan import selective_scan_ref

    ref_args = [None if a is None else a.detach().float().requires_grad_(True) for a in args]
    got = outputs(selective_scan_cuda, args, softplus, grad_y, grad_last, with_last)
    ref = outputs(selective_scan_ref, ref_args, softplus, grad_y, grad_last, with_last)
    return [rel_err(a, r) for a, r in zip(got, ref, strict=True)]


@pytest.mark.parametrize("case", CASES)
def test_float32_matches_reference(case) -> None:
    errs = errors(*scan_case(*case))
    assert max(errs) < 2e-5, errs


def test_without_last_state_gradient() -> None:
    errs = errors(*scan_case(2, 64, 300, 16, None, True), with_last=False)
    assert max(errs) < 2e-5, errs


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("w_dtype", [None, torch.float32])
def test_half_precision_inputs(dtype, w_dtype) -> None:
    """Half-precision u, delta, z (and B, C unless float32): computed in float32, rounded once at the end."""
    errs = errors(*scan_case(2, 96, 1000, 16, None, True, dtype=dtype, w_dtype=w_dtype))
    assert max(errs) < 1e-2, errs


def test_groups_in_half_precision() -> None:
    """Four groups of B and C in bfloat16, as the VSS connector's cross scan passes them."""
    errs = errors(*scan_case(2, 256, 729, 16, 4, True, dtype=torch.bfloat16))
    assert max(errs) < 1e-2, errs


def test_groups_that_split_a_block_go_elsewhere() -> None:
    """Groups of B and C that do not each span whole blocks of 32 channels are refused, and ``selective_scan_fn``
    runs another kernel on them (still matching the reference)."""
    from vl_mamba.ops.scan_cuda import selective_scan_cuda, supports
    from vl_mamba.ops.selective_scan import selective_scan_fn, selective_scan_ref

    args, softplus, _, _ = scan_case(2, 96, 50, 16, 2, True)  # 48 channels a group
    assert not supports(args[0], args[2], args[3])
    with pytest.raises(RuntimeError, match="groups of a multiple of 32"):
        selective_scan_cuda(*[a.detach() for a in args])
    detached = [a.detach() for a in args]
    y = selective_scan_fn(*detached, delta_softplus=softplus)
    assert rel_err(y, selective_scan_ref(*detached, delta_softplus=softplus)) < 2e-5


def test_layer_layouts() -> None:
    """Operands as a Mamba layer passes them: z a strided half of in_proj's output, delta and B, C views of
    projections (B and C with a time stride other than 1 are copied)."""
    batch, dim, length, n = 2, 64, 257, 16
    args, softplus, grad_y, grad_last = scan_case(batch, dim, length, n, None, True)
    xz = torch.randn(2 * dim, batch, length, device="cuda").transpose(0, 1).requires_grad_(True)
    x_dbl = torch.randn(batch, length, 2 * n + 4, device="cuda").transpose(1, 2).requires_grad_(True)
    args[6] = xz[:, dim:]
    args[3], args[4] = x_dbl[:, 4:4 + n], x_dbl[:, 4 + n:]
    errs = errors(args, softplus, grad_y, grad_last)
    assert max(errs) < 2e-5, errs


def test_no_gradient_keeps_no_states() -> None:
    from vl_mamba.ops.scan_cuda import selective_scan_cuda
    from vl_mamba.ops.selective_scan import selective_scan_ref

    args, softplus, _, _ = scan_case(2, 64, 300, 16, None, True)
    args = [a.detach() for a in args]
    y, last = selective_scan_cuda(*args, delta_softplus=softplus, return_last_state=True)
    y_ref, last_ref = selective_scan_ref(*args, delta_softplus=softplus, return_last_state=True)
    assert y.grad_fn is None
    assert rel_err(y, y_ref) < 2e-5 and rel_err(last, last_ref) < 2e-5


def test_refuses_what_it_does_not_take() -> None:
    from vl_mamba.ops.scan_cuda import selective_scan_cuda, supports

    args, _, _, _ = scan_case(1, 8, 16, 17, None, False)
    assert not supports(args[0], args[2], args[3])
    with pytest.raises(RuntimeError, match="at most 16 states"):
        selective_scan_cuda(*[a.detach() for a in args[:5]])
    assert not supports(args[0].cpu(), args[2], args[3])


def test_dispatch_unless_turned_off(monkeypatch) -> None:
    """``selective_scan_fn`` runs this kernel unless ``VL_MAMBA_CUDA_SCAN=0`` turns it off (unset: on the cards it
    was measured on, compute capability 9.0 and up)."""
    from vl_mamba.ops import cuda_build
    from vl_mamba.ops.selective_scan import selective_scan_fn

    args, softplus, _, _ = scan_case(2, 64, 300, 16, None, True)
    monkeypatch.delenv("VL_MAMBA_CUDA_SCAN", raising=False)
    taken = type(selective_scan_fn(*args, delta_softplus=softplus).grad_fn).__name__ == "_CudaScanBackward"
    assert taken is cuda_build.measured_card()
    monkeypatch.setenv("VL_MAMBA_CUDA_SCAN", "1")
    assert type(selective_scan_fn(*args, delta_softplus=softplus).grad_fn).__name__ == "_CudaScanBackward"
    monkeypatch.setenv("VL_MAMBA_CUDA_SCAN", "0")
    assert type(selective_scan_fn(*args, delta_softplus=softplus).grad_fn).__name__ != "_CudaScanBackward"


@pytest.mark.parametrize("batch,nstate,length,dtype", [(2, 16, 2048, torch.float32), (3, 5, 4099, torch.bfloat16),
                                                       (1, 1, 3, torch.float16), (2049, 16, 3, torch.float32)])
def test_block_sums(batch, nstate, length, dtype) -> None:
    """The backward's partial dB and dC summed over blocks, into a strided destination of any dtype: torch's sum,
    the same bits on every run (a fixed order), and the rows past ``nstate`` left out; past the kernel's grid
    (batch 2049) torch sums them."""
    from vl_mamba.ops.scan_cuda import _sum_blocks

    g = torch.Generator().manual_seed(length)
    part = torch.randn(batch, 7, 2, 16, length, generator=g).cuda()
    store = torch.empty(2, nstate, batch, length + 5, device="cuda", dtype=dtype)
    out = store[..., 5:].permute(2, 0, 1, 3)  # (batch, 2, nstate, L) with L unit-stride, the rest not
    got = _sum_blocks(part, nstate, out)
    assert got.data_ptr() == out.data_ptr()
    want = part[:, :, :, :nstate].double().sum(1)
    assert rel_err(got, want) < (1e-6 if dtype == torch.float32 else 1e-2)
    again = _sum_blocks(part, nstate, torch.empty_like(out))
    assert torch.equal(got, again)
    assert _sum_blocks(part, nstate, None).dtype == torch.float32
    with pytest.raises(ValueError, match="dbc"):
        _sum_blocks(part, nstate, torch.empty(batch, 2, nstate + 1, length, device="cuda"))
