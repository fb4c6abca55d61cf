"""Low-precision copies of float32 weights, kept beside them between optimizer steps.

Under bf16 autocast every product casts its float32 weight to bf16 again at every forward: for Mamba-2.8B that is
2.6 billion weights read and written each step (about 5 ms on an H100) in some 256 small kernels. An optimizer
that writes the bf16 copy while it updates the weight (``vl_mamba.training.adamw.AdamW``) saves those casts: the
layer body and in_proj read the copy through ``cast_weight``.

A copy is used only while it is the weight's own: it carries the weight's version counter and storage address from
when it was written, and any later in-place change of the weight (another optimizer, ``load_state_dict``, an EMA)
or a move makes ``cast_weight`` cast afresh. Each step writes a new tensor, never the one a running backward may
hold.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["attach_copy", "cast_weight", "mark_for_copy", "release_copy", "wants_copy"]

_WANTS = "_vl_low_precision_copy"
_HELD = "_vl_low_precision"


def mark_for_copy(param: Tensor) -> None:
    """Ask optimizers that write copies to keep one for ``param`` (a weight its module reads via ``cast_weight``)."""
    setattr(param, _WANTS, True)


def wants_copy(param: Tensor) -> bool:
    return getattr(param, _WANTS, False)


def _tag(weight: Tensor) -> tuple[int, int]:
    return weight._version, weight.data_ptr()


def attach_copy(param: Tensor, copy: Tensor) -> None:
    """Hold ``copy`` as ``param``'s current low-precision copy (call after ``param`` has its new values)."""
    setattr(param, _HELD, (_tag(param), copy))


def release_copy(param: Tensor) -> None:
    """Let go of ``param``'s copy, if it holds one (its memory is freed once nothing else holds it)."""
    if getattr(param, _HELD, None) is not None:
        setattr(param, _HELD, None)


def cast_weight(weight: Tensor, dtype: torch.dtype) -> Tensor:
    """``weight.to(dtype)``, from the held copy where it is current and of that dtype; a copy found out of date
    is let go."""
    if weight.dtype == dtype:
        return weight
    held = getattr(weight, _HELD, None)
    if held is not None:
        if held[0] == _tag(weight):
            if held[1].dtype == dtype:
                return held[1]
        else:
            release_copy(weight)
    return weight.to(dtype)
