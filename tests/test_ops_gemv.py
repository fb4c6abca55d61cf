"""``linear_decode``, the batch-1 matrix-vector product of the decode step: the block choice, the CPU fallback,
and on a GPU the Triton kernel against ``F.linear`` at Mamba-2.8B's projection shapes, in the decode step too."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _helpers import needs_cuda, rel_err

from vl_mamba.decoders import MambaDecoder
from vl_mamba.ops import gemv as gemv_module
from vl_mamba.ops import linear_decode, linear_decode_ref
from vl_mamba.ops.gemv import gemv_blocks

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


@pytest.mark.gpu
@needs_cuda("triton")
def test_decode_step_with_kernel_matches_f_linear(monkeypatch) -> None:
    torch.manual_seed(0)
    decoder = MambaDecoder(d_model=256, n_layer=2, vocab_size=500).cuda().to(torch.bfloat16).eval()
    token = torch.tensor([7], device="cuda")

    def steps():
        states = decoder.allocate_states(1, torch.device("cuda"), torch.bfloat16)
        with torch.no_grad():
            return torch.stack([decoder.step(decoder.embed(token), states).float() for _ in range(4)])

    fast = steps()
    monkeypatch.setattr(gemv_module, "_kernel", lambda: None)
    assert rel_err(fast, steps()) < 2e-2
