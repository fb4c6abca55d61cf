"""The selective scan against its specification ``selective_scan_ref``: outputs and every gradient, float64 /
float32 / half-precision inputs, odd lengths and length 1, grouped B and C, every optional argument, sequences
cut into many tiles, extreme decays, the single-step update chained over a sequence, shape errors; and, on a
GPU, mamba_ssm's kernels against the same references."""

from __future__ import annotations

import pytest
import torch
from _helpers import TOLERANCE, assert_close_rel, clone_inputs, needs_cuda, outputs_and_grads, scan_inputs

from vl_mamba.ops import (
    linear_scan,
    selective_scan_fn,
    selective_scan_ref,
    selective_scan_torch,
    selective_state_update,
    selective_state_update_ref,
)
from vl_mamba.ops import selective_scan as scan_module

# (batch, dim, L, N, groups): odd lengths, length 1, N = 1, grouped B / C.
SHAPES = [
    (2, 8, 37, 4, None),
    (1, 3, 1, 5, None),
    (3, 4, 16, 1, None),
    (2, 6, 23, 3, 2),
    (1, 8, 11, 4, 4),
    (2, 16, 23, 16, None),  # batch * dim > L, a multiple of 16: blocked layout copies; N = 16: `_column` views
]
# (D, z, delta_bias, delta_softplus, return_last_state)
OPTIONS = [
    (True, True, True, True, True),
    (False, False, False, False, False),
    (True, False, True, False, True),
    (False, True, False, True, False),
]


def compare_with_ref(inputs, dtype, fn=selective_scan_torch, tol=None, **kwargs):
    """``fn`` against ``selective_scan_ref`` on the same inputs: dtypes, outputs and every gradient."""
    tol = TOLERANCE[dtype] if tol is None else tol
    fast_out, fast_grads = outputs_and_grads(fn, inputs, **kwargs)
    ref_out, ref_grads = outputs_and_grads(selective_scan_ref, inputs, **kwargs)
    assert len(fast_out) == len(ref_out)
    for i, (f, r) in enumerate(zip(fast_out, ref_out)):
        assert f.dtype == r.dtype, f"output {i}: dtype {f.dtype} vs {r.dtype}"
        assert_close_rel(f, r, tol, f"output {i}")
    assert fast_grads.keys() == ref_grads.keys()
    for name in ref_grads:
        assert fast_grads[name].dtype == ref_grads[name].dtype, name
        assert_close_rel(fast_grads[name], ref_grads[name], tol, f"grad of {name}")


@pytest.fixture(params=[None, 1, 200], ids=["one-tile", "1-step-tiles", "few-step-tiles"])
def tile_elements(request, monkeypatch):
    """Also run with tiles of one and of a few steps, so that sequences cross many tile borders (the few-step
    tiles leave a ragged last tile for most shapes here)."""
    if request.param is not None:
        monkeypatch.setattr(scan_module, "_TILE_ELEMENTS", request.param)
    return request.param


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("options", OPTIONS, ids=str)
def test_matches_ref(dtype, shape, options, tile_elements):
    batch, dim, length, n, groups = shape
    use_D, use_z, use_bias, softplus, last = options
    inputs = scan_inputs(batch, dim, length, n, groups, dtype, D=use_D, z=use_z, delta_bias=use_bias)
    compare_with_ref(inputs, dtype, delta_softplus=softplus, return_last_state=last)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("shape", [(2, 8, 37, 4, None), (2, 6, 19, 3, 3)], ids=str)
def test_half_precision_inputs_match_ref(dtype, shape, tile_elements):
    """Half-precision activations with float32 A, D and delta_bias, as under mixed precision (see TOLERANCE)."""
    batch, dim, length, n, groups = shape
    inputs = scan_inputs(batch, dim, length, n, groups, dtype, param_dtype=torch.float32)
    compare_with_ref(inputs, dtype, delta_softplus=True, return_last_state=True)


def test_non_contiguous_inputs(tile_elements):
    check_strided_inputs(selective_scan_torch)


