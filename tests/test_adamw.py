"""``vl_mamba.training.adamw.AdamW`` against ``torch.optim.AdamW``, and the weight copies it writes
(``vl_mamba.ops.weight_copies``): on the CPU every parameter takes torch's step; the copy-writing kernel runs under
Triton's CPU interpreter and, with the whole optimizer, on a GPU."""

from __future__ import annotations

import pytest
import torch
from _helpers import importable, needs_cuda, rel_err, run_triton_interpreted

from vl_mamba.ops.weight_copies import attach_copy, cast_weight, mark_for_copy, wants_copy
from vl_mamba.training.adamw import AdamW

HYPER = dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-6)


def _params(device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(40, 33), (7,), (5000,), (3, 4, 5)]
    params = [torch.nn.Parameter((torch.randn(*s, generator=g)).to(device)) for s in shapes]
    for p in params[::2]:
        mark_for_copy(p)
    return params


def _groups(params):
    return [{"params": params[:2], "weight_decay": 0.1}, {"params": params[2:], "weight_decay": 0.0}]


def _run(optimizer_class, params, steps=3, seed=1, **kwargs):
    optimizer = optimizer_class(_groups(params), **HYPER, **kwargs)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g).to(p.device)
        optimizer.step()
    return optimizer


def test_cast_weight_uses_only_a_current_copy():
    w = torch.randn(6, 5)
    assert not wants_copy(w)
    mark_for_copy(w)
    assert wants_copy(w)
    assert cast_weight(w, torch.float32) is w
    fresh = cast_weight(w, torch.bfloat16)
    assert torch.equal(fresh, w.bfloat16())
    copy = w.bfloat16()
    attach_copy(w, copy)
    assert cast_weight(w, torch.bfloat16) is copy
    assert cast_weight(w, torch.float16).dtype == torch.float16  # another dtype: cast
    with torch.no_grad():
        w.mul_(2)  # any in-place change retires the copy
    again = cast_weight(w, torch.bfloat16)
    assert again is not copy and torch.equal(again, w.bfloat16())
    assert w._vl_low_precision is None  # the out-of-date copy let go


def test_cpu_parameters_take_torchs_step():
    mine, theirs = _params(), _params()
    _run(AdamW, mine)
    _run(torch.optim.AdamW, theirs)
    for a, b in zip(mine, theirs, strict=True):
        assert torch.equal(a, b)
    assert all(getattr(p, "_vl_low_precision", None) is None for p in mine)


def test_state_dict_and_hooks():
    """The state and its dict are torch's; each hook runs once a step."""
    params = _params()
    optimizer = _run(AdamW, params, steps=1)
    calls = []
    optimizer.register_step_pre_hook(lambda *a: calls.append("pre"))
    optimizer.register_step_post_hook(lambda *a: calls.append("post"))
    torch.optim.AdamW(_params(), lr=1.0)  # a torch AdamW elsewhere hooks torch's class as well
    optimizer.step()
    assert calls == ["pre", "post"]
    other = torch.optim.AdamW(_groups(_params()), **HYPER)
    other.load_state_dict(optimizer.state_dict())
    assert set(other.state_dict()["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}


@pytest.mark.skipif(not importable("triton"), reason="needs triton")
def test_copy_kernel_interpreted():
    """The kernel's step on the CPU (Triton's interpreter): torch's AdamW's weights and moments over three steps,
    and a bf16 copy of every new weight (the interpreter rounds toward zero, the GPU to nearest: a bf16 step
    apart at most)."""
    result = run_triton_interpreted(
        "from test_adamw import interpreted_check; out = interpreted_check()", "out"
    )
    assert result["weights"] < 1e-6 and result["moments"] < 1e-6
    assert result["copy"] <= 2 ** -7 and result["current"]


def interpreted_check() -> dict:
    params, reference = _params(), _params()
    optimizer = AdamW(_groups(params), **HYPER)
    ref = torch.optim.AdamW(_groups(reference), **HYPER)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        for p, r in zip(params, reference, strict=True):
            p.grad = torch.randn(p.shape, generator=g)
            r.grad = p.grad.clone()
        for group in optimizer.param_groups:  # the copies' step, as CUDA parameters would take it
            optimizer._step_with_copies(group, group["params"])
        ref.step()
    weights = max(rel_err(p, r) for p, r in zip(params, reference, strict=True))
    moments = max(rel_err(optimizer.state[p][k], ref.state[r][k])
                  for p, r in zip(params, reference, strict=True) for k in ("exp_avg", "exp_avg_sq"))
    copy = max(((cast_weight(p, torch.bfloat16).float() - p) / p.abs().clamp_min(1e-30)).abs().max().item()
               for p in params)
    current = all(cast_weight(p, torch.bfloat16) is p._vl_low_precision[1] for p in params)
    return {"weights": weights, "moments": moments, "copy": copy, "current": current}


@pytest.mark.gpu
@needs_cuda("triton")
@pytest.mark.parametrize("fused", [False, True])
def test_gpu_step_matches_torch(fused):
    """On a GPU the marked weights take the kernel: torch's AdamW's results (fused or not) to float32 rounding,
    their copies are the new weights rounded to bf16, and ``cast_weight`` hands them out until a weight changes."""
    mine, theirs = _params("cuda"), _params("cuda")
    optimizer = _run(AdamW, mine, fused=fused)
    torchs = _run(torch.optim.AdamW, theirs, fused=fused)
    for a, b in zip(mine, theirs, strict=True):
        assert rel_err(a, b) < 1e-6
    for p in mine:
        copy = getattr(p, "_vl_low_precision", (None, None))[1]
        assert (copy is not None) == wants_copy(p)
        if copy is not None:
            assert torch.equal(copy, p.detach().bfloat16())
            assert cast_weight(p, torch.bfloat16) is copy
    assert optimizer.state[mine[0]]["step"].device.type == "cpu"
    with torch.no_grad():
        mine[0].add_(1.0)
    assert torch.equal(cast_weight(mine[0], torch.bfloat16), mine[0].detach().bfloat16())
    assert mine[0]._vl_low_precision is None  # the out-of-date copy let go
    # A state saved by torch's AdamW (the fused one keeps its step counts on the GPU) loads and steps on.
    reloaded = _params("cuda")
    again = AdamW(_groups(reloaded), **HYPER, fused=fused)
    again.load_state_dict(torchs.state_dict())
    for p in reloaded:
        p.grad = torch.ones_like(p)
    again.step()
    assert all(float(again.state[p]["step"]) == 4 for p in reloaded)
