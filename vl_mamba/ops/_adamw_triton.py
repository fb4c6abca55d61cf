"""The Triton kernel behind ``vl_mamba.training.adamw``: one AdamW step over many tensors in one launch, writing a
low-precision copy of every updated weight; imported only when a CUDA parameter reaches it (or under
``TRITON_INTERPRET=1``, which runs it on the CPU for tests)."""

from __future__ import annotations

import triton
import triton.language as tl

FIELDS = tl.constexpr(7)
"""Int64 fields per tensor in the table: the addresses of the weight, its gradient, the two moments and the copy,
its element count, and the first chunk that is its own."""


@triton.jit
def adamw_kernel(TABLE, OWNER, lr, beta1, beta2, eps, decay, step_size, correction2, BLOCK: tl.constexpr):
    """Chunk ``program_id`` of tensor ``OWNER[program_id]``: decoupled weight decay, the two moments, the update,
    then the copy rounded from the new float32 weight; the order of torch's AdamW."""
    pid = tl.program_id(0)
    t = tl.load(OWNER + pid).to(tl.int64)
    row = TABLE + t * FIELDS
    param = tl.load(row).to(tl.pointer_type(tl.float32))
    grad = tl.load(row + 1).to(tl.pointer_type(tl.float32))
    avg = tl.load(row + 2).to(tl.pointer_type(tl.float32))
    avg_sq = tl.load(row + 3).to(tl.pointer_type(tl.float32))
    copy = tl.load(row + 4).to(tl.pointer_type(tl.bfloat16))
    n = tl.load(row + 5)
    first = tl.load(row + 6)
    offs = (pid - first) * BLOCK + tl.arange(0, BLOCK)
    keep = offs < n
    p = tl.load(param + offs, mask=keep)
    g = tl.load(grad + offs, mask=keep)
    m = tl.load(avg + offs, mask=keep)
    v = tl.load(avg_sq + offs, mask=keep)
    p = p * (1.0 - lr * decay)
    m = m + (1.0 - beta1) * (g - m)
    v = v * beta2 + (1.0 - beta2) * g * g
    p = p - step_size * (m / (tl.sqrt(v) / correction2 + eps))
    tl.store(param + offs, p, mask=keep)
    tl.store(avg + offs, m, mask=keep)
    tl.store(avg_sq + offs, v, mask=keep)
    tl.store(copy + offs, p.to(tl.bfloat16), mask=keep)
