"""``selective_scan_triton`` against ``selective_scan_ref``: y, the last state and every gradient (including the
one that flows back from the last state), on the CPU through Triton's interpreter (in a subprocess, since the
switch is read when kernels are defined) and on a GPU, in float32 and bf16."""

from __future__ import annotations

import pytest
import torch
from _helpers import needs_cuda, rel_err, run_triton_interpreted

# (batch, dim, L, N, groups, with D / z / delta bias / softplus, tile steps, block of channels): lengths that
# do and do not fill the last chunk, length 1, one chunk, N not a power of two, groups, no optional input.
CASES = [
    (2, 8, 20, 4, None, True, 8, 4),
    (1, 4, 1, 4, None, True, 8, 4),
    (2, 8, 16, 3, None, True, 8, 2),
    (2, 8, 19, 4, 2, False, 8, 4),
    (1, 12, 33, 5, None, True, 16, 8),
    (2, 6, 9, 16, None, True, 32, 4),
]

# Larger ones on a GPU: a Mamba layer's state size over several chunks, and a long odd length.
GPU_CASES = [(2, 512, 1000, 16, None, True, 64, 4), (1, 256, 4099, 16, None, True, 128, 2)]


def scan_case(batch, dim, length, n, groups, full, steps, block_d, device="cpu", dtype=torch.float32):
    """Arguments (all requiring gradients), and the gradients of y and of the last state to push back."""
    g = torch.Generator().manual_seed(length * 31 + dim)

    def rand(*shape, scale=1.0, dt=dtype):
        return (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dt).requires_grad_(True)

    bc = (batch, n, length) if groups is None else (batch, groups, n, length)
    A = (-(torch.rand(dim, n, generator=g) * 3 + 0.05)).to(device).requires_grad_(True)
    args = [rand(batch, dim, length), rand(batch, dim, length, scale=0.5), A, rand(*bc), rand(*bc)]
    args += [rand(dim, dt=torch.float32), rand(batch, dim, length), rand(dim, scale=0.1, dt=torch.float32)] if full \
        else [None, None, None]
    grad_y = torch.randn(batch, dim, length, generator=g).to(device=device, dtype=dtype)
    grad_last = torch.randn(batch, dim, n, generator=g).to(device)
    return args, full, grad_y, grad_last


def scan_errors(case: tuple, device: str = "cpu", dtype: torch.dtype = torch.float32) -> list[float]:
    """Relative errors of y, the last state and each gradient, Triton against the float32 reference."""
    from vl_mamba.ops import scan_triton
    from vl_mamba.ops.selective_scan import selective_scan_ref

    *shape, steps, block_d = case
    args, softplus, grad_y, grad_last = scan_case(*shape, steps, block_d, device=device, dtype=dtype)
    saved, scan_triton.CONFIG = scan_triton.CONFIG, scan_triton.ScanConfig(block_d, steps, 4, block_d, 4)
    outs = []
    try:
        for fn, inputs in (
            (scan_triton.selective_scan_triton, args),
            (selective_scan_ref, [None if a is None else a.detach().float().requires_grad_(True) for a in args]),
        ):
            y, last = fn(*inputs, delta_softplus=softplus, return_last_state=True)
            wanted = [a for a in inputs if a is not None]
            loss = (y.float() * grad_y.float()).sum() + (last * grad_last).sum()
            outs.append([y, last, *torch.autograd.grad(loss, wanted)])
    finally:
        scan_triton.CONFIG = saved
    return [rel_err(got, ref) for got, ref in zip(*outs, strict=True)]


def test_interpreted_matches_reference() -> None:
    errors = run_triton_interpreted("import test_ops_scan_triton as t", "[t.scan_errors(c) for c in t.CASES]")
    for case, errs in zip(CASES, errors, strict=True):
        assert max(errs) < 2e-6, (case, errs)


def test_empty_inputs() -> None:
    """No time steps, or no sequences: the same empty results as the reference (no kernel is launched)."""
    from vl_mamba.ops.scan_triton import selective_scan_triton
    from vl_mamba.ops.selective_scan import selective_scan_ref

    for batch, length in ((2, 0), (0, 5)):
        args = [torch.randn(batch, 8, length), torch.randn(batch, 8, length), -torch.rand(8, 4),
                torch.randn(batch, 4, length), torch.randn(batch, 4, length)]
        y, last = selective_scan_triton(*args, return_last_state=True)
        y_ref, last_ref = selective_scan_ref(*args, return_last_state=True)
        assert y.shape == y_ref.shape and torch.equal(last, last_ref)


