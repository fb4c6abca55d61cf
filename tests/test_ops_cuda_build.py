"""The parts of this package's CUDA scan that run without a GPU: the switch, the operand checks, the alignment rule
of its vector loads, the fallbacks of ``selective_scan_fn`` and ``mamba_inner_fn`` where the kernel cannot run, and
``mamba_inner_cuda``'s plumbing around a reference scan with the kernel's contract."""

from __future__ import annotations

import functools
import itertools

import pytest
import torch
from _helpers import rel_err

from vl_mamba.ops import cuda_build
from vl_mamba.ops.scan_cuda import _aligned, _args, groups_fit, scan_operands, supports
from vl_mamba.ops.selective_scan import selective_scan_fn, selective_scan_ref


def test_switch_defaults_to_the_measured_cards(monkeypatch) -> None:
    """Unset (or empty), the switch follows the card: on from compute capability 9.0, where the kernel was
    measured; set, it decides."""
    monkeypatch.delenv("VL_MAMBA_CUDA_SCAN", raising=False)
    for capability, expected in (((9, 0), True), ((10, 0), True), ((8, 0), False)):
        cuda_build.measured_card.cache_clear()
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, cap=capability: cap)
        assert cuda_build.enabled() is expected, capability
        monkeypatch.setenv("VL_MAMBA_CUDA_SCAN", "")
        assert cuda_build.enabled() is expected, capability
        monkeypatch.delenv("VL_MAMBA_CUDA_SCAN")
    monkeypatch.undo()
    cuda_build.measured_card.cache_clear()  # the real card again for the tests that follow


def test_switch_when_set(monkeypatch) -> None:
    for value, expected in (("1", True), ("on", True), ("TRUE", True), ("0", False), ("off", False),
                            (" FALSE ", False), ("no", False)):
        monkeypatch.setenv("VL_MAMBA_CUDA_SCAN", value)
        assert cuda_build.enabled() is expected, value


def test_supports_only_cuda_tensors_up_to_16_states() -> None:
    u, A, B = torch.randn(1, 4, 8), -torch.rand(4, 16), torch.randn(1, 16, 8)
    assert not supports(u, A, B)  # a CPU tensor


def test_groups_of_b_and_c_must_span_whole_blocks() -> None:
    """Each group of B and C must serve whole blocks of 32 channels (a block reads one group's rows); the kernel is
    told each group's channel count, which one group gives as the whole width."""
    assert groups_fit(96, 1) and groups_fit(33, 1)
    assert groups_fit(128, 4) and groups_fit(4608, 2)
    assert not groups_fit(96, 2)  # 48 channels a group
    assert not groups_fit(100, 3) and not groups_fit(64, 0)
    u, delta, A = torch.randn(2, 128, 10), torch.randn(2, 128, 10), -torch.rand(128, 16)
    for bc, group_dim in (((2, 4, 16, 10), 32), ((2, 16, 10), 128), ((2, 1, 16, 10), 128)):
        B = torch.randn(*bc)
        assert _args(*scan_operands(u, delta, A, B, B.clone()), True).group_dim == group_dim


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


def test_layer_body_falls_back_on_the_cpu(monkeypatch) -> None:
    """Asked for on CPU tensors, the layer body keeps to ``mamba_inner_ref``."""
    from vl_mamba.ops.mamba_inner import mamba_inner_fn, mamba_inner_ref

    monkeypatch.setenv("VL_MAMBA_CUDA_SCAN", "1")
    g = torch.Generator().manual_seed(0)
    d, n, rank, length = 8, 4, 2, 12
    shapes = [(2, 2 * d, length), (d, 1, 4), (d,), (rank + 2 * n, d), (d, rank), (6, d)]
    args = [torch.randn(*shape, generator=g) for shape in shapes]
    args += [None, -torch.rand(d, n, generator=g), torch.randn(d, generator=g), torch.randn(d, generator=g)]
    torch.testing.assert_close(mamba_inner_fn(*args), mamba_inner_ref(*args))


def _with_a(ops, a_log):
    """The operands with A itself where they hold its log."""
    return (*ops[:2], -torch.exp(ops[2]), *ops[3:]) if a_log else tuple(ops)


def _scan_forward_ref(ops, softplus, keep, out=None, a_log=False):
    """``scan_cuda.scan_forward``'s contract, by ``selective_scan_ref`` (no saved states)."""
    y, last = selective_scan_ref(*_with_a(ops, a_log), delta_softplus=softplus, return_last_state=True)
    out = y.clone() if out is None else out.copy_(y)
    return out, last, torch.empty(0)


