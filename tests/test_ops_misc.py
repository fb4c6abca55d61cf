"""The residual add + RMSNorm and the Mamba-1 mixer body (``mamba_inner``): ``add_rms_norm_ref`` against torch's
own ``rms_norm``, the dispatching functions against their references on the CPU, ``mamba_inner_ref`` (built
on the fast ops) against the same layer composed of the ``_ref`` ops, outputs and gradients; and, on a GPU,
mamba_ssm's fused kernels against the CPU path."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _helpers import TOLERANCE, assert_close_rel, clone_inputs, needs_cuda, outputs_and_grads

from vl_mamba.ops import (
    add_rms_norm,
    add_rms_norm_ref,
    causal_conv1d_ref,
    in_proj_channel_major,
    mamba_inner_fn,
    mamba_inner_ref,
    project_scan_inputs,
    selective_scan_ref,
)
from vl_mamba.ops import mamba_inner as inner_module
from vl_mamba.ops import rms_norm as norm_module


def norm_inputs(dtype=torch.float32, residual=True, device="cpu", shape=(2, 7, 16), seed=0):
    gen = torch.Generator().manual_seed(seed)

    def make(*s, dt=dtype):
        return torch.randn(*s, generator=gen, dtype=torch.float64).to(device=device, dtype=dt).requires_grad_()

    return {
        "x": make(*shape),
        "residual": make(*shape, dt=torch.float32 if dtype != torch.float64 else dtype) if residual else None,
        "weight": make(shape[-1], dt=torch.float32 if dtype != torch.float64 else dtype),
    }


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("residual", [True, False], ids=["residual", "first-block"])
def test_rms_norm_ref_matches_torch_rms_norm(dtype, residual):
    inputs = {k: None if v is None else v.detach() for k, v in norm_inputs(dtype, residual).items()}
    x, res, w = inputs["x"], inputs["residual"], inputs["weight"]
    normed, new_residual = add_rms_norm_ref(x, res, w, eps=1e-5, residual_in_fp32=True)
    cdt = torch.float64 if dtype == torch.float64 else torch.float32
    total = x.to(cdt) if res is None else x.to(cdt) + res.to(cdt)
    expected = F.rms_norm(total, (x.shape[-1],), w.to(cdt), eps=1e-5)
    assert normed.dtype == dtype and new_residual.dtype == cdt
    assert_close_rel(normed, expected.to(dtype), TOLERANCE[dtype], "normed")
    assert torch.equal(new_residual, total)


def test_rms_norm_residual_dtype_follows_flag():
    inputs = {k: v.detach() for k, v in norm_inputs(torch.bfloat16).items()}
    _, kept = add_rms_norm(**inputs, residual_in_fp32=False)
    _, fp32 = add_rms_norm(**inputs, residual_in_fp32=True)
    assert kept.dtype == torch.bfloat16 and fp32.dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_rms_norm_gradients_match_ref(dtype):
    """On the CPU the dispatcher runs the reference; its gradients against an independent formula."""
    inputs = norm_inputs(dtype)
    out, grads = outputs_and_grads(add_rms_norm, inputs)

    def written_out(x, residual, weight):
        total = x + residual
        return total / torch.sqrt(total.pow(2).mean(-1, keepdim=True) + 1e-5) * weight, total

    out_ref, grads_ref = outputs_and_grads(written_out, inputs)
    for i in range(2):
        assert_close_rel(out[i], out_ref[i], TOLERANCE[dtype], f"output {i}")
    for name in grads_ref:
        assert_close_rel(grads[name], grads_ref[name], TOLERANCE[dtype], f"grad of {name}")


def inner_inputs(dtype=torch.float64, batch=2, d_model=8, d_inner=12, n=4, rank=2, width=4, length=19, seed=0,
                 device="cpu"):
    gen = torch.Generator().manual_seed(seed)

    def make(*shape, scale=1.0):
        value = torch.randn(*shape, generator=gen, dtype=torch.float64) * scale
        return value.to(device=device, dtype=dtype).requires_grad_()

    A = -(0.5 + 4 * torch.rand(d_inner, n, generator=gen, dtype=torch.float64))
    return {
        "xz": make(batch, 2 * d_inner, length),
        "conv1d_weight": make(d_inner, 1, width, scale=0.5),
        "conv1d_bias": make(d_inner, scale=0.1),
        "x_proj_weight": make(rank + 2 * n, d_inner, scale=0.3),
        "delta_proj_weight": make(d_inner, rank, scale=0.5),
        "out_proj_weight": make(d_model, d_inner, scale=0.3),
        "out_proj_bias": make(d_model, scale=0.1),
        "A": A.to(device=device, dtype=dtype).requires_grad_(),
        "D": make(d_inner),
        "delta_bias": make(d_inner, scale=0.5),
    }


def inner_from_refs(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, out_proj_weight,
                    out_proj_bias, A, D, delta_bias):
    """The Mamba-1 layer body composed of the ``_ref`` ops only."""
    x, z = xz.chunk(2, dim=1)
    x = causal_conv1d_ref(x, conv1d_weight.squeeze(1), conv1d_bias, activation="silu")
    dt, B, C = project_scan_inputs(x, x_proj_weight, delta_proj_weight)
    y = selective_scan_ref(x, dt, A, B, C, D, z, delta_bias=delta_bias, delta_softplus=True)
    return F.linear(y.transpose(1, 2), out_proj_weight, out_proj_bias)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("length", [1, 4, 19])
def test_mamba_inner_matches_ref_composition(dtype, length):
    inputs = inner_inputs(dtype, length=length)
    out, grads = outputs_and_grads(mamba_inner_fn, inputs)
    out_ref, grads_ref = outputs_and_grads(inner_from_refs, inputs)
    assert out[0].shape == (2, length, 8)
    assert_close_rel(out[0], out_ref[0], TOLERANCE[dtype], "output")
    for name in grads_ref:
        assert_close_rel(grads[name], grads_ref[name], TOLERANCE[dtype], f"grad of {name}")


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("bias", [False, True])
def test_in_proj_channel_major_is_the_product_in_the_scan_layout(batch, bias):
    """The (batch, out, L) product as F.linear gives it transposed, with gradients; L the unit-stride axis and no
    copy: the result is a view of one (out, batch * L) product."""
    gen = torch.Generator().manual_seed(batch)
    hidden, weight, b = (torch.randn(*s, generator=gen, dtype=torch.float64).requires_grad_()
                         for s in ((batch, 5, 6), (8, 6), (8,)))
    xz = in_proj_channel_major(hidden, weight, b if bias else None)
    expected = F.linear(hidden, weight, b if bias else None).transpose(1, 2)
    assert xz.shape == (batch, 8, 5) and xz.stride(-1) == 1
    if not bias:
        assert xz.stride() == (5, batch * 5, 1)
    torch.testing.assert_close(xz, expected, rtol=1e-12, atol=1e-12)
    upstream = torch.randn(batch, 8, 5, generator=gen, dtype=torch.float64)
    inputs = (hidden, weight, b) if bias else (hidden, weight)
    grads = torch.autograd.grad((xz * upstream).sum(), inputs)
    grads_ref = torch.autograd.grad((expected * upstream).sum(), inputs)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-12, atol=1e-12)


def test_in_proj_channel_major_under_autocast_as_linear():
    """bf16 autocast: the product in bf16 as nn.Linear's, the float32 weight's and bias's gradients in float32,
    and the input's gradient in its own dtype and layout."""
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 16, 24, generator=gen).requires_grad_()
    weight, b = torch.randn(32, 24, generator=gen).requires_grad_(), torch.randn(32, generator=gen).requires_grad_()
    upstream = torch.randn(2, 32, 16, generator=gen)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        xz = in_proj_channel_major(hidden, weight, b)
        expected = F.linear(hidden, weight, b).transpose(1, 2)
    assert xz.dtype == expected.dtype == torch.bfloat16
    torch.testing.assert_close(xz.float(), expected.float(), rtol=2e-2, atol=2e-2)  # the bias added after rounding
    grads = torch.autograd.grad((xz.float() * upstream).sum(), (hidden, weight, b))
    grads_ref = torch.autograd.grad((expected.float() * upstream).sum(), (hidden, weight, b))
    for g, g_ref in zip(grads, grads_ref, strict=True):
        assert g.dtype == g_ref.dtype == torch.float32 and g.stride() == g_ref.stride()
        torch.testing.assert_close(g, g_ref, rtol=2e-2, atol=2e-2)