def check_strided_inputs(fn) -> None:
    """Inputs as strided views, as projections produce them ((batch, L, ...) transposed), and the output's
    gradient in that layout too, as a layer's out_proj returns it: the reference's results."""
    base = scan_inputs(2, 16, 19, 4, 2, torch.float64)
    strided = {"u", "delta", "z", "B", "C"}
    leaves = {
        k: (v.detach().movedim(-1, 1).contiguous() if k in strided else v.detach().clone()).requires_grad_()
        for k, v in base.items()
    }
    views = {k: v.movedim(1, -1) if k in strided else v for k, v in leaves.items()}
    assert not views["u"].is_contiguous() and not views["B"].is_contiguous()
    weight = torch.randn(2, 16, 19, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    y = fn(**views, delta_softplus=True)
    (y.transpose(1, 2) * weight.transpose(1, 2).contiguous()).sum().backward()  # y's gradient: (b, L, d) memory
    ref_inputs = clone_inputs(base)
    y_ref = selective_scan_ref(**ref_inputs, delta_softplus=True)
    (y_ref * weight).sum().backward()
    assert_close_rel(y, y_ref, 1e-10, "output")
    for k in base:
        grad = leaves[k].grad.movedim(1, -1) if k in strided else leaves[k].grad
        assert_close_rel(grad, ref_inputs[k].grad, 1e-10, f"grad of {k}")


@pytest.mark.parametrize("channel_blocks", [2, 3], indirect=True, ids=lambda t: f"{t}-threads")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("shape", SHAPES + [(2, 48, 9, 4, None), (2, 8, 12, 2, 8)], ids=str)
@pytest.mark.parametrize("options", OPTIONS[:2], ids=str)
def test_channel_blocks_match_ref(dtype, shape, options, channel_blocks):
    """The scan cut into blocks of channels on worker threads (whole groups; B and C's gradients summed over the
    blocks that share them) gives the reference's outputs and gradients; the caller's thread count is kept."""
    batch, dim, length, n, groups = shape
    use_D, use_z, use_bias, softplus, last = options
    inputs = scan_inputs(batch, dim, length, n, groups, dtype, D=use_D, z=use_z, delta_bias=use_bias)
    parts = scan_module._channel_parts(inputs["u"], inputs["A"], inputs["B"])
    assert len(parts) > 1
    compare_with_ref(inputs, dtype, delta_softplus=softplus, return_last_state=last)
    assert torch.get_num_threads() == channel_blocks


@pytest.mark.parametrize(
    ("shape", "threads", "expected"),
    [
        ((2, 256, 1024, 16, None), 2, [(0, 128), (128, 256)]),  # the benchmark's scan: two blocks on two threads
        ((2, 256, 1024, 16, None), 1, [(0, 256)]),  # one thread: one block
        ((2, 256, 1024, 16, None), 3, [(0, 80), (80, 176), (176, 256)]),  # cut at multiples of 16 channels
        ((32, 256, 20, 8, None), 2, [(0, 256)]),  # the demo's decoder: too little work to cut
        ((2, 256, 1024, 16, 4), 3, [(0, 128), (128, 256)]),  # 4 groups over 3 threads: two blocks of whole groups
        ((2, 24, 8192, 16, None), 2, [(0, 24)]),  # fewer channels than two blocks of 16
    ],
)
def test_channel_parts(shape, threads, expected):
    batch, dim, length, n, groups = shape
    u, A = torch.empty(batch, dim, length), torch.empty(dim, n)
    B = torch.empty(batch, n, length) if groups is None else torch.empty(batch, groups, n, length)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        parts = scan_module._channel_parts(u, A, B)
    finally:
        torch.set_num_threads(before)
    assert [(p.start, p.stop) for p in parts] == expected


@pytest.mark.parametrize("shape", [(32, 20), (20, 32), (48, 7), (7, 48), (16, 16), (300, 5), (5, 300), (24, 5), (1, 1)])
def test_layout_transpose(shape):
    """``_transpose`` of contiguous and strided matrices, through each of its copies."""
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    for view in (x, x.t().contiguous().t(), torch.randn(shape[0], 2 * shape[1])[:, ::2]):
        out = scan_module._transpose(view)
        assert out.is_contiguous() and torch.equal(out, view.t())


def test_last_state_gradient_matches_ref(tile_elements):
    check_last_state_gradient(selective_scan_torch)


def check_last_state_gradient(fn) -> None:
    """The last state alone carries the loss: its gradient reaches every input as in the reference."""
    inputs = scan_inputs(2, 4, 29, 3, dtype=torch.float64)

    def last_state_only(scan):
        return lambda **kw: scan(**kw, delta_softplus=True, return_last_state=True)[1]

    fast_out, fast_grads = outputs_and_grads(last_state_only(fn), inputs)
    ref_out, ref_grads = outputs_and_grads(last_state_only(selective_scan_ref), inputs)
    assert_close_rel(fast_out[0], ref_out[0], 1e-10, "last state")
    for name in ("u", "delta", "A", "B", "delta_bias"):
        assert_close_rel(fast_grads[name], ref_grads[name], 1e-10, f"grad of {name}")
    # C, D and z only act on the outputs, not on the state.
    for name in ("C", "D", "z"):
        assert torch.count_nonzero(fast_grads[name]) == 0, name


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_extreme_decays_stay_finite_and_match_ref(dtype, tile_elements):
    check_extreme_decays(selective_scan_torch, dtype)


def check_extreme_decays(fn, dtype) -> None:
    """dt * |A| up to 5000 in some channels (decay exp(-5000) = 0), ordinary decays in others."""
    inputs = scan_inputs(2, 6, 41, 4, dtype=dtype)
    with torch.no_grad():
        inputs["delta"][:, :3] = 50.0 + inputs["delta"][:, :3]  # softplus(~50) = ~50
        inputs["A"][:3] = -100.0 + inputs["A"][:3]
        inputs["delta"][:, 3, ::3] = 80.0  # an extreme step now and then in an otherwise ordinary channel
    compare_with_ref(inputs, dtype, fn, delta_softplus=True, return_last_state=True)
    y, last = fn(**inputs, delta_softplus=True, return_last_state=True)
    assert torch.isfinite(y).all() and torch.isfinite(last).all()


def test_length_zero():
    inputs = scan_inputs(2, 4, 0, 3)
    y, last = selective_scan_torch(**inputs, delta_softplus=True, return_last_state=True)
    y_ref, last_ref = selective_scan_ref(**inputs, delta_softplus=True, return_last_state=True)
    assert y.shape == y_ref.shape == (2, 4, 0)
    assert torch.equal(last, last_ref) and not last.any()


def test_fn_dispatches_to_torch_on_cpu_without_the_kernel(monkeypatch):
    """With the compiled CPU kernel switched off (``test_ops_scan_cpu`` tests it and its dispatch)."""
    monkeypatch.setenv("VL_MAMBA_CPU_KERNEL", "0")
    inputs = scan_inputs(2, 8, 17, 4)
    with torch.no_grad():
        a = selective_scan_fn(**inputs, delta_softplus=True, return_last_state=True)
        b = selective_scan_torch(**inputs, delta_softplus=True, return_last_state=True)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("groups", [None, 2], ids=["B-shared", "B-grouped"])
@pytest.mark.parametrize("options", OPTIONS[:2], ids=["all-options", "no-options"])
def test_state_update_chained_equals_scan(dtype, groups, options, tile_elements):
    """One ``selective_state_update`` per position, from a zero state, gives the scan's outputs and last state."""
    use_D, use_z, use_bias, softplus, _ = options
    batch, dim, length, n = 2, 6, 13, 4
    inputs = scan_inputs(batch, dim, length, n, groups, dtype, D=use_D, z=use_z, delta_bias=use_bias)
    inputs = {k: None if v is None else v.detach() for k, v in inputs.items()}
    y_full, last_full = selective_scan_fn(**inputs, delta_softplus=softplus, return_last_state=True)
    state = torch.zeros(batch, dim, n, dtype=last_full.dtype)
    ys = []
    for t in range(length):
        z = inputs["z"]
        ys.append(
            selective_state_update(
                state, inputs["u"][..., t], inputs["delta"][..., t], inputs["A"], inputs["B"][..., t],
                inputs["C"][..., t], inputs["D"], None if z is None else z[..., t], inputs["delta_bias"], softplus,
            )
        )
    assert_close_rel(torch.stack(ys, -1), y_full, TOLERANCE[dtype], "outputs")
    assert_close_rel(state, last_full, TOLERANCE[dtype], "state")


def test_state_update_from_a_prefix_state():
    """Scan a prefix, then continue one step at a time from its last state: same as scanning everything."""
    inputs = {k: v.detach() for k, v in scan_inputs(2, 6, 20, 4, dtype=torch.float64).items()}
    y_full = selective_scan_ref(**inputs, delta_softplus=True)
    prefix = {k: v[..., :12] if k in ("u", "delta", "B", "C", "z") else v for k, v in inputs.items()}
    _, state = selective_scan_torch(**prefix, delta_softplus=True, return_last_state=True)
    for t in range(12, 20):
        y_t = selective_state_update_ref(
            state, inputs["u"][..., t], inputs["delta"][..., t], inputs["A"], inputs["B"][..., t],
            inputs["C"][..., t], inputs["D"], inputs["z"][..., t], inputs["delta_bias"], True,
        )
        assert_close_rel(y_t, y_full[..., t], 1e-10, f"step {t}")


def test_state_update_dispatches_to_ref_on_cpu():
    inputs = {k: v.detach() for k, v in scan_inputs(2, 6, 1, 4).items()}
    args = [inputs[k][..., 0] for k in ("u", "delta")] + [inputs["A"], inputs["B"][..., 0], inputs["C"][..., 0]]
    s1 = torch.randn(2, 6, 4)
    s2 = s1.clone()
    y1 = selective_state_update(s1, *args, inputs["D"], inputs["z"][..., 0], inputs["delta_bias"], True)
    y2 = selective_state_update_ref(s2, *args, inputs["D"], inputs["z"][..., 0], inputs["delta_bias"], True)
    assert torch.equal(y1, y2) and torch.equal(s1, s2)


@pytest.mark.parametrize("length", [1, 2, 17, 64, 101])
@pytest.mark.parametrize("reverse", [False, True])
def test_linear_scan_matches_loop(length, reverse):
    gen = torch.Generator().manual_seed(length)
    a = torch.rand(length, 3, 5, generator=gen, dtype=torch.float64)
    b = torch.randn(length, 3, 5, generator=gen, dtype=torch.float64)
    a[length // 2] = 0.0  # a zero decay cuts the sequence
    expected = torch.empty_like(b)
    h = torch.zeros_like(b[0])
    for t in range(length - 1, -1, -1) if reverse else range(length):
        h = a[t] * h + b[t]
        expected[t] = h
    assert_close_rel(linear_scan(a, b, reverse=reverse), expected, 1e-12)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(u=torch.zeros(2, 8)), "u must be"),
        (dict(delta=torch.zeros(2, 8, 9)), "delta must"),
        (dict(A=torch.zeros(7, 4)), "A must be"),
        (dict(B=torch.zeros(2, 5, 10)), "B must be"),
        (dict(C=torch.zeros(2, 3, 4, 10)), "C must be"),
        (dict(B=torch.zeros(2, 2, 4, 10), C=torch.zeros(2, 4, 4, 10)), "same number of groups"),
        (dict(D=torch.zeros(7)), "D must be"),
        (dict(z=torch.zeros(2, 8, 11)), "z must"),
        (dict(delta_bias=torch.zeros(8, 1)), "delta_bias must be"),
    ],
)
@pytest.mark.parametrize("fn", [selective_scan_torch, selective_scan_ref], ids=lambda f: f.__name__)
def test_shape_errors(fn, change, message):
    inputs = {k: v.detach() for k, v in scan_inputs(2, 8, 10, 4).items()}
    inputs.update(change)
    with pytest.raises(ValueError, match=message):
        fn(**inputs)


