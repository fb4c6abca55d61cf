"""Causal depthwise 1D convolution, Mamba's short convolution before the scan.

``causal_conv1d_fn`` uses the causal-conv1d CUDA kernel for CUDA tensors when that package is installed, and
``causal_conv1d_torch`` (one grouped ``conv1d``) otherwise; ``causal_conv1d_ref`` is the specification.
``causal_conv1d_update`` advances one step for generation, with its ``_ref`` beside it. ``causal_conv1d_forward``
and ``causal_conv1d_backward`` are the two halves without autograd, for layer bodies that write their own backward
(``mamba_inner_cuda``): they call the kernel's extension directly (no dispatch through torch's op registry) and take
preallocated outputs.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "causal_conv1d_backward",
    "causal_conv1d_fn",
    "causal_conv1d_forward",
    "causal_conv1d_torch",
    "causal_conv1d_ref",
    "causal_conv1d_update",
    "causal_conv1d_update_ref",
    "conv_state_from_input",
]

_ACTIVATIONS = (None, "silu", "swish")


@functools.cache
def _cuda_conv():
    try:
        from causal_conv1d import causal_conv1d_fn as kernel
    except ImportError:
        return None
    return kernel


@functools.cache
def _cuda_conv_ext():
    """causal-conv1d's compiled extension where its functions take preallocated outputs (causal-conv1d 1.5 on, the
    releases with ``cpp_functions``); None otherwise."""
    try:
        import causal_conv1d.cpp_functions  # noqa: F401  (marks the API with output arguments)
        import causal_conv1d_cuda as ext
    except ImportError:
        return None
    return ext


@functools.cache
def _cuda_conv_update():
    try:
        from causal_conv1d import causal_conv1d_update as kernel
    except ImportError:
        return None
    return kernel


def _check(x: Tensor, weight: Tensor, activation: str | None) -> None:
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {_ACTIVATIONS}, got {activation!r}")
    if weight.dim() != 2 or weight.shape[0] != x.shape[1]:
        raise ValueError(f"weight must be (dim={x.shape[1]}, width), got {tuple(weight.shape)}")


def _kernel_ok(*tensors: Tensor | None) -> bool:
    present = [t for t in tensors if t is not None]
    return all(t.is_cuda and t.dtype in (torch.float32, torch.float16, torch.bfloat16) for t in present)


def causal_conv1d_fn(
    x: Tensor, weight: Tensor, bias: Tensor | None = None, activation: str | None = None
) -> Tensor:
    """out[:, d, t] = act(bias[d] + sum_k weight[d, k] * x[:, d, t - (W - 1) + k]), zeros before the start.

    Args:
        x: (batch, dim, L).
        weight: (dim, W).
        bias: (dim,).
        activation: None, "silu" or "swish".

    Returns:
        (batch, dim, L), x's dtype.
    """
    _check(x, weight, activation)
    if _kernel_ok(x, weight, bias):
        kernel = _cuda_conv()
        if kernel is not None:
            return kernel(x, weight, bias, activation=activation)
    return causal_conv1d_torch(x, weight, bias, activation)


def causal_conv1d_forward(x: Tensor, weight: Tensor, bias: Tensor | None, silu: bool) -> Tensor:
    """``causal_conv1d_fn(x, weight, bias, "silu" if silu else None)`` outside autograd. From the kernel, the output
    is laid out as x where x is dense (``empty_like``), so a channel-major x gives a channel-major output."""
    ext = _cuda_conv_ext() if _kernel_ok(x, weight, bias) and (x.stride(2) == 1 or x.stride(1) == 1) else None
    if ext is None:
        with torch.no_grad():
            return causal_conv1d_torch(x, weight, bias, "silu" if silu else None)
    out = torch.empty_like(x)
    ext.causal_conv1d_fwd(x, weight, bias, None, None, out, None, silu)
    return out


def causal_conv1d_backward(
    x: Tensor, weight: Tensor, bias: Tensor | None, dout: Tensor, silu: bool, dx: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor | None]:
    """The gradients (dx, dweight, dbias) of ``causal_conv1d_forward`` for the output's gradient ``dout``; dweight
    and dbias in the dtypes of weight and bias. ``dx`` (optional, x's shape and dtype, L at unit stride) is where
    x's gradient goes."""
    ext = _cuda_conv_ext() if _kernel_ok(x, weight, bias, dout) and x.stride(2) == 1 else None
    if ext is not None and (dx is None or dx.stride(2) == 1):
        dout = dout if dout.stride(2) == 1 else dout.contiguous()
        dx = torch.empty_like(x) if dx is None else dx
        dweight = torch.zeros(weight.shape, device=weight.device, dtype=torch.float32)
        dbias = None if bias is None else torch.zeros(bias.shape, device=bias.device, dtype=torch.float32)
        ext.causal_conv1d_bwd(x, weight, bias, dout, None, None, None, dx, dweight, dbias, None, silu)
        return dx, dweight.to(weight.dtype), None if dbias is None else dbias.to(bias.dtype)
    leaves = [None if t is None else t.detach().requires_grad_(True) for t in (x, weight, bias)]
    with torch.enable_grad():
        out = causal_conv1d_torch(*leaves, "silu" if silu else None)
        grads = torch.autograd.grad(out, [t for t in leaves if t is not None], dout.to(out.dtype))
    gx, gw, gb = grads[0], grads[1], grads[2] if bias is not None else None
    if dx is not None:
        gx = dx.copy_(gx)
    return gx, gw, gb


def causal_conv1d_torch(
    x: Tensor, weight: Tensor, bias: Tensor | None = None, activation: str | None = None
) -> Tensor:
    """``causal_conv1d_fn`` as one grouped ``conv1d`` with left padding, in float32 (float64 stays) like the
    kernel and the reference, whatever the dtypes of x, weight and bias."""
    _check(x, weight, activation)
    cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    width = weight.shape[1]
    bias = None if bias is None else bias.to(cdt)
    out = F.conv1d(F.pad(x.to(cdt), (width - 1, 0)), weight.unsqueeze(1).to(cdt), bias, groups=x.shape[1])
    return (F.silu(out) if activation else out).to(x.dtype)


def causal_conv1d_ref(
    x: Tensor, weight: Tensor, bias: Tensor | None = None, activation: str | None = None
) -> Tensor:
    """The specification: a sum over the kernel taps of shifted copies of x, in float32 (float64 stays)."""
    _check(x, weight, activation)
    cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    xf, wf = x.to(cdt), weight.to(cdt)
    width, length = wf.shape[1], xf.shape[-1]
    padded = F.pad(xf, (width - 1, 0))
    out = sum(wf[:, k, None] * padded[..., k : k + length] for k in range(width))
    if bias is not None:
        out = out + bias.to(cdt)[:, None]
    if activation:
        out = F.silu(out)
    return out.to(x.dtype)


def causal_conv1d_update(
    x: Tensor, conv_state: Tensor, weight: Tensor, bias: Tensor | None = None, activation: str | None = None
) -> Tensor:
    """One step: shift ``x`` into ``conv_state`` (in place) and return the convolution at that step.

    Args:
        x: (batch, dim).
        conv_state: the last W inputs, oldest first, (batch, dim, W); updated in place.
        weight: (dim, W).

    Returns:
        (batch, dim), x's dtype.
    """
    _check(x.unsqueeze(-1), weight, activation)
    if _kernel_ok(x, conv_state, weight, bias):
        kernel = _cuda_conv_update()
        if kernel is not None:
            return kernel(x, conv_state, weight, bias, activation)
    return causal_conv1d_update_ref(x, conv_state, weight, bias, activation)


def causal_conv1d_update_ref(
    x: Tensor, conv_state: Tensor, weight: Tensor, bias: Tensor | None = None, activation: str | None = None
) -> Tensor:
    """The specification of ``causal_conv1d_update``; same arguments, same in-place update."""
    _check(x.unsqueeze(-1), weight, activation)
    conv_state.copy_(torch.roll(conv_state, shifts=-1, dims=-1))
    conv_state[..., -1] = x
    cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    out = (conv_state.to(cdt) * weight.to(cdt)).sum(-1)
    if bias is not None:
        out = out + bias.to(cdt)
    if activation:
        out = F.silu(out)
    return out.to(x.dtype)


def conv_state_from_input(x: Tensor, width: int) -> Tensor:
    """The conv state after reading a whole sequence: its last ``width`` inputs, zeros in front, (batch, dim, W)."""
    length = x.shape[-1]
    return F.pad(x, (width - length, 0)) if length < width else x[..., -width:].clone()
