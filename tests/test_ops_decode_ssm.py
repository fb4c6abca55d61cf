"""``ssm_step``, the fused middle of a decode step (conv, x_proj, dt_proj, state update), against ``ssm_step_ref``:
the output and both states it updates. The Triton kernels run on the CPU under ``TRITON_INTERPRET=1`` (in a
subprocess, since the switch is read when the kernels are defined), and on the GPU in bf16 and fp16; and the
whole decode step with each of the step's Triton kernels switched off in turn."""

from __future__ import annotations

import pytest
import torch
from _helpers import importable, needs_cuda, rel_err, run_triton_interpreted

from vl_mamba.decoders import MambaDecoder
from vl_mamba.ops import decode_ssm as decode_ssm_module
from vl_mamba.ops import gemv as gemv_module
from vl_mamba.ops import ssm_step, ssm_step_ref

NAMES = ("x", "z", "conv_state", "ssm_state", "conv_weight", "conv_bias", "x_proj_weight", "dt_proj_weight", "A", "D",
         "dt_bias")

# (d_inner, d_state, dt_rank, d_conv, conv bias, D and dt_bias, gate): channels not a multiple of the kernels'
# 64-channel blocks, more than 16 partial-sum rows (d_inner > 1024), a dt_rank past one block, no optional input.
CASES = [
    (256, 16, 16, 4, True, True, True),
    (300, 8, 5, 3, False, False, False),
    (130, 16, 160, 4, True, True, True),
    (1100, 16, 70, 4, True, True, False),
]


def step_inputs(e: int, n: int, rank: int, width: int, conv_bias: bool, skip: bool, gate: bool,
                dtype: torch.dtype, device: str = "cpu", seed: int = 0) -> dict:
    """Inputs of ``ssm_step`` for one sequence; states and A, D, dt_bias in float32 as the decoder keeps them."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0, dt=dtype):
        return (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dt)

    return {
        "x": rand(1, e), "z": rand(1, e) if gate else None,
        "conv_state": rand(1, e, width), "ssm_state": rand(1, e, n, dt=torch.float32),
        "conv_weight": rand(e, width, scale=0.5), "conv_bias": rand(e) if conv_bias else None,
        "x_proj_weight": rand(rank + 2 * n, e, scale=e**-0.5), "dt_proj_weight": rand(e, rank, scale=rank**-0.5),
        "A": -(torch.rand(e, n, generator=g) * 4 + 0.1).to(device), "D": rand(e, dt=torch.float32) if skip else None,
        "dt_bias": rand(e, scale=0.5, dt=torch.float32) if skip else None,
    }


def step_errors(step, inputs: dict) -> dict[str, float]:
    """Relative errors of ``step``'s output and updated states against ``ssm_step_ref`` in float64."""
    exact = {k: None if v is None else v.double().cpu().clone() for k, v in inputs.items()}
    y_exact = ssm_step_ref(*(exact[k] for k in NAMES))
    y = step(*(inputs[k] for k in NAMES))
    assert y.dtype == inputs["x"].dtype and y.shape == inputs["x"].shape
    return {"y": rel_err(y, y_exact), "ssm_state": rel_err(inputs["ssm_state"], exact["ssm_state"]),
            "conv_state": rel_err(inputs["conv_state"], exact["conv_state"])}


def _interpreted_errors(dtype: str) -> list[dict[str, float]]:
    """The Triton kernels' errors for every case, run by Triton's CPU interpreter."""
    return run_triton_interpreted(
        "import test_ops_decode_ssm as t; from vl_mamba.ops.decode_ssm import ssm_step_fused",
        f"[t.step_errors(ssm_step_fused, t.step_inputs(*c, dtype=torch.{dtype})) for c in t.CASES]",
    )


def test_cpu_composes_the_four_operations() -> None:
    """Off the fused path (here: CPU) the step is the four operations in turn, which on CPU are their refs."""
    inputs = step_inputs(*CASES[0], dtype=torch.float32)
    errors = step_errors(ssm_step, inputs)
    assert max(errors.values()) < 1e-6, errors


@pytest.mark.skipif(not importable("triton"), reason="needs triton (installed with torch on Linux)")
def test_kernels_match_reference_in_triton_interpreter() -> None:
    for case, errors in zip(CASES, _interpreted_errors("float32"), strict=True):
        assert max(errors.values()) < 1e-5, (case, errors)
    for case, errors in zip(CASES, _interpreted_errors("float16"), strict=True):
        # fp16 inputs and output; states float32: the output's rounding, and the conv output's before x_proj
        assert errors["y"] < 2e-3 and errors["ssm_state"] < 2e-3 and errors["conv_state"] == 0, (case, errors)


def test_fused_step_refuses_a_batch() -> None:
    inputs = step_inputs(*CASES[0], dtype=torch.float32)
    inputs["x"] = inputs["x"].expand(2, -1)
    with pytest.raises(ValueError, match="one sequence"):
        decode_ssm_module.ssm_step_fused(*(inputs[k] for k in NAMES))


@pytest.mark.gpu
@needs_cuda("triton")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", [(5120, 16, 160, 4, True, True, True), *CASES])
def test_fused_kernels_on_gpu(case, dtype) -> None:
    """At Mamba-2.8B's shapes and the odd ones: no less accurate than the four operations one by one."""
    assert decode_ssm_module._kernels() is not None, "Triton should import where CUDA does"
    inputs = step_inputs(*case, dtype=dtype, device="cuda")
    unfused = {k: None if v is None else v.clone() for k, v in inputs.items()}
    with torch.no_grad():
        fused_err = step_errors(ssm_step, inputs)
        unfused_err = step_errors(decode_ssm_module._ssm_step_apart, unfused)
    tol = 1e-2 if dtype == torch.bfloat16 else 2e-3
    assert fused_err["conv_state"] == 0
    for key in ("y", "ssm_state"):
        assert fused_err[key] < tol and fused_err[key] <= 1.5 * unfused_err[key] + 1e-3, (key, fused_err, unfused_err)


@pytest.mark.gpu
@needs_cuda("triton")
@pytest.mark.parametrize("off", [("gemv", "_kernel"), ("gemv", "_norm_kernel"), ("decode_ssm", "_kernels"), None])
def test_decoder_step_with_each_kernel_off(monkeypatch, off) -> None:
    """The decode step with every Triton kernel against the same steps with one of them (or all) switched off."""
    torch.manual_seed(0)
    decoder = MambaDecoder(d_model=256, n_layer=2, vocab_size=500).cuda().to(torch.bfloat16).eval()
    token = torch.tensor([7], device="cuda")

    def steps():
        states = decoder.allocate_states(1, torch.device("cuda"), torch.bfloat16)
        with torch.no_grad():
            return torch.stack([decoder.step(decoder.embed(token), states).float() for _ in range(6)])

    fast = steps()
    switches = [("gemv", "_kernel"), ("gemv", "_norm_kernel"), ("decode_ssm", "_kernels")] if off is None else [off]
    for module, name in switches:
        monkeypatch.setattr(gemv_module if module == "gemv" else decode_ssm_module, name, lambda: None)
    assert rel_err(fast, steps()) < 2e-2
