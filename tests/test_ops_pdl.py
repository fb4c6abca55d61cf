"""Programmatic dependent launch of the decode kernels (``vl_mamba.ops.pdl``): never on the CPU, and on a GPU that
has it, the graphed decode step gives the same logits with it as without (every kernel of the step overlaps its
predecessor's end, so a read or write before its wait would show here)."""

from __future__ import annotations

import pytest
import torch
from _helpers import needs_cuda

from vl_mamba.decoders import MambaDecoder
from vl_mamba.generation import _decode_graph
from vl_mamba.ops import pdl


def test_not_on_cpu() -> None:
    assert not pdl.use_pdl(torch.zeros(1))
    assert pdl.launch_options(False) == {} and pdl.launch_options(True) == {"launch_pdl": True}


@pytest.mark.gpu
@needs_cuda("triton")
def test_graphed_step_same_with_and_without(monkeypatch) -> None:
    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("programmatic dependent launch needs compute capability 9.0")
    torch.manual_seed(0)
    decoder = MambaDecoder(d_model=1024, n_layer=6, vocab_size=5000).cuda().to(torch.bfloat16).eval()
    tokens = torch.randint(0, 5000, (12, 1), device="cuda")

    def logits(enabled: bool) -> torch.Tensor:
        monkeypatch.setattr(pdl, "ENABLED", enabled)
        decoder.__dict__.pop("_decode_graphs", None)
        with torch.inference_mode():
            states, step = _decode_graph(decoder, 1, torch.device("cuda"), torch.bfloat16)
            for state in states:
                state.conv.zero_()
                state.ssm.zero_()
            return torch.stack([step(t).clone() for t in tokens])

    assert pdl.use_pdl(tokens), "an sm_90 GPU with this Triton should launch with PDL"
    with_pdl, without = logits(True), logits(False)
    assert torch.isfinite(with_pdl).all()
    torch.testing.assert_close(with_pdl, without, rtol=0, atol=0)