# --- GPU: mamba_ssm's kernels against the references -------------------------------------------------------------


@pytest.fixture
def mamba_ssm_scan(monkeypatch):
    """``selective_scan_fn`` on mamba_ssm's kernel: this package's own CUDA scan, first by default, turned off."""
    monkeypatch.setenv("VL_MAMBA_CUDA_SCAN", "0")

GPU_TOLERANCE = {torch.float32: 5e-4, torch.bfloat16: 3e-2}  # kernels: exp2 with a pre-scaled A, other sum orders


@pytest.mark.gpu
@needs_cuda("mamba_ssm")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("groups", [None, 2], ids=["B-shared", "B-grouped"])
def test_cuda_scan_matches_ref(dtype, groups, mamba_ssm_scan):
    assert scan_module._cuda_scan() is not None
    inputs = scan_inputs(2, 64, 301, 16, groups, dtype, param_dtype=torch.float32, device="cuda")
    # mamba_ssm does not back-propagate through the last state: the loss weighs y only.
    kwargs = dict(delta_softplus=True, return_last_state=True, loss_on=(0,))
    kernel_out, kernel_grads = outputs_and_grads(selective_scan_fn, inputs, **kwargs)
    ref_out, ref_grads = outputs_and_grads(selective_scan_ref, clone_inputs(inputs), **kwargs)
    tol = GPU_TOLERANCE[dtype]
    for i, (k, r) in enumerate(zip(kernel_out, ref_out)):
        assert_close_rel(k, r, tol, f"output {i}")
    for name in ref_grads:
        assert_close_rel(kernel_grads[name], ref_grads[name], tol, f"grad of {name}")


