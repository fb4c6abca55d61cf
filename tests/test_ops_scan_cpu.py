"""The compiled CPU selective scan (``selective_scan_cpu``) against the specification ``selective_scan_ref``:
outputs and every gradient (and second-order ones), float64 / float32 / half-precision inputs, odd lengths, length 1
and 0, grouped B and C, every optional argument, sequences cut into many chunks, channels cut into blocks on threads,
strided inputs, extreme decays; and how the kernel is built, cached, checked, switched off and dispatched to.

The kernel needs a C compiler, which every machine that runs these tests has (CI included): a machine where it does
not build fails here rather than skipping, unless ``VL_MAMBA_CPU_KERNEL=0`` says to run without it."""

from __future__ import annotations

import ctypes
import subprocess

import pytest
import torch
from _helpers import assert_close_rel, scan_inputs
from test_ops_selective_scan import (
    OPTIONS,
    SHAPES,
    check_extreme_decays,
    check_last_state_gradient,
    check_strided_inputs,
    compare_with_ref,
)

from vl_mamba.ops import cpu_build, scan_cpu, selective_scan_fn, selective_scan_ref, selective_scan_torch
from vl_mamba.ops.scan_cpu import kernel_available, selective_scan_cpu

pytestmark = pytest.mark.skipif(not cpu_build.enabled(), reason="VL_MAMBA_CPU_KERNEL=0: the kernel is switched off")


def test_kernel_builds_here():
    assert kernel_available(), "the CPU kernel did not build or load: see the warning (a C compiler is needed)"


@pytest.fixture(params=[None, 16, 200], ids=["one-chunk", "1-step-chunks", "few-step-chunks"])
def chunk_elements(request, monkeypatch):
    """Also chunks of one and of a few steps (chunk = elements // (16 N)), so that sequences cross many chunk
    borders, with a ragged last chunk for most shapes here."""
    if request.param is not None:
        monkeypatch.setattr(scan_cpu, "_CHUNK_ELEMENTS", request.param)
    return request.param


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("shape", SHAPES + [(2, 40, 9, 3, None), (1, 36, 5, 2, 2)], ids=str)
@pytest.mark.parametrize("options", OPTIONS, ids=str)
def test_matches_ref(dtype, shape, options, chunk_elements):
    """The added shapes have 40 channels (blocks of 16, 16 and 8 lanes) and 2 groups of 18 (blocks cut at the
    group border)."""
    batch, dim, length, n, groups = shape
    use_D, use_z, use_bias, softplus, last = options
    inputs = scan_inputs(batch, dim, length, n, groups, dtype, D=use_D, z=use_z, delta_bias=use_bias)
    compare_with_ref(inputs, dtype, selective_scan_cpu, delta_softplus=softplus, return_last_state=last)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_half_precision_inputs_match_ref(dtype):
    inputs = scan_inputs(2, 8, 37, 4, None, dtype, param_dtype=torch.float32)
    compare_with_ref(inputs, dtype, selective_scan_cpu, delta_softplus=True, return_last_state=True)


@pytest.mark.parametrize("channel_blocks", [2, 3], indirect=True, ids=lambda t: f"{t}-threads")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("shape", SHAPES + [(2, 48, 9, 4, None), (2, 8, 12, 2, 8)], ids=str)
def test_channel_blocks_match_ref(dtype, shape, channel_blocks, monkeypatch):
    """Blocks of channels side by side (B and C's gradients summed over the blocks that share them), with chunks of
    a few steps; the caller's thread count is kept."""
    monkeypatch.setattr(scan_cpu, "_CHUNK_ELEMENTS", 200)
    batch, dim, length, n, groups = shape
    inputs = scan_inputs(batch, dim, length, n, groups, dtype)
    from vl_mamba.ops.selective_scan import _channel_parts

    assert len(_channel_parts(inputs["u"], inputs["A"], inputs["B"], scan_cpu._PART_ELEMENTS)) > 1
    compare_with_ref(inputs, dtype, selective_scan_cpu, delta_softplus=True, return_last_state=True)
    assert torch.get_num_threads() == channel_blocks


def test_strided_inputs_and_gradient(chunk_elements):
    """The kernel reads transposed views with their strides, y's gradient included."""
    check_strided_inputs(selective_scan_cpu)


def test_last_state_alone_carries_the_loss(chunk_elements):
    check_last_state_gradient(selective_scan_cpu)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_extreme_decays_stay_finite_and_match_ref(dtype, chunk_elements):
    check_extreme_decays(selective_scan_cpu, dtype)


def test_length_zero_and_no_grad():
    inputs = scan_inputs(2, 4, 0, 3)
    y, last = selective_scan_cpu(**inputs, delta_softplus=True, return_last_state=True)
    assert y.shape == (2, 4, 0) and last.shape == (2, 4, 3) and not last.any()
    (y.sum() + last.sum()).backward()
    assert not inputs["A"].grad.any()
    with torch.no_grad():  # no states kept for a backward
        long = {k: v.detach() for k, v in scan_inputs(2, 4, 300, 3).items()}
        y = selective_scan_cpu(**long, delta_softplus=True)
        assert_close_rel(y, selective_scan_ref(**long, delta_softplus=True), 1e-5, "output")


