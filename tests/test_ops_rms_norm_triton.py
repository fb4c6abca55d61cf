"""``add_rms_norm_triton`` (this package's Triton kernels for the residual add + RMSNorm) against
``add_rms_norm_ref``: the normed output, the new residual and the gradients of x, the residual and the weight; the
first block (no residual), a residual kept in the model's dtype, only one output used, rows that do not fill the
backward's last program. On the CPU through Triton's interpreter (in a subprocess, since the switch is read when
kernels are defined), and on a GPU, where ``add_rms_norm`` runs it, also against mamba_ssm's kernel."""

from __future__ import annotations

import pytest
import torch
from _helpers import importable, needs_cuda, rel_err, run_triton_interpreted

from vl_mamba.ops import rms_norm as norm_module
from vl_mamba.ops.rms_norm import add_rms_norm_ref, backward_rows

# (shape, x dtype, residual: None / its dtype, residual_in_fp32, which outputs the loss uses)
CASES = [
    ((2, 7, 300), torch.float32, torch.float32, True, "both"),
    ((3, 67, 40), torch.float32, torch.float32, True, "both"),  # 201 rows: 16 a program, the last program nine
    ((60, 70, 8), torch.float32, torch.float32, True, "both"),  # 4,200 rows: 132 partial rows, two tiles to add
    ((2, 5, 64), torch.float32, None, True, "both"),
    ((2, 5, 96), torch.bfloat16, torch.float32, True, "both"),
    ((4, 33), torch.bfloat16, torch.bfloat16, False, "both"),
    ((2, 9, 48), torch.float32, torch.float32, True, "normed"),
]


def case_errors(shape, dtype, res_dtype, in_fp32, used, device="cpu") -> list[float]:
    """Relative errors of ``add_rms_norm_triton``'s outputs and gradients against the float64 reference on the
    same (rounded) inputs, and whether the new residual's dtype follows ``residual_in_fp32``."""
    from vl_mamba.ops.rms_norm import add_rms_norm_triton

    g = torch.Generator().manual_seed(len(shape) * 100 + shape[-1])
    x = torch.randn(*shape, generator=g).to(device=device, dtype=dtype)
    res = None if res_dtype is None else torch.randn(*shape, generator=g).to(device=device, dtype=res_dtype)
    w = (1 + 0.3 * torch.randn(shape[-1], generator=g)).to(device)
    grad_out, grad_total = torch.randn(*shape, generator=g).to(device), torch.randn(*shape, generator=g).to(device)

    def run(fn, x, res, w):
        leaves = [t.detach().requires_grad_(True) for t in (x, res, w) if t is not None]
        args = iter(leaves)
        out, total = fn(next(args), None if res is None else next(args), next(args), 1e-5, in_fp32)
        loss = (out.double() * grad_out.double()).sum()
        if used == "both":
            loss = loss + (total.double() * grad_total.double()).sum()
        return [out, total, *torch.autograd.grad(loss, leaves)]

    got = run(add_rms_norm_triton, x, res, w)
    ref = run(add_rms_norm_ref, x.double(), None if res is None else res.double(), w.double())
    dtype_ok = got[1].dtype == (torch.float32 if in_fp32 else dtype) and got[0].dtype == dtype
    return [float(not dtype_ok), *(rel_err(a, b) for a, b in zip(got, ref, strict=True))]


def tolerance(dtype, res_dtype, in_fp32) -> float:
    half = torch.bfloat16 in (dtype, res_dtype) or not in_fp32
    return 2e-2 if half else 2e-5


def test_backward_rows_leave_a_program_a_multiprocessor() -> None:
    cpu = torch.device("cpu")  # counted as 8 multiprocessors
    assert backward_rows(8192, cpu) == 32 and backward_rows(201, cpu) == 16 and backward_rows(5, cpu) == 1
    assert norm_module._block(2560) == (4096, 16) and norm_module._block(40) == (64, 1)


def test_mismatched_shapes_are_refused() -> None:
    from vl_mamba.ops.rms_norm import add_rms_norm_triton

    with pytest.raises(ValueError, match="do not match"):
        add_rms_norm_triton(torch.randn(2, 8), torch.randn(2, 4), torch.ones(8))


@pytest.mark.skipif(not importable("triton"), reason="needs triton")
def test_kernels_under_the_interpreter() -> None:
    """Every case on the CPU through Triton's interpreter (bfloat16 there rounds toward zero, within the half
    tolerance)."""
    errors = run_triton_interpreted(
        "from test_ops_rms_norm_triton import CASES, case_errors; errs = [case_errors(*c) for c in CASES]", "errs"
    )
    for case, errs in zip(CASES, errors, strict=True):
        assert errs[0] == 0.0, f"dtypes of {case}"
        assert max(errs[1:]) < tolerance(*case[1:4]), (case, errs)


@pytest.mark.gpu
@needs_cuda("triton")
@pytest.mark.parametrize("case", CASES + [((4, 2048, 2560), torch.bfloat16, torch.float32, True, "both")])
def test_kernels_on_the_gpu(case) -> None:
    errs = case_errors(*case, device="cuda")
    assert errs[0] == 0.0 and max(errs[1:]) < tolerance(*case[1:4]), errs


@pytest.mark.gpu
@needs_cuda("triton")
def test_dispatch_runs_it_and_matches_mamba_ssm() -> None:
    """On a GPU ``add_rms_norm`` runs these kernels; mamba_ssm's (where installed) gives the same outputs and
    gradients within bfloat16's rounding."""
    x = torch.randn(2, 64, 2560, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    res = torch.randn(2, 64, 2560, device="cuda", requires_grad=True)
    w = torch.ones(2560, device="cuda", requires_grad=True)
    out, total = norm_module.add_rms_norm(x, res, w, 1e-5, True)
    assert type(out.grad_fn).__name__ == "_AddRMSNormBackward"
    if norm_module._cuda_norm() is None:
        pytest.skip("mamba_ssm is not installed")
    grads = [torch.randn_like(out), torch.randn_like(total)]
    ours = [out, total, *torch.autograd.grad([out, total], [x, res, w], grads)]
    out2, total2 = norm_module._cuda_norm()(x, w, None, residual=res, eps=1e-5, prenorm=True, residual_in_fp32=True)
    theirs = [out2, total2, *torch.autograd.grad([out2, total2], [x, res, w], grads)]
    for a, b in zip(ours, theirs, strict=True):
        assert rel_err(a, b) < 1e-2