def _scan_backward_ref(ops, ckpt, softplus, dout, dlast, dz=None, out_z=None, du=None, ddelta=None, dbc=None,
                      a_log=False):
    """``scan_cuda.scan_backward``'s contract, by autograd through ``selective_scan_ref``."""
    leaves = [None if t is None else t.detach().requires_grad_(True) for t in ops]
    with torch.enable_grad():
        y, last = selective_scan_ref(*_with_a(leaves, a_log), delta_softplus=softplus, return_last_state=True)
        loss = (y * dout).sum() + (0 if dlast is None else (last * dlast).sum())
        grads = iter(torch.autograd.grad(loss, [t for t in leaves if t is not None]))
    du_, ddelta_, dA, dB, dC, dD, dz_, dbias = (None if t is None else next(grads) for t in leaves)
    du = du_ if du is None else du.copy_(du_)
    ddelta = ddelta_ if ddelta is None else ddelta.copy_(ddelta_)
    if dz is not None:
        dz.copy_(dz_)
    if out_z is not None:
        out_z.copy_(y)
    if dbc is not None:
        dbc[:, 0].copy_(dB)
        dbc[:, 1].copy_(dC)
    return du, ddelta, dA, dB, dC, dD, dz if dz is not None else dz_, dbias


def test_layer_body_plumbing_on_the_cpu(monkeypatch) -> None:
    """``mamba_inner_cuda`` around a reference scan with the kernel's contract, in float64 on the CPU: its layouts
    (channel-major y, dy and in_proj's gradient), out_proj's weight gradient from the scan's second y and the
    recomputed (``checkpoint_lvl=1``) or kept (0) conv and projections give ``mamba_inner_ref``'s output and every
    gradient."""
    from vl_mamba.ops import mamba_inner_cuda as module
    from vl_mamba.ops.mamba_inner import mamba_inner_ref

    monkeypatch.setattr(module, "scan_forward", _scan_forward_ref)
    monkeypatch.setattr(module, "scan_backward", _scan_backward_ref)
    g = torch.Generator().manual_seed(0)
    batch, d, n, rank, length, d_model = 2, 8, 4, 2, 13, 6

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).requires_grad_(True)

    xz = (torch.randn(2 * d, batch, length, generator=g, dtype=torch.float64).transpose(0, 1)).requires_grad_(True)
    args = [xz, rand(d, 1, 4, scale=0.5), rand(d, scale=0.1), rand(rank + 2 * n, d, scale=0.3), rand(d, rank),
            rand(d_model, d, scale=0.3), rand(d_model), (-torch.rand(d, n, generator=g, dtype=torch.float64) - 0.1)
            .requires_grad_(True), rand(d), rand(d, scale=0.1)]
    grad = torch.randn(batch, length, d_model, generator=g, dtype=torch.float64)
    # Every input wants a gradient; then only x_proj's weight (the conv's output then has no graph of its own).
    for wanted, lvl in itertools.product((args, [args[3]]), (1, 0)):
        frozen = [a if any(a is w for w in wanted) else a.detach() for a in args]
        results = []
        for fn in (functools.partial(module.mamba_inner_cuda, checkpoint_lvl=lvl), mamba_inner_ref):
            out = fn(*frozen)
            results.append([out, *torch.autograd.grad(out, wanted, grad)])
        for got, ref in zip(*results, strict=True):  # the kernel's contract rounds A, D and delta's bias to float32
            assert rel_err(got, ref) < 1e-6


def test_layer_body_takes_a_log(monkeypatch) -> None:
    """Given ``A_log`` in A's place, ``mamba_inner_cuda`` hands the scan the log with the flag that has the kernel
    exponentiate it (here the reference contract above), and the gradient reaching A_log is that of
    ``mamba_inner_ref`` through A = -exp(A_log); ``mamba_inner_fn`` takes A_log on every path and refuses both or
    neither."""
    from vl_mamba.ops import mamba_inner_cuda as module
    from vl_mamba.ops.mamba_inner import mamba_inner_fn, mamba_inner_ref

    monkeypatch.setattr(module, "scan_forward", _scan_forward_ref)
    monkeypatch.setattr(module, "scan_backward", _scan_backward_ref)
    g = torch.Generator().manual_seed(1)
    batch, d, n, rank, length, d_model = 2, 8, 4, 2, 11, 6
    xz = torch.randn(batch, 2 * d, length, generator=g, dtype=torch.float64)
    weights = [torch.randn(*s, generator=g, dtype=torch.float64) * 0.3
               for s in ((d, 1, 4), (d,), (rank + 2 * n, d), (d, rank), (d_model, d), (d_model,))]
    A_log = torch.log(torch.rand(d, n, generator=g, dtype=torch.float64) * 3 + 0.1).requires_grad_(True)
    D, bias = torch.randn(d, generator=g, dtype=torch.float64), torch.randn(d, generator=g, dtype=torch.float64)
    grad = torch.randn(batch, length, d_model, generator=g, dtype=torch.float64)
    outs = [module.mamba_inner_cuda(xz, *weights, None, D, bias, A_log=A_log),
            mamba_inner_fn(xz, *weights, None, D, bias, A_log=A_log),  # the CPU path: A computed first
            mamba_inner_ref(xz, *weights, -torch.exp(A_log), D, bias)]
    grads = [torch.autograd.grad(out, A_log, grad)[0] for out in outs]
    for out, dA_log in zip(outs[:2], grads[:2], strict=True):
        assert rel_err(out, outs[2]) < 1e-6 and rel_err(dA_log, grads[2]) < 1e-6
    for a, a_log in ((None, None), (-torch.exp(A_log), A_log)):
        with pytest.raises(ValueError, match="A_log"):
            mamba_inner_fn(xz, *weights, a, D, bias, A_log=a_log)