def test_double_backward_matches_ref():
    """With ``create_graph=True`` the backward is differentiable again: a Hessian-vector product through the kernel
    is the reference's, for every input."""
    inputs = scan_inputs(2, 6, 9, 3, 2, dtype=torch.float64)
    leaves = [v for v in inputs.values() if v is not None]
    weight = torch.randn(2, 6, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    results = []
    for fn in (selective_scan_cpu, selective_scan_ref):
        y, last = fn(**inputs, delta_softplus=True, return_last_state=True)
        first = torch.autograd.grad((y * weight).sum() + last.square().sum(), leaves, create_graph=True)
        second = torch.autograd.grad(sum((g * g).sum() for g in first), leaves)
        results.append([*first, *second])
    for i, (a, b) in enumerate(zip(*results)):
        assert_close_rel(a, b, 1e-10, f"gradient {i}")


def test_fn_dispatch_and_switch(monkeypatch):
    """``selective_scan_fn`` runs the kernel on the CPU; ``VL_MAMBA_CPU_KERNEL=0`` switches to the PyTorch scan at
    run time, and ``selective_scan_cpu`` then refuses to run."""
    inputs = {k: v.detach() for k, v in scan_inputs(2, 8, 17, 4).items()}
    kw = dict(delta_softplus=True, return_last_state=True)
    fn, kernel, torch_path = selective_scan_fn(**inputs, **kw), selective_scan_cpu(**inputs, **kw), None
    assert torch.equal(fn[0], kernel[0]) and torch.equal(fn[1], kernel[1])
    monkeypatch.setenv("VL_MAMBA_CPU_KERNEL", "0")
    assert not kernel_available()
    fn, torch_path = selective_scan_fn(**inputs, **kw), selective_scan_torch(**inputs, **kw)
    assert torch.equal(fn[0], torch_path[0]) and torch.equal(fn[1], torch_path[1])
    with pytest.raises(RuntimeError, match="not available"):
        selective_scan_cpu(**inputs)


def test_build_is_cached_by_key(tmp_path, monkeypatch):
    """A build goes to $VL_MAMBA_CACHE/kernels under a name that hashes the source and flags; a second request
    reuses the file; the library loads and passes the check against the reference."""
    monkeypatch.setenv("VL_MAMBA_CACHE", str(tmp_path))
    compiler = cpu_build.shutil.which("cc")
    flags, libs = cpu_build._VARIANTS[-1]  # the portable build: every machine with a compiler makes it
    path = cpu_build._build(compiler, flags, libs)
    assert path.parent == tmp_path / "kernels" and path.name.startswith("cpu_scan-") and path.suffix == ".so"
    stamp = path.stat().st_mtime_ns
    assert cpu_build._build(compiler, flags, libs) == path and path.stat().st_mtime_ns == stamp
    assert [p.name for p in (tmp_path / "kernels").iterdir()] == [path.name]  # no temporary files left
    assert cpu_build._build(compiler, ("-DVL_UNUSED",), libs) != path  # other flags, another file
    assert scan_cpu.self_check(cpu_build._load(path)) is None


def test_broken_compiler_falls_back_with_a_warning(tmp_path, monkeypatch):
    """A compiler that fails every build: ``library()`` warns with the compiler's message and returns None, and the
    scan runs in PyTorch."""
    fake = tmp_path / "cc"
    fake.write_text("#!/bin/sh\necho 'fatal: no such compiler feature' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CC", str(fake))
    monkeypatch.setenv("VL_MAMBA_CACHE", str(tmp_path / "cache"))
    cpu_build.library.cache_clear()
    try:
        with pytest.warns(UserWarning, match="not used.*no such compiler feature"):
            assert cpu_build.library() is None
        assert not kernel_available()
        inputs = {k: v.detach() for k, v in scan_inputs(1, 4, 6, 2).items()}
        assert torch.equal(selective_scan_fn(**inputs), selective_scan_torch(**inputs))
    finally:
        monkeypatch.undo()
        cpu_build.library.cache_clear()
    assert kernel_available()  # the real compiler again


def test_a_wrong_build_is_not_used():
    """The check at load compares a build with the reference: a library whose results differ is refused."""
    lib = cpu_build.library()

    class Wrong:
        """The real library, except that its forward leaves the outputs zero."""

        def __getattr__(self, name):
            real = getattr(lib, name)
            if not name.startswith("vl_scan_forward"):
                return real

            def forward(ref):
                args = ref._obj  # what ctypes.byref points to
                real(ref)
                size = args.batch * args.dim * args.length * (8 if name.endswith("f64") else 4)
                ctypes.memset(args.out, 0, size)
                return 0

            return forward

    problem = scan_cpu.self_check(Wrong())
    assert problem is not None and "y differs from the reference" in problem


def test_compiler_errors_surface(tmp_path, monkeypatch):
    """A build that fails raises with the compiler's own message (what ``library()`` puts in its warning)."""
    monkeypatch.setenv("VL_MAMBA_CACHE", str(tmp_path))
    with pytest.raises(subprocess.SubprocessError, match="error"):
        cpu_build._build(cpu_build.shutil.which("cc"), ("-DVL_LANES=oops", "-Werror"), ("-lm",))


def test_first_use_under_inference_mode():
    """The check at load runs with gradients even when the first scan of a process runs under inference_mode."""
    cpu_build.library.cache_clear()
    try:
        inputs = {k: v.detach() for k, v in scan_inputs(2, 8, 9, 4).items()}
        with torch.inference_mode():
            y = selective_scan_fn(**inputs, delta_softplus=True)
            assert kernel_available()
        assert_close_rel(y, selective_scan_ref(**inputs, delta_softplus=True), 1e-5, "output")
    finally:
        cpu_build.library.cache_clear()