def test_offsets_within_a_sequence() -> None:
    """The kernels' 32-bit offsets cover one sequence: its extent counts every axis but the batch, with the
    strides of views such as a half of in_proj's output (channel stride batch x L)."""
    from vl_mamba.ops.scan_triton import _extent

    xz = torch.empty(6, 3, 10).transpose(0, 1)  # (batch 3, channels 6, L 10), strides (10, 30, 1)
    assert _extent(xz) == 5 * 30 + 9
    assert _extent(torch.empty(3, 2, 4, 10)) == 1 * 40 + 3 * 10 + 9


def test_no_gradient_no_states() -> None:
    """Without a backward to follow, the forward keeps no per-chunk states (checked through the interpreter)."""
    result = run_triton_interpreted(
        "import test_ops_scan_triton as t; from vl_mamba.ops.scan_triton import selective_scan_triton as f; "
        "from vl_mamba.ops.selective_scan import selective_scan_ref as r; "
        "a, sp, _, _ = t.scan_case(*t.CASES[0][:-2], 8, 4); a = [x.detach() for x in a]; "
        "y, h = f(*a, delta_softplus=sp, return_last_state=True); "
        "yr, hr = r(*a, delta_softplus=sp, return_last_state=True)",
        "[float((y - yr).abs().max()), float((h - hr).abs().max()), y.grad_fn is None]",
    )
    assert result[0] < 1e-5 and result[1] < 1e-5 and result[2], result


@pytest.mark.gpu
@needs_cuda("triton")
@pytest.mark.parametrize("case", [*CASES, *GPU_CASES])
def test_gpu_float32_matches_reference(case) -> None:
    errs = scan_errors(case, device="cuda")
    assert max(errs) < 2e-5, errs


@pytest.mark.gpu
@needs_cuda("triton")
def test_gpu_bf16_as_close_as_mamba_ssm() -> None:
    """In bf16 both kernels round y and the input gradients to bf16: the Triton scan is within twice mamba_ssm's
    error of the float32 reference, or within 1e-2, for every output."""
    pytest.importorskip("mamba_ssm")
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as direct

    from vl_mamba.ops import scan_triton
    from vl_mamba.ops.selective_scan import selective_scan_ref

    args, softplus, grad_y, _ = scan_case(2, 512, 1000, 16, None, True, 64, 4, device="cuda", dtype=torch.bfloat16)
    outs = []
    ref_args = [a.detach().float().requires_grad_(True) for a in args]
    for fn, inputs in ((scan_triton.selective_scan_triton, args), (direct, args), (selective_scan_ref, ref_args)):
        y = fn(*inputs, delta_softplus=softplus)
        outs.append([y, *torch.autograd.grad(y, inputs, grad_y.to(y.dtype))])
    for ours, theirs, ref in zip(*outs, strict=True):
        assert rel_err(ours, ref) < max(2 * rel_err(theirs, ref), 1e-2), (rel_err(ours, ref), rel_err(theirs, ref))


@pytest.mark.gpu
@needs_cuda("triton")
def test_dispatch_takes_triton_without_mamba_ssm(monkeypatch) -> None:
    """Where mamba_ssm is not installed (and this package's CUDA scan is turned off), ``selective_scan_fn`` runs the
    Triton scan on CUDA tensors, not the PyTorch one."""
    from vl_mamba.ops import scan_triton
    from vl_mamba.ops import selective_scan as module

    monkeypatch.setenv("VL_MAMBA_CUDA_SCAN", "0")
    monkeypatch.setattr(module, "_cuda_scan", lambda: None)
    monkeypatch.setattr(scan_triton, "CONFIG", scan_triton.ScanConfig())
    args, softplus, _, _ = scan_case(2, 64, 300, 16, None, True, 64, 4, device="cuda", dtype=torch.bfloat16)
    args = [a.detach() for a in args]
    got = module.selective_scan_fn(*args, delta_softplus=softplus)
    torch.testing.assert_close(got, scan_triton.selective_scan_triton(*args, delta_softplus=softplus), rtol=0, atol=0)
