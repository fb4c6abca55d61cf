"""``cross_entropy_sum_triton`` (this package's Triton kernels for the summed cross-entropy) against
``cross_entropy_sum_ref`` (``F.cross_entropy`` on float32 logits): the loss and the logits' gradient, scaled by the
loss's incoming gradient; rows longer than a block (the running maximum found late), ignored rows, half-precision
logits, a target outside the classes. On the CPU through Triton's interpreter (in a subprocess, since the switch
is read when kernels are defined), and on a GPU, where ``cross_entropy_sum`` runs it."""

from __future__ import annotations

import math

import pytest
import torch
from _helpers import importable, needs_cuda, rel_err, run_triton_interpreted

from vl_mamba.ops.cross_entropy import cross_entropy_sum, cross_entropy_sum_ref

# (rows, classes, logits dtype, rows ignored): classes over two blocks of 4,096 and not a multiple of one; a row
# whose largest logit lies in its last block.
CASES = [(5, 300, torch.float32, 0), (3, 9000, torch.float32, 1), (4, 4097, torch.bfloat16, 2)]


def case_errors(rows, classes, dtype, ignored, device="cpu") -> list[float]:
    """Relative errors of the Triton loss and gradient (the loss times 2.5 differentiated) against the float64
    reference on the same (rounded) logits."""
    from vl_mamba.ops.cross_entropy import cross_entropy_sum_triton

    g = torch.Generator().manual_seed(rows * classes)
    logits = (torch.randn(rows, classes, generator=g) * 3).to(device=device, dtype=dtype)
    logits[0, -1] = 40.0  # the row's maximum, in its last block
    targets = torch.randint(0, classes, (rows,), generator=g).to(device)
    targets[rows - ignored:] = -100
    results = []
    for fn, x in ((cross_entropy_sum_triton, logits), (cross_entropy_sum_ref, logits.double())):
        x = x.detach().requires_grad_(True)
        loss = fn(x, targets)
        (grad,) = torch.autograd.grad(loss * 2.5, x)
        results.append((loss, grad))
    (loss, grad), (loss_ref, grad_ref) = results
    dtype_ok = loss.dtype == torch.float32 and grad.dtype == dtype and loss.shape == ()
    return [float(not dtype_ok), rel_err(loss, loss_ref), rel_err(grad, grad_ref),
            float(grad[rows - ignored:].abs().sum()) if ignored else 0.0]


def out_of_range_is_nan(device="cpu") -> bool:
    from vl_mamba.ops.cross_entropy import cross_entropy_sum_triton

    logits = torch.randn(2, 10, device=device)
    return math.isnan(float(cross_entropy_sum_triton(logits, torch.tensor([3, 10], device=device))))


def test_cpu_is_the_reference() -> None:
    logits, targets = torch.randn(4, 7, dtype=torch.bfloat16), torch.tensor([1, 6, -100, 0])
    expected = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum")
    assert torch.equal(cross_entropy_sum(logits, targets), expected)


def test_shapes_are_checked() -> None:
    from vl_mamba.ops.cross_entropy import cross_entropy_sum_triton

    with pytest.raises(ValueError, match="targets"):
        cross_entropy_sum_triton(torch.randn(4, 7), torch.zeros(3, dtype=torch.long))


@pytest.mark.skipif(not importable("triton"), reason="needs triton")
def test_kernels_under_the_interpreter() -> None:
    """Every case on the CPU through Triton's interpreter (bfloat16 there rounds toward zero)."""
    errors, nan = run_triton_interpreted(
        "from test_ops_cross_entropy import CASES, case_errors, out_of_range_is_nan; "
        "res = [[case_errors(*c) for c in CASES], out_of_range_is_nan()]", "res"
    )
    assert nan
    for case, errs in zip(CASES, errors, strict=True):
        assert errs[0] == 0.0 and errs[3] == 0.0, (case, errs)  # dtypes; ignored rows have no gradient
        assert errs[1] < 1e-6 and errs[2] < (1e-2 if case[2] == torch.bfloat16 else 1e-6), (case, errs)


@pytest.mark.gpu
@needs_cuda("triton")
@pytest.mark.parametrize("case", CASES + [(2640, 50280, torch.bfloat16, 0)])
def test_kernels_on_the_gpu(case) -> None:
    errs = case_errors(*case, device="cuda")
    assert errs[0] == 0.0 and errs[3] == 0.0, errs
    assert errs[1] < 1e-6 and errs[2] < (1e-2 if case[2] == torch.bfloat16 else 1e-5), errs
    assert out_of_range_is_nan("cuda")
    logits = torch.randn(3, 50, device="cuda", requires_grad=True)
    assert type(cross_entropy_sum(logits, torch.tensor([1, 2, 3], device="cuda")).grad_fn).__name__ == \
        "_CrossEntropySumBackward"
