"""Optimiser parameter groups and the learning-rate schedule.

No weight decay for the SSM's A_log and D, the time-step biases, norms, biases and embeddings (every
parameter of fewer than two dimensions, plus those by name). Each part (encoder, connector, decoder) may
have its own learning rate. The schedule is a linear warmup then a cosine decay, stepped every optimiser
step.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from torch import nn
from torch.optim.lr_scheduler import LambdaLR

_NO_DECAY_NAMES = ("A_log", "A_logs", "D", "Ds", "dt_projs_bias")
_WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.", "module.")


def clean_name(name: str) -> str:
    """A parameter name without the prefixes that FSDP, checkpoint wrappers and torch.compile insert."""
    for prefix in _WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def no_weight_decay(name: str, param: nn.Parameter) -> bool:
    leaf = name.rsplit(".", 1)[-1]
    return (
        param.ndim < 2
        or leaf in _NO_DECAY_NAMES
        or "embedding" in name
        or getattr(param, "_no_weight_decay", False)
    )


def param_groups(
    named_parameters: Iterable[tuple[str, nn.Parameter]],
    lr: float,
    weight_decay: float,
    part_lr: dict[str, float] | None = None,
) -> list[dict]:
    """Trainable parameters grouped by (part, decay); names relative to the model (``encoder.…`` etc.).

    Args:
        named_parameters: (name, parameter) pairs; frozen ones are skipped, shared ones counted once.
        lr: default learning rate.
        weight_decay: decay for the parameters that take it.
        part_lr: learning rate per top-level part, overriding ``lr``.
    """
    part_lr = part_lr or {}
    groups: dict[tuple[str, bool], dict] = {}
    seen: set[int] = set()
    for raw_name, param in named_parameters:
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        name = clean_name(raw_name)
        part = name.split(".", 1)[0]
        decay = not no_weight_decay(name, param)
        key = (part, decay)
        if key not in groups:
            groups[key] = {
                "params": [],
                "names": [],
                "lr": part_lr.get(part, lr),
                "weight_decay": weight_decay if decay else 0.0,
            }
        groups[key]["params"].append(param)
        groups[key]["names"].append(name)
    return list(groups.values())


def warmup_cosine(optimizer, total_steps: int, warmup_steps: int, min_lr_ratio: float = 0.0) -> LambdaLR:
    """Linear warmup from 0 over ``warmup_steps``, then cosine decay to ``min_lr_ratio`` of each group's lr."""
    total_steps = max(1, total_steps)
    warmup_steps = min(max(0, warmup_steps), total_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return min_lr_ratio + (1.0 - min_lr_ratio) * cosine

    return LambdaLR(optimizer, factor)
