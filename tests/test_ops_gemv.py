"""``linear_decode``, the batch-1 matrix-vector product of the decode step: the block choice, the CPU fallback,
and on a GPU the Triton kernel against ``F.linear`` at Mamba-2.8B's projection shapes (in the decode step:
``test_ops_decode_ssm``).
``add_rms_norm_linear_decode`` (the block's norm fused into its in_proj product) against its ``_ref``: on the CPU
through Triton's interpreter (in a subprocess, since the switch is read when kernels are defined), and on a GPU."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _helpers import importable, needs_cuda, rel_err, run_triton_interpreted

from vl_mamba.ops import (
    add_rms_norm_linear_decode,
    add_rms_norm_linear_decode_ref,
    linear_decode,
    linear_decode_ref,
)
from vl_mamba.ops import gemv as gemv_module
from vl_mamba.ops.gemv import gemv_blocks

# (out_features, d, residual given, residual in float32, bias): rows not a multiple of the kernel's blocks, a
# width not a power of two, the first block (no residual), a residual kept in the model's dtype.
NORM_CASES = [(70, 300, True, True, False), (37, 64, False, True, True), (130, 256, True, False, True)]

# (out_features, in_features) of in_proj, x_proj, dt_proj and out_proj at d_model 2560, and two odd ones.
SHAPES = [(10240, 2560), (192, 5120), (5120, 160), (2560, 5120), (37, 1000), (1, 3)]


def test_blocks_cover_rows_with_enough_programs() -> None:
    assert gemv_blocks(10240, 2560) == (2, 1024)
    assert gemv_blocks(192, 5120) == (1, 1024)  # 96 programs of two rows would leave multiprocessors idle
    assert gemv_blocks(5120, 160) == (8, 256)  # a block of columns covers the whole row
    assert gemv_blocks(1, 3) == (1, 4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_is_f_linear(dtype) -> None:
    x, w, b = torch.randn(1, 64, dtype=dtype), torch.randn(48, 64, dtype=dtype), torch.randn(48, dtype=dtype)
    torch.testing.assert_close(linear_decode(x, w, b), F.linear(x, w, b), rtol=0, atol=0)
    torch.testing.assert_close(linear_decode_ref(x, w), F.linear(x, w), rtol=0, atol=0)


def test_kernel_only_where_no_gradient_is_wanted() -> None:
    """The Triton kernel records nothing for autograd: a product whose operands want gradients goes to
    F.linear, so that calling the decode step in a training graph still trains."""
    w = torch.randn(4, 8, requires_grad=True)
    x = torch.randn(1, 8)
    assert gemv_module._needs_autograd(x, w, None)
    assert not gemv_module._needs_autograd(x, w.detach(), None)
    with torch.no_grad():
        assert not gemv_module._needs_autograd(x, w, None)
    with torch.inference_mode():
        assert not gemv_module._needs_autograd(x, w, None)
    linear_decode(x, w).sum().backward()
    torch.testing.assert_close(w.grad, x.expand(4, 8))


@pytest.mark.gpu
@needs_cuda("triton")
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_kernel_matches_float64_product(shape, dtype) -> None:
    assert gemv_module._kernel() is not None, "Triton should import where CUDA does"
    torch.manual_seed(0)
    n, k = shape
    w = torch.randn(n, k, device="cuda", dtype=dtype)
    x = torch.randn(1, k, device="cuda", dtype=dtype)
    bias = torch.randn(n, device="cuda", dtype=dtype)
    exact = F.linear(x.double(), w.double(), bias.double())
    out = linear_decode(x, w, bias)
    assert out.dtype == dtype and out.shape == (1, n)
    # float32 sums, one rounding to the output type: within that type's half ulp of the exact product
    assert rel_err(out, exact) < (4e-3 if dtype == torch.bfloat16 else 1e-3)
    assert rel_err(out, exact) <= 1.5 * rel_err(F.linear(x, w, bias), exact) + 1e-3


def gemv_errors(pdl: bool) -> list[float]:
    """Errors of ``gemv_kernel`` (called directly, float64) against the product, over the odd shapes of SHAPES, with
    the plain order of loads or the PDL one (first block of weights before the wait, without the instruction)."""
    kernel = gemv_module._kernel()
    errors = []
    for n, k in SHAPES[-2:] + [(70, 300)]:
        g = torch.Generator().manual_seed(n)
        w, x, bias = (torch.randn(*s, generator=g, dtype=torch.float64) for s in ((n, k), (1, k), (n,)))
        y = torch.empty(1, n, dtype=torch.float64)
        block_n, _ = gemv_blocks(n, k)
        grid = (-(-n // block_n),)
        kernel[grid](w, x, bias, y, n, k, HAS_BIAS=True, BLOCK_N=block_n, BLOCK_K=128, PDL=pdl, GDC=False)
        errors.append(rel_err(y, F.linear(x, w, bias)))
    return errors


@pytest.mark.skipif(not importable("triton"), reason="needs triton (installed with torch on Linux)")
def test_gemv_kernel_in_triton_interpreter() -> None:
    """Both orders of loads, with K one block, several blocks and a partial last block: float32 sums."""
    errors = run_triton_interpreted("import test_ops_gemv as t", "[t.gemv_errors(False), t.gemv_errors(True)]")
    assert max(max(e) for e in errors) < 1e-6, errors


@pytest.mark.gpu
@needs_cuda("triton")
def test_strided_row_and_fallbacks() -> None:
    torch.manual_seed(0)
    w = torch.randn(96, 256, device="cuda", dtype=torch.bfloat16)
    xz = torch.randn(1, 512, device="cuda", dtype=torch.bfloat16)
    x = xz[:, :256]  # a half of in_proj's output, as the decode step passes it
    assert rel_err(linear_decode(x, w), F.linear(x.double(), w.double())) < 4e-3
    for args in ((torch.randn(3, 256, device="cuda", dtype=torch.bfloat16), w), (x.float(), w.float())):
        torch.testing.assert_close(linear_decode(*args), F.linear(*args), rtol=0, atol=0)


def norm_inputs(n: int, d: int, with_residual: bool, residual_in_fp32: bool, bias: bool, dtype: torch.dtype,
                device: str = "cpu") -> tuple:
    """Arguments of ``add_rms_norm_linear_decode``, the residual in float32 as the decoder keeps it."""
    g = torch.Generator().manual_seed(0)

    def rand(*shape, dt=dtype):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dt)

    residual = rand(1, d, dt=torch.float32 if residual_in_fp32 else dtype) if with_residual else None
    return rand(1, d), residual, rand(d), 1e-5, residual_in_fp32, rand(n, d) * d**-0.5, rand(n) if bias else None


def norm_errors(fn, args: tuple) -> dict[str, float]:
    """Errors of ``fn``'s product and new residual against ``add_rms_norm_linear_decode_ref`` in float64."""
    exact = [a.double().cpu() if isinstance(a, torch.Tensor) else a for a in args]
    y_exact, res_exact = add_rms_norm_linear_decode_ref(*exact)
    y, res = fn(*args)
    assert y.dtype == args[0].dtype and res.dtype == (torch.float32 if args[4] else args[0].dtype)
    return {"y": rel_err(y, y_exact), "residual": rel_err(res, res_exact)}


