"""Helpers shared by the kernel, decoder and model tests: random selective-scan inputs, gradients of a function
of several tensors, the norm-wise relative error, and the skip conditions of the GPU tests."""

from __future__ import annotations

import functools
import importlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import Tensor

# Norm-wise relative error bounds against the ``_ref`` specifications (outputs and gradients).
TOLERANCE = {
    torch.float64: 1e-10,
    torch.float32: 1e-5,
    # Half-precision inputs: both sides compute in float32 and round their results to the input dtype; a result
    # that lands near a rounding boundary can round to the neighbouring value on one side only, so the error is
    # bounded by the unit roundoff of the dtype (2^-8 for bfloat16, 2^-11 for float16), not by float32's.
    torch.bfloat16: 1e-2,
    torch.float16: 2e-3,
}


def rel_err(actual: Tensor, expected: Tensor) -> float:
    """``||actual - expected|| / ||expected||`` in float64 (the absolute error where ``expected`` is zero)."""
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    if actual.shape != expected.shape:
        raise AssertionError(f"shapes differ: {tuple(actual.shape)} vs {tuple(expected.shape)}")
    scale = expected.norm().item()
    diff = (actual - expected).norm().item()
    return diff / scale if scale > 0 else diff


def assert_close_rel(actual: Tensor, expected: Tensor, tol: float, what: str = "") -> None:
    """Fail with the measured error when the norm-wise relative error reaches ``tol``; non-finite values fail."""
    assert torch.isfinite(actual).all(), f"{what}: non-finite values"
    err = rel_err(actual, expected)
    assert err < tol, f"{what}: relative error {err:.3g} >= {tol:.1g}"


def scan_inputs(
    batch: int,
    dim: int,
    length: int,
    n: int,
    groups: int | None = None,
    dtype: torch.dtype = torch.float32,
    param_dtype: torch.dtype | None = None,
    seed: int = 0,
    device: str = "cpu",
    D: bool = True,
    z: bool = True,
    delta_bias: bool = True,
) -> dict[str, Tensor | None]:
    """Leaf tensors for ``selective_scan_*``: activations in ``dtype``, A / D / delta_bias in ``param_dtype``.

    A is negative (a stable scan) with |A| in [0.5, 8]; delta is in [0.1, 1.1] and delta_bias in [0, 0.5], so
    that the time steps are positive with or without softplus.
    """
    param_dtype = param_dtype or dtype
    gen = torch.Generator().manual_seed(seed)

    def make(*shape: int, low: float | None = None, high: float = 1.0, dt: torch.dtype = dtype) -> Tensor:
        """Normal values, or uniform in [low, high) when low is given."""
        if low is None:
            value = torch.randn(*shape, generator=gen, dtype=torch.float64)
        else:
            value = low + (high - low) * torch.rand(*shape, generator=gen, dtype=torch.float64)
        return value.to(device=device, dtype=dt).requires_grad_()

    bc_shape = (batch, n, length) if groups is None else (batch, groups, n, length)
    A = -(0.5 + 7.5 * torch.rand(dim, n, generator=gen, dtype=torch.float64))
    return {
        "u": make(batch, dim, length),
        "delta": make(batch, dim, length, low=0.1, high=1.1),
        "A": A.to(device=device, dtype=param_dtype).requires_grad_(),
        "B": make(*bc_shape),
        "C": make(*bc_shape),
        "D": make(dim, dt=param_dtype) if D else None,
        "z": make(batch, dim, length) if z else None,
        "delta_bias": make(dim, low=0.0, high=0.5, dt=param_dtype) if delta_bias else None,
    }


def outputs_and_grads(
    fn: Callable[..., Tensor | tuple[Tensor, ...]],
    inputs: dict[str, Tensor | None],
    seed: int = 1,
    loss_on: tuple[int, ...] | None = None,
    **kwargs,
) -> tuple[list[Tensor], dict[str, Tensor]]:
    """Run ``fn(**inputs, **kwargs)``, back-propagate fixed random weights of its outputs, return both.

    Args:
        loss_on: indices of the outputs the loss weighs; None means all of them.

    Returns:
        The outputs (a list even for one), and the gradient of every input that is a tensor (zeros for one
        that the loss does not depend on).
    """
    leaves = {k: v for k, v in inputs.items() if v is not None}
    for v in leaves.values():
        v.grad = None
    out = fn(**inputs, **kwargs)
    outs = list(out) if isinstance(out, tuple) else [out]
    gen = torch.Generator().manual_seed(seed)
    weighed = [o for i, o in enumerate(outs) if loss_on is None or i in loss_on]
    loss = sum((o.float() * torch.randn(o.shape, generator=gen).to(device=o.device)).sum() for o in weighed)
    loss.backward()
    # An input the loss does not depend on has no gradient under autograd: zeros, as a custom backward gives.
    grads = {k: torch.zeros_like(v) if v.grad is None else v.grad.detach().clone() for k, v in leaves.items()}
    for v in leaves.values():
        v.grad = None
    return [o.detach() for o in outs], grads


def clone_inputs(inputs: dict[str, Tensor | None], **to) -> dict[str, Tensor | None]:
    """Fresh leaf copies (optionally moved or cast with ``Tensor.to(**to)``)."""
    return {k: None if v is None else v.detach().to(**to).clone().requires_grad_() for k, v in inputs.items()}


@functools.cache
def importable(module: str) -> bool:
    """Whether ``module`` imports (the Mamba CUDA packages raise more than ImportError on machines without CUDA)."""
    try:
        importlib.import_module(module)
    except Exception:  # an ImportError, or an OSError / RuntimeError from a CUDA extension
        return False
    return True


def needs_cuda(*packages: str) -> pytest.MarkDecorator:
    """Skip unless CUDA is available and every package imports; the reason names what is missing."""
    if not torch.cuda.is_available():
        return pytest.mark.skipif(True, reason="needs a CUDA GPU")
    missing = [p for p in packages if not importable(p)]
    return pytest.mark.skipif(bool(missing), reason=f"needs {', '.join(missing)} (pip install vl-mamba[cuda])")


def run_triton_interpreted(statements: str, result: str) -> object:
    """Run ``statements`` in a fresh Python under ``TRITON_INTERPRET=1`` (Triton's CPU interpreter, chosen when a
    kernel is defined, hence the subprocess), with ``tests`` importable; return ``result`` evaluated there, which
    must be JSON."""
    root = Path(__file__).resolve().parents[1]
    code = f"import json, sys, torch; sys.path.insert(0, 'tests'); {statements}; print(json.dumps({result}))"
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(root)}
    done = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def free_port() -> int:
    """A TCP port that is free on this machine now, for a test's process group."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def join_gloo_group(rank: int, world_size: int, port: int) -> None:
    """In a forked test process: one torch thread, then join a gloo process group on ``port``."""
    torch.set_num_threads(1)  # a forked child must not reuse the parent's intra-op thread pool
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world_size)
