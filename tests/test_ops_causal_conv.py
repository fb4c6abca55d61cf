"""The causal depthwise conv1d against its specification ``causal_conv1d_ref``: outputs and gradients in
float64 / float32 / half precision, lengths shorter than the kernel and length 1; the one-step update chained
over a sequence equals the full convolution, also continued from ``conv_state_from_input``; and, on a GPU, the
causal-conv1d kernels against the same references."""

from __future__ import annotations

import pytest
import torch
from _helpers import TOLERANCE, assert_close_rel, needs_cuda, outputs_and_grads
from torch import Tensor

from vl_mamba.ops import causal_conv1d as conv_module
from vl_mamba.ops import (
    causal_conv1d_fn,
    causal_conv1d_ref,
    causal_conv1d_torch,
    causal_conv1d_update,
    causal_conv1d_update_ref,
    conv_state_from_input,
)
from vl_mamba.ops.causal_conv1d import causal_conv1d_backward, causal_conv1d_forward

# (batch, dim, L, width)
SHAPES = [(2, 8, 37, 4), (1, 3, 1, 4), (3, 5, 2, 4), (2, 4, 16, 3), (1, 6, 9, 1)]


def conv_inputs(batch, dim, length, width, dtype=torch.float32, param_dtype=None, bias=True, device="cpu", seed=0):
    gen = torch.Generator().manual_seed(seed)
    param_dtype = param_dtype or dtype

    def make(*shape, dt):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(device=device, dtype=dt).requires_grad_()

    return {
        "x": make(batch, dim, length, dt=dtype),
        "weight": make(dim, width, dt=param_dtype),
        "bias": make(dim, dt=param_dtype) if bias else None,
    }


def _compare(inputs: dict[str, Tensor | None], dtype: torch.dtype, activation: str | None) -> None:
    fast_out, fast_grads = outputs_and_grads(causal_conv1d_torch, inputs, activation=activation)
    ref_out, ref_grads = outputs_and_grads(causal_conv1d_ref, inputs, activation=activation)
    assert fast_out[0].dtype == ref_out[0].dtype == inputs["x"].dtype
    assert_close_rel(fast_out[0], ref_out[0], TOLERANCE[dtype], "output")
    for name in ref_grads:
        assert fast_grads[name].dtype == ref_grads[name].dtype, name
        assert_close_rel(fast_grads[name], ref_grads[name], TOLERANCE[dtype], f"grad of {name}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_matches_ref(dtype, shape, activation, bias):
    _compare(conv_inputs(*shape, dtype=dtype, bias=bias), dtype, activation)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_half_precision_input_with_float32_weights(dtype):
    """Mixed precision: half-precision activations, float32 weight and bias (see TOLERANCE for the bound)."""
    _compare(conv_inputs(2, 8, 37, 4, dtype=dtype, param_dtype=torch.float32), dtype, "silu")


def test_ref_is_a_causal_convolution():
    """The reference against the definition written out: out[t] = sum_k w[k] * x[t - (W - 1) + k]."""
    inputs = {k: v.detach() for k, v in conv_inputs(2, 3, 7, 3, dtype=torch.float64).items()}
    x, w, b = inputs["x"], inputs["weight"], inputs["bias"]
    expected = torch.zeros_like(x)
    for t in range(7):
        for k in range(3):
            if t - 2 + k >= 0:
                expected[..., t] += w[:, k] * x[..., t - 2 + k]
    expected += b[:, None]
    assert torch.allclose(causal_conv1d_ref(x, w, b), expected, rtol=0, atol=1e-12)


def test_fn_dispatches_to_torch_on_cpu():
    inputs = {k: v.detach() for k, v in conv_inputs(2, 8, 13, 4).items()}
    assert torch.equal(causal_conv1d_fn(**inputs, activation="silu"), causal_conv1d_torch(**inputs, activation="silu"))


@pytest.mark.parametrize("update", [causal_conv1d_update, causal_conv1d_update_ref], ids=lambda f: f.__name__)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("length, width", [(11, 4), (2, 4), (1, 4), (6, 1)])
def test_update_chained_equals_full_conv(update, dtype, length, width):
    inputs = {k: v.detach() for k, v in conv_inputs(2, 5, length, width, dtype=dtype).items()}
    x, w, b = inputs["x"], inputs["weight"], inputs["bias"]
    full = causal_conv1d_fn(x, w, b, "silu")
    state = torch.zeros(2, 5, width, dtype=dtype)
    steps = [update(x[..., t], state, w, b, "silu") for t in range(length)]
    assert_close_rel(torch.stack(steps, -1), full, TOLERANCE[dtype], "outputs")
    assert torch.equal(state, conv_state_from_input(x, width))


@pytest.mark.parametrize("prefix", [1, 3, 8])
def test_update_continues_from_conv_state_from_input(prefix):
    """Convolve a prefix whole, keep ``conv_state_from_input``, step through the rest: same as the full conv."""
    inputs = {k: v.detach() for k, v in conv_inputs(2, 5, 12, 4, dtype=torch.float64).items()}
    x, w, b = inputs["x"], inputs["weight"], inputs["bias"]
    full = causal_conv1d_ref(x, w, b, "silu")
    state = conv_state_from_input(x[..., :prefix], 4)
    assert state.shape == (2, 5, 4)
    for t in range(prefix, 12):
        assert_close_rel(causal_conv1d_update(x[..., t], state, w, b, "silu"), full[..., t], 1e-12, f"step {t}")


def test_conv_state_from_input_pads_short_sequences():
    x = torch.arange(1.0, 3.0).view(1, 1, 2)
    assert conv_state_from_input(x, 4).tolist() == [[[0.0, 0.0, 1.0, 2.0]]]
    longer = torch.arange(6.0).view(1, 1, 6)
    state = conv_state_from_input(longer, 4)
    assert state.tolist() == [[[2.0, 3.0, 4.0, 5.0]]]
    state += 1  # a copy, not a view of the input
    assert longer[0, 0, 2] == 2.0


def test_errors():
    x, w = torch.zeros(2, 4, 5), torch.zeros(4, 3)
    for fn in (causal_conv1d_fn, causal_conv1d_torch, causal_conv1d_ref):
        with pytest.raises(ValueError, match="activation must be one of"):
            fn(x, w, activation="relu")
        with pytest.raises(ValueError, match=r"weight must be \(dim=4, width\)"):
            fn(x, torch.zeros(3, 3))
    with pytest.raises(ValueError, match=r"weight must be \(dim=4, width\)"):
        causal_conv1d_update(x[..., 0], torch.zeros(2, 4, 3), torch.zeros(4, 3, 1))


# --- GPU: the causal-conv1d kernels against the references --------------------------------------------------------

GPU_TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2}