def test_mamba_inner_fn_dispatches_to_ref_on_cpu():
    inputs = {k: v.detach() for k, v in inner_inputs(torch.float32).items()}
    assert torch.equal(mamba_inner_fn(**inputs), mamba_inner_ref(**inputs))
    assert torch.equal(mamba_inner_fn(**inputs, checkpoint_lvl=0), mamba_inner_ref(**inputs))
    with pytest.raises(ValueError, match="checkpoint_lvl must be 0 or 1"):
        mamba_inner_fn(**inputs, checkpoint_lvl=2)


@pytest.mark.parametrize("channel_major", [False, True], ids=["contiguous", "channel-major"])
def test_project_scan_inputs_shapes_and_values(channel_major):
    """Both layouts of x; a channel-major x (stored (d, batch, L), as in_proj_channel_major gives it) comes back as
    channel-major views of products over all tokens."""
    x = torch.randn(12, 2, 5, dtype=torch.float64).transpose(0, 1)
    x = x if channel_major else x.contiguous()
    x_proj, dt_proj = torch.randn(2 + 8, 12, dtype=torch.float64), torch.randn(12, 2, dtype=torch.float64)
    dt, B, C = project_scan_inputs(x, x_proj, dt_proj)
    assert dt.shape == (2, 12, 5) and B.shape == C.shape == (2, 4, 5)
    x_dbl = torch.einsum("rd,bdl->brl", x_proj, x)
    assert torch.allclose(B, x_dbl[:, 2:6]) and torch.allclose(C, x_dbl[:, 6:])
    assert torch.allclose(dt, torch.einsum("dr,brl->bdl", dt_proj, x_dbl[:, :2]))
    if channel_major:
        assert dt.stride() == x.stride() and B.stride() == (5, 10, 1)


