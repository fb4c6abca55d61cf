"""Programmatic dependent launch (PDL) for the decode-step kernels.

At batch 1 a Mamba layer's step is four kernels in a row (norm + in_proj, the two halves of ``ssm_step``,
out_proj), each short, so the time between one kernel's last loads and the next one's first is a visible share
of the step. On Hopper and later GPUs a kernel launched with PDL may start while the kernel before it in the
stream finishes: ours read their weights (which no kernel writes) first, then wait on the grid before them
(``griddepcontrol.wait``) before they read an activation or a state or write anything, and signal at once that
the next kernel may start. A kernel's wait returns only once the kernel before it has finished, and that kernel
waited on its own predecessor before it wrote anything, so the order of every write and read is as without PDL.

``use_pdl(t)`` says whether a kernel on t's device launches this way: a CUDA device of compute capability 9.0
or more, a Triton with grid dependency control, and ``ENABLED`` (the environment variable ``VL_MAMBA_PDL=0``
switches it off; benchmarks flip the attribute). ``ORDER_ANYWHERE`` makes the matrix-vector kernels take the
PDL order of their loads (the first block of weights before the wait) on any device, without the instructions:
tests set it to run that order through Triton's CPU interpreter, which has no grid dependency control.
"""

from __future__ import annotations

import functools
import os

import torch
from torch import Tensor

__all__ = ["ENABLED", "ORDER_ANYWHERE", "launch_options", "use_pdl", "weights_first"]

ENABLED = os.environ.get("VL_MAMBA_PDL", "1") != "0"
ORDER_ANYWHERE = False


def use_pdl(t: Tensor) -> bool:
    """Whether the decode kernels launch with PDL on ``t``'s device."""
    return ENABLED and t.is_cuda and _supported(t.device)


def weights_first(t: Tensor) -> bool:
    """Whether the matrix-vector kernels on ``t``'s device take the PDL order of loads: with PDL, or anywhere
    under ``ORDER_ANYWHERE``."""
    return ORDER_ANYWHERE or use_pdl(t)


def launch_options(pdl: bool) -> dict[str, bool]:
    """The launch keyword for a Triton kernel: ``{"launch_pdl": True}`` with PDL, nothing without."""
    return {"launch_pdl": True} if pdl else {}


@functools.cache
def _supported(device: torch.device) -> bool:
    if torch.cuda.get_device_capability(device)[0] < 9:
        return False
    try:
        from triton.backends.nvidia.compiler import CUDAOptions
        from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait  # noqa: F401
    except ImportError:
        return False
    return "launch_pdl" in getattr(CUDAOptions, "__dataclass_fields__", {})