@pytest.mark.gpu
@needs_cuda("mamba_ssm")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("options", OPTIONS[:2], ids=["all-options", "no-options"])
def test_cuda_state_update_matches_ref(dtype, options):
    assert scan_module._cuda_state_update() is not None
    use_D, use_z, use_bias, softplus, _ = options
    inputs = {k: None if v is None else v.detach()[..., 0] if v.dim() == 3 and k != "A" else v.detach()
              for k, v in scan_inputs(4, 64, 1, 16, None, dtype, param_dtype=torch.float32, device="cuda",
                                      D=use_D, z=use_z, delta_bias=use_bias).items()}
    state = torch.randn(4, 64, 16, device="cuda")
    state_ref = state.clone()
    args = [inputs[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
    y = selective_state_update(state, *args, softplus)
    y_ref = selective_state_update_ref(state_ref, *args, softplus)
    assert_close_rel(y, y_ref, GPU_TOLERANCE[dtype], "output")
    assert_close_rel(state, state_ref, GPU_TOLERANCE[torch.float32], "state")


@pytest.mark.gpu
@needs_cuda("mamba_ssm")
def test_cuda_scan_matches_cpu_torch_path(mamba_ssm_scan):
    """The same inputs on the GPU (kernel) and on the CPU (``selective_scan_torch``), float32."""
    inputs = scan_inputs(2, 32, 129, 8, dtype=torch.float32)
    cpu_out, cpu_grads = outputs_and_grads(selective_scan_fn, inputs, delta_softplus=True)
    gpu_out, gpu_grads = outputs_and_grads(selective_scan_fn, clone_inputs(inputs, device="cuda"),
                                           delta_softplus=True)
    assert_close_rel(gpu_out[0], cpu_out[0], GPU_TOLERANCE[torch.float32], "output")
    for name in cpu_grads:
        assert_close_rel(gpu_grads[name], cpu_grads[name], GPU_TOLERANCE[torch.float32], f"grad of {name}")
