"""``mamba_inner_cuda`` (the layer body around this package's CUDA scan) against ``mamba_inner_ref`` in float64:
the output and the gradient of every input, in float32 and under bf16 autocast with float32 weights, with in_proj's
output contiguous or channel-major, and with frozen weights; A given as its log; and the layer's dispatch to it. GPU
only."""

from __future__ import annotations

import pytest
import torch
from _helpers import needs_cuda, rel_err

pytestmark = [pytest.mark.gpu, needs_cuda()]

NAMES = ("xz", "conv_w", "conv_b", "x_proj_w", "dt_proj_w", "out_proj_w", "out_proj_b", "A", "D", "delta_bias")


def inner_case(batch=2, d_inner=96, length=300, n=16, rank=6, d_model=48, channel_major=True, seed=0):
    """The ten arguments of ``mamba_inner_fn`` as float32 CUDA leaves, and a gradient for the output."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return torch.randn(*shape, generator=g) * scale

    if channel_major:  # as in_proj_channel_major gives it: (2 d_inner, batch, L) storage
        xz = rand(2 * d_inner, batch, length).transpose(0, 1)
    else:
        xz = rand(batch, 2 * d_inner, length)
    args = [
        xz, rand(d_inner, 1, 4, scale=0.5), rand(d_inner, scale=0.1), rand(rank + 2 * n, d_inner, scale=0.1),
        rand(d_inner, rank, scale=0.3), rand(d_model, d_inner, scale=0.1), rand(d_model, scale=0.1),
        -(torch.rand(d_inner, n, generator=g) * 3 + 0.05), rand(d_inner), rand(d_inner, scale=0.1) - 2.0,
    ]
    grad = rand(batch, length, d_model)
    return [a.cuda().requires_grad_(True) for a in args], grad.cuda()


def run(fn, args, grad, wanted=None):
    out = fn(*args)
    wanted = [a for a in args if a.requires_grad] if wanted is None else wanted
    return [out, *torch.autograd.grad(out, wanted, grad.to(out.dtype))]


def reference(args, grad):
    from vl_mamba.ops.mamba_inner import mamba_inner_ref

    ref_args = [a.detach().double().requires_grad_(a.requires_grad) for a in args]
    return run(mamba_inner_ref, ref_args, grad.double())


@pytest.mark.parametrize("channel_major", [True, False])
def test_float32_matches_reference(channel_major) -> None:
    from vl_mamba.ops.mamba_inner_cuda import mamba_inner_cuda

    args, grad = inner_case(channel_major=channel_major)
    got, ref = run(mamba_inner_cuda, args, grad), reference(args, grad)
    errs = {name: rel_err(a, r) for name, a, r in zip(("out", *NAMES), got, ref, strict=True)}
    assert max(errs.values()) < 1e-4, errs


def test_bf16_autocast_matches_reference() -> None:
    """Under bf16 autocast with float32 weights, as in training: the gradients come back float32."""
    from vl_mamba.ops.mamba_inner_cuda import mamba_inner_cuda

    args, grad = inner_case(length=1000)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        got = run(mamba_inner_cuda, args, grad)
    ref = reference(args, grad)
    assert all(g.dtype == torch.float32 for g in got[2:])
    errs = {name: rel_err(a, r) for name, a, r in zip(("out", *NAMES), got, ref, strict=True)}
    assert max(errs.values()) < 3e-2, errs


def test_frozen_weights() -> None:
    """Only the input wants a gradient (a frozen LM passing gradients back to the connector)."""
    from vl_mamba.ops.mamba_inner_cuda import mamba_inner_cuda

    args, grad = inner_case(length=130)
    for a in args[1:]:
        a.requires_grad_(False)
    got, ref = run(mamba_inner_cuda, args, grad), reference(args, grad)
    assert len(got) == 2
    assert rel_err(got[0], ref[0]) < 1e-4 and rel_err(got[1], ref[1]) < 1e-4


def test_layer_dispatch(monkeypatch) -> None:
    """A Mamba layer runs it unless ``VL_MAMBA_CUDA_SCAN=0`` turns it off, with the gradients of the other path."""
    from vl_mamba.decoders.config import MambaConfig
    from vl_mamba.decoders.mamba_block import MambaMixer

    torch.manual_seed(0)
    layer = MambaMixer(MambaConfig(d_model=64, n_layer=1, vocab_size=16)).cuda()
    hidden = torch.randn(2, 200, 64, device="cuda")
    results = {}
    for switch in ("1", "0"):
        monkeypatch.setenv("VL_MAMBA_CUDA_SCAN", switch)
        layer.zero_grad(set_to_none=True)
        out = layer(hidden)
        results[switch] = (type(out.grad_fn).__name__, out, torch.autograd.grad(out.sum(), list(layer.parameters())))
    assert results["1"][0] == "_MambaInnerBackward"
    assert results["0"][0] != results["1"][0]
    assert rel_err(results["1"][1], results["0"][1]) < 1e-4
    for a, b in zip(results["1"][2], results["0"][2], strict=True):
        assert rel_err(a, b) < 1e-3


def test_kept_activations_give_the_same_gradients() -> None:
    """``checkpoint_lvl=0`` keeps the conv's output and the projections instead of recomputing them: the same
    output bit for bit, and the same gradients under bf16 autocast as in training (to the order of the kernels'
    atomic float32 sums of dA, dD and the biases, which differs from run to run)."""
    from vl_mamba.ops.mamba_inner_cuda import mamba_inner_cuda

    args, grad = inner_case(length=260)
    results = {}
    for lvl in (1, 0):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            results[lvl] = run(lambda *a, lvl=lvl: mamba_inner_cuda(*a, checkpoint_lvl=lvl), args, grad)
    assert torch.equal(results[1][0], results[0][0])
    for name, a, b in zip(NAMES, results[1][1:], results[0][1:], strict=True):
        assert rel_err(a, b) < 1e-5, name
    with pytest.raises(ValueError, match="checkpoint_lvl"):
        mamba_inner_cuda(*args, checkpoint_lvl=2)


def test_decoder_passes_checkpoint_lvl_to_its_layers() -> None:
    from vl_mamba.decoders import MambaDecoder

    torch.manual_seed(0)
    grads = {}
    for lvl in (1, 0):
        torch.manual_seed(0)
        decoder = MambaDecoder(d_model=64, n_layer=2, vocab_size=100, checkpoint_lvl=lvl).cuda()
        assert all(layer.mixer.checkpoint_lvl == lvl for layer in decoder.backbone.layers)
        embeds = torch.randn(2, 70, 64, device="cuda")
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = decoder.forward_hidden(embeds)
        grads[lvl] = torch.autograd.grad(out.float().square().sum(), list(decoder.backbone.layers.parameters()))
    for a, b in zip(grads[1], grads[0], strict=True):
        assert rel_err(a, b) < 1e-5


def test_a_log_in_the_kernel() -> None:
    """``A_log`` in A's place: the kernel exponentiates it and gives its gradient, matching A = -exp(A_log) computed
    outside (to the kernel's fast exp), in float32 and under bf16 autocast."""
    from vl_mamba.ops.mamba_inner_cuda import mamba_inner_cuda

    args, grad = inner_case(length=300)
    A_log = torch.log(-args[7].detach()).requires_grad_(True)
    for autocast in (False, True):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            fused = mamba_inner_cuda(*args[:7], None, *args[8:], A_log=A_log)
            outside = mamba_inner_cuda(*args[:7], -torch.exp(A_log), *args[8:])
        wanted = [*args[:7], *args[8:], A_log]
        got = torch.autograd.grad(fused, wanted, grad.to(fused.dtype))
        want = torch.autograd.grad(outside, wanted, grad.to(outside.dtype))
        tolerance = 1e-2 if autocast else 1e-4  # a bf16 rounding may fall either side of a last-bit difference
        assert rel_err(fused, outside) < tolerance / 10
        for a, b in zip(got, want, strict=True):
            assert rel_err(a, b) < tolerance