def test_norm_linear_on_cpu_is_the_composition() -> None:
    for case in NORM_CASES:
        args = norm_inputs(*case, dtype=torch.float32)
        assert max(norm_errors(add_rms_norm_linear_decode, args).values()) < 1e-6, case


@pytest.mark.skipif(not importable("triton"), reason="needs triton (installed with torch on Linux)")
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("pdl_order", [False, True])
def test_norm_linear_kernel_in_triton_interpreter(dtype, pdl_order) -> None:
    interpreted = run_triton_interpreted(
        "import test_ops_gemv as t; from vl_mamba.ops import gemv as g, pdl; "
        f"pdl.ORDER_ANYWHERE = {pdl_order}; fused = lambda *a: g._norm_linear_fused(g._norm_kernel(), *a)",
        f"[t.norm_errors(fused, t.norm_inputs(*c, dtype=torch.{dtype})) for c in t.NORM_CASES]",
    )
    for case, errors in zip(NORM_CASES, interpreted, strict=True):
        # float16: the normalised row is rounded before the product, as the separate norm stores it
        tol = 1e-6 if dtype == "float32" else 2e-3
        assert errors["y"] < tol, (case, errors)
        assert errors["residual"] < (1e-7 if case[3] or dtype == "float32" else 1e-3), (case, errors)


@pytest.mark.gpu
@needs_cuda("triton")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", [(10240, 2560, True, True, False), *NORM_CASES])
def test_norm_linear_kernel_on_gpu(case, dtype) -> None:
    """At Mamba-2.8B's in_proj and the odd shapes: no less accurate than the norm and the product apart."""
    assert gemv_module._norm_kernel() is not None
    args = norm_inputs(*case, dtype=dtype, device="cuda")
    assert gemv_module._norm_kernel_ok(*args[:3], *args[5:])
    fused = norm_errors(add_rms_norm_linear_decode, args)
    apart = norm_errors(lambda *a: gemv_module._norm_linear_apart(*a), args)
    tol = 1e-2 if dtype == torch.bfloat16 else 2e-3
    assert fused["y"] < tol and fused["y"] <= 1.5 * apart["y"] + 1e-3, (fused, apart)
    assert fused["residual"] <= apart["residual"] + 1e-7, (fused, apart)
