"""Properties of the GPU that the Triton kernels launch on, read once per device."""

from __future__ import annotations

import functools

import torch

__all__ = ["multiprocessors"]


@functools.cache
def multiprocessors(device: torch.device) -> int:
    """The streaming multiprocessors of CUDA ``device`` (the kernels size their grids by it)."""
    return torch.cuda.get_device_properties(device).multi_processor_count
