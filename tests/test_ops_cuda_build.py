"""The parts of this package's CUDA scan that run without a GPU: the switch, the operand checks, the alignment rule
of its vector loads, and the fallback of ``selective_scan_fn`` where the kernel cannot run."""

from __future__ import annotations

import torch

from vl_mamba.ops import cuda_build
from vl_mamba.ops.scan_cuda import _aligned, supports
from vl_mamba.ops.selective_scan import selective_scan_fn, selective_scan_ref


def test_switch_is_opt_in(monkeypatch) -> None:
    monkeypatch.delenv("VL_MAMBA_CUDA_SCAN", raising=False)
    assert not cuda_build.enabled()
    for value, expected in (("1", True), ("on", True), ("TRUE", True), ("0", False), ("off", False), ("", False)):
        monkeypatch.setenv("VL_MAMBA_CUDA_SCAN", value)
        assert cuda_build.enabled() is expected, value


def test_supports_only_cuda_tensors_up_to_16_states() -> None:
    u, A, B = torch.randn(1, 4, 8), -torch.rand(4, 16), torch.randn(1, 16, 8)
    assert not supports(u, A, B)  # a CPU tensor


def test_vector_loads_need_aligned_rows() -> None:
    base = torch.zeros(2, 8, 64, dtype=torch.bfloat16)
    assert _aligned(base, 4)
    assert not _aligned(base[:, :, 1:], 4)  # every row starts one element late
    assert not _aligned(torch.zeros(2, 8, 63, dtype=torch.bfloat16)[:, :, :60], 4)  # rows 63 elements apart
    assert _aligned(None, 4)


def test_fallback_where_the_kernel_cannot_run(monkeypatch) -> None:
    """Asked for on CPU tensors, the switch changes nothing: the CPU scan runs."""
    monkeypatch.setenv("VL_MAMBA_CUDA_SCAN", "1")
    g = torch.Generator().manual_seed(0)
    u, delta = torch.randn(2, 4, 10, generator=g), torch.randn(2, 4, 10, generator=g)
    A, B, C = -torch.rand(4, 3, generator=g), torch.randn(2, 3, 10, generator=g), torch.randn(2, 3, 10, generator=g)
    torch.testing.assert_close(selective_scan_fn(u, delta, A, B, C), selective_scan_ref(u, delta, A, B, C))