# --- GPU: mamba_ssm's fused kernels against the CPU path -----------------------------------------------------------


@pytest.mark.gpu
@needs_cuda("mamba_ssm")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("residual", [True, False], ids=["residual", "first-block"])
def test_cuda_rms_norm_matches_ref(dtype, residual):
    assert norm_module._cuda_norm() is not None
    inputs = norm_inputs(dtype, residual, device="cuda", shape=(4, 33, 256))
    out, grads = outputs_and_grads(add_rms_norm, inputs)
    out_ref, grads_ref = outputs_and_grads(add_rms_norm_ref, clone_inputs(inputs))
    tol = {torch.float32: 1e-5, torch.bfloat16: 1e-2}[dtype]
    assert out[0].dtype == out_ref[0].dtype and out[1].dtype == out_ref[1].dtype
    for i in range(2):
        assert_close_rel(out[i], out_ref[i], tol, f"output {i}")
    for name in grads_ref:
        assert_close_rel(grads[name], grads_ref[name], tol, f"grad of {name}")


@pytest.mark.gpu
@needs_cuda("mamba_ssm", "causal_conv1d")
@pytest.mark.parametrize("own_scan", ["0", "1"], ids=["mamba_ssm", "own"])
def test_cuda_mamba_inner_matches_cpu(own_scan, monkeypatch):
    """mamba_ssm's fused layer body and this package's (``VL_MAMBA_CUDA_SCAN``) against the CPU path."""
    monkeypatch.setenv("VL_MAMBA_CUDA_SCAN", own_scan)
    assert inner_module._cuda_inner() is not None
    inputs = inner_inputs(torch.float32, batch=2, d_model=64, d_inner=128, n=16, rank=4, length=133)
    out_cpu, grads_cpu = outputs_and_grads(mamba_inner_fn, inputs)
    out_gpu, grads_gpu = outputs_and_grads(mamba_inner_fn, clone_inputs(inputs, device="cuda"))
    assert_close_rel(out_gpu[0], out_cpu[0], 5e-4, "output")
    for name in grads_cpu:
        assert_close_rel(grads_gpu[name], grads_cpu[name], 5e-4, f"grad of {name}")