def _split_halves_case(device: str, dtype: torch.dtype, bias: bool, silu: bool, tol: float) -> None:
    """``causal_conv1d_forward`` and ``causal_conv1d_backward`` on a channel-major x (a slice of in_proj's output,
    as a Mamba layer has it) against autograd through the reference; x's gradient written into a slice of a bigger
    buffer, as the layer body's backward does."""
    gen = torch.Generator().manual_seed(3)
    batch, dim, length, width = 3, 16, 41, 4

    def make(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(device)

    xz = make(2 * dim, batch, length).to(dtype).transpose(0, 1)  # (batch, 2 dim, L) stored channel-major
    wdt = torch.float64 if dtype == torch.float64 else torch.float32  # float32 weights beside half inputs
    x, weight, b = xz[:, :dim], make(dim, width).to(wdt), make(dim).to(wdt) if bias else None
    dout = make(batch, dim, length).to(dtype)
    act = "silu" if silu else None
    leaves = [t.detach().double().requires_grad_(True) if t is not None else None for t in (x, weight, b)]
    ref = causal_conv1d_ref(*leaves, act)
    ref_grads = torch.autograd.grad(ref, [t for t in leaves if t is not None], dout.double())

    out = causal_conv1d_forward(x, weight, b, silu)
    assert out.dtype == dtype and out.grad_fn is None
    assert device == "cpu" or out.stride() == x.stride()  # the kernel ran: it keeps x's layout
    assert_close_rel(out, ref, tol, "output")
    sink = torch.full((batch, 2 * dim, length), float("nan"), device=device, dtype=dtype)
    dx, dw, db = causal_conv1d_backward(x, weight, b, dout, silu, dx=sink[:, :dim])
    assert dx.data_ptr() == sink.data_ptr() and torch.isnan(sink[:, dim:]).all()
    assert dw.dtype == weight.dtype and (db is None) == (b is None)
    for name, got, want in zip(("x", "weight", "bias"), (dx, dw, db), ref_grads, strict=False):
        assert_close_rel(got, want, tol, f"grad of {name}")


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("silu", [True, False], ids=["silu", "linear"])
def test_split_halves_match_ref_on_cpu(bias, silu):
    _split_halves_case("cpu", torch.float64, bias, silu, 1e-12)


@pytest.mark.gpu
@needs_cuda("causal_conv1d")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_split_halves_use_the_kernel(dtype, bias):
    assert conv_module._cuda_conv_ext() is not None
    _split_halves_case("cuda", dtype, bias, True, GPU_TOLERANCE[dtype])


@pytest.mark.gpu
@needs_cuda("causal_conv1d")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("width", [2, 3, 4])
def test_cuda_conv_matches_ref(dtype, width):
    assert conv_module._cuda_conv() is not None
    inputs = conv_inputs(2, 64, 257, width, dtype=dtype, device="cuda")
    kernel_out, kernel_grads = outputs_and_grads(causal_conv1d_fn, inputs, activation="silu")
    ref_out, ref_grads = outputs_and_grads(causal_conv1d_ref, inputs, activation="silu")
    assert_close_rel(kernel_out[0], ref_out[0], GPU_TOLERANCE[dtype], "output")
    for name in ref_grads:
        assert_close_rel(kernel_grads[name], ref_grads[name], GPU_TOLERANCE[dtype], f"grad of {name}")


@pytest.mark.gpu
@needs_cuda("causal_conv1d")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cuda_update_matches_ref(dtype):
    assert conv_module._cuda_conv_update() is not None
    inputs = {k: v.detach() for k, v in conv_inputs(3, 64, 9, 4, dtype=dtype, device="cuda").items()}
    x, w, b = inputs["x"], inputs["weight"], inputs["bias"]
    state = torch.zeros(3, 64, 4, device="cuda", dtype=dtype)
    state_ref = state.clone()
    for t in range(9):
        out = causal_conv1d_update(x[..., t], state, w, b, "silu")
        out_ref = causal_conv1d_update_ref(x[..., t], state_ref, w, b, "silu")
        assert_close_rel(out, out_ref, GPU_TOLERANCE[dtype], f"step {t}")
        assert torch.equal(state, state_ref)
